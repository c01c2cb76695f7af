#!/usr/bin/env python3
"""Sends malformed input to a prefiller's ports (used by faults_test.sh; standard library only).

  poke.py raw HOST PORT           random bytes, then close
  poke.py zmtp HOST PORT          a ZMTP 3.0 DEALER handshake, then side-channel messages that are
                                  not MooncakeXferMetadata; prints one line per reply:
                                  "reply status=N" (N from the msgpack map) or "no reply"
  poke.py http HOST PORT          truncated and malformed HTTP requests, bad /register bodies;
                                  prints "STATUS what" per request ("-" when the connection closed)
"""
import os
import random
import socket
import sys
import time


def connect(host, port):
    s = socket.create_connection((host, int(port)), timeout=5)
    s.settimeout(5)
    return s


def raw(host, port):
    rnd = random.Random(5)
    for n in (1, 7, 64, 4096, 70000):
        s = connect(host, port)
        try:
            s.sendall(bytes(rnd.randrange(256) for _ in range(n)))
            time.sleep(0.05)
        except OSError:
            pass
        s.close()
    print("raw sent")


def recv_exact(s, n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            raise EOFError("closed")
        b += c
    return b


def read_frame(s):
    flags = recv_exact(s, 1)[0]
    size = int.from_bytes(recv_exact(s, 8), "big") if flags & 2 else recv_exact(s, 1)[0]
    return flags, recv_exact(s, size)


def frame(body, command=False, more=False):
    flags = (4 if command else 0) | (1 if more else 0)
    if len(body) > 255:
        return bytes([flags | 2]) + len(body).to_bytes(8, "big") + body
    return bytes([flags, len(body)]) + body


def zmtp(host, port):
    s = connect(host, port)
    greeting = b"\xff" + b"\x00" * 8 + b"\x7f" + b"\x03\x00" + b"NULL" + b"\x00" * 16 + b"\x00" + b"\x00" * 31
    s.sendall(greeting)
    recv_exact(s, 64)
    ready = b"\x05READY" + b"\x0bSocket-Type" + (6).to_bytes(4, "big") + b"DEALER"
    s.sendall(frame(ready, command=True))
    flags, body = read_frame(s)
    assert flags & 4 and body.startswith(b"\x05READY"), body
    msgs = [
        b"\xc1",                                  # a byte msgpack never uses
        b"\x93\x01\x02\x03",                      # an array, not a map
        b"\x81\xaareq_blocks\x05",                # req_blocks is not a map
        b"\x81\xaareq_blocks\x81\xa1x\x92\xa1t",  # truncated
        b"\xdb\xff\xff\xff\xff",                  # str32 claiming 4 GiB
        os.urandom(3000),
        b"",
    ]
    for m in msgs:
        s.sendall(frame(m))
        try:
            while True:
                flags, body = read_frame(s)
                if not flags & 4:
                    break
            i = body.find(b"\xa6status")
            print("reply status=%d" % body[i + 7] if i >= 0 else "reply %r" % body[:60])
        except (socket.timeout, EOFError) as e:
            print("no reply (%s)" % e)
            s.close()
            s = connect(host, port)
            s.sendall(greeting)
            recv_exact(s, 64)
            s.sendall(frame(ready, command=True))
            read_frame(s)
    s.close()


def http(host, port):
    def ask(what, data, wait=True):
        s = connect(host, port)
        try:
            s.sendall(data)
            if not wait:
                s.shutdown(socket.SHUT_WR)
            b = s.recv(65536)
            status = b.split(b" ")[1].decode() if b.startswith(b"HTTP/") else "-"
        except (OSError, IndexError):
            status = "-"
        s.close()
        print(status, what)

    def post(body, path="/register"):
        return (b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                b"Connection: close\r\n\r\n" % (path.encode(), len(body))) + body

    ask("random bytes", os.urandom(2000), wait=False)
    ask("truncated request line", b"POST /regis", wait=False)
    ask("truncated headers", b"POST /register HTTP/1.1\r\nContent-Length: 50\r\n", wait=False)
    ask("truncated body", b"POST /register HTTP/1.1\r\nContent-Length: 50\r\n\r\n{\"engine_id\"", wait=False)
    ask("bad json", post(b"{not json"))
    ask("json array", post(b"[1,2,3]"))
    ask("missing fields", post(b'{"engine_id":"x"}'))
    ask("wrong types", post(b'{"engine_id":5,"dp_rank":"a","tp_rank":0,"pp_rank":0,"addr":7}'))
    ask("huge content-length",
        b"POST /register HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n{}", wait=False)
    ask("unknown path", b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")


if __name__ == "__main__":
    {"raw": raw, "zmtp": zmtp, "http": http}[sys.argv[1]](sys.argv[2], sys.argv[3])
