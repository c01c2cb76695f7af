#!/usr/bin/env python3
"""Prints a free TCP port on 127.0.0.1 for a test server to listen on.

Ports come from below the kernel's ephemeral range (ip_local_port_range), never from bind(0):
a port the kernel handed out is free only until it hands it out again, and the servers a test
starts take ephemeral ports of their own (a transfer engine's handshake and data ports), so a
picked ephemeral port could be taken by one server before another binds it. A port picked here
is also written to STATE_FILE (if given) and not picked again by the same test.
Usage: pick_port.py [STATE_FILE]
"""
import os
import random
import socket
import sys

state = sys.argv[1] if len(sys.argv) > 1 else None
taken = set()
if state and os.path.exists(state):
    with open(state) as f:
        taken = {int(x) for x in f.read().split()}
try:
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        low = int(f.read().split()[0])
except (OSError, ValueError, IndexError):
    low = 32768
top = max(low, 12000)
for _ in range(500):
    port = random.randrange(10000, top)
    if port in taken:
        continue
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        continue
    finally:
        s.close()
    if state:
        with open(state, "a") as f:
            f.write("%d\n" % port)
    print(port)
    sys.exit(0)
sys.exit("pick_port: no free port below %d after 500 tries" % top)
