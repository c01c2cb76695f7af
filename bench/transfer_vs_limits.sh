#!/usr/bin/env bash
# Measures the transfer engine against the physical limits in one run (issue 2's table):
# iperf3 -P 2 on loopback right before each round of tcp benches, memcpy right before shm.
# Usage: bench/transfer_vs_limits.sh [BINARY] [ROUNDS] [SECONDS]
set -euo pipefail
bin="${1:-build/release/kvferry}"
rounds="${2:-3}"
secs="${3:-3}"
export KVFERRY_LOG_LEVEL=error
port=$((20000 + RANDOM % 20000))
json() { python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }
iperf() {
  iperf3 -s -1 -B 127.0.0.1 -p "$port" >/dev/null 2>&1 &
  local srv=$!
  sleep 0.3
  iperf3 -c 127.0.0.1 -p "$port" -P 2 -t "$secs" -J 2>/dev/null |
    python3 -c "import json,sys; print(json.load(sys.stdin)['end']['sum_received']['bits_per_second']/8e9)"
  wait "$srv" 2>/dev/null || true
}
declare -A sum
names=(iperf3 tcp_w_4m tcp_w_64k tcp_r_4m memcpy_4m shm_w_4m shm_w_4m_b1)
for n in "${names[@]}"; do sum[$n]=""; done
for r in $(seq 1 "$rounds"); do
  sum[iperf3]+=" $(iperf)"
  sum[tcp_w_4m]+=" $($bin bench transfer --op write --block-size 4MiB --batch 16 --duration "$secs" --json | json gbps)"
  sum[tcp_w_64k]+=" $($bin bench transfer --op write --block-size 64KiB --batch 64 --duration "$secs" --json | json gbps)"
  sum[tcp_r_4m]+=" $($bin bench transfer --op read --block-size 4MiB --batch 16 --duration "$secs" --json | json gbps)"
  sum[memcpy_4m]+=" $($bin bench memcpy --block-size 4MiB --duration "$secs" --json | json gbps)"
  sum[shm_w_4m]+=" $($bin bench transfer --protocol shm --op write --block-size 4MiB --batch 16 --duration "$secs" --json | json gbps)"
  sum[shm_w_4m_b1]+=" $($bin bench transfer --protocol shm --op write --block-size 4MiB --batch 1 --duration "$secs" --json | json gbps)"
  echo "round $r done" >&2
done
python3 - "$rounds" <<PY
import statistics, sys
vals = {
$(for n in "${names[@]}"; do echo "  '$n': [float(x) for x in '${sum[$n]}'.split()],"; done)
}
med = {k: statistics.median(v) for k, v in vals.items()}
print(f"{'measure':<44}{'median GB/s':>12}  {'runs':<30}")
rows = [("iperf3 -P 2 (loopback limit)", "iperf3"), ("tcp write 4 MiB x16", "tcp_w_4m"),
        ("tcp write 64 KiB x64", "tcp_w_64k"), ("tcp read 4 MiB x16", "tcp_r_4m"),
        ("memcpy 4 MiB (1 thread)", "memcpy_4m"), ("shm write 4 MiB x16", "shm_w_4m"),
        ("shm write 4 MiB x1 (memcpy's working set)", "shm_w_4m_b1")]
for label, k in rows:
    print(f"{label:<44}{med[k]:>12.2f}  {' '.join(f'{x:.2f}' for x in vals[k])}")
print()
print(f"tcp write 4 MiB / iperf3    = {med['tcp_w_4m']/med['iperf3']:.0%}  (target >= 85%)")
print(f"tcp write 64 KiB / iperf3   = {med['tcp_w_64k']/med['iperf3']:.0%}  (target >= 60%)")
print(f"tcp read 4 MiB / write      = {med['tcp_r_4m']/med['tcp_w_4m']:.0%}  (target within 10%)")
print(f"shm write 4 MiB x16 / memcpy = {med['shm_w_4m']/med['memcpy_4m']:.0%}  (target >= 70%; 64 MiB working set vs memcpy's 4 MiB)")
print(f"shm write 4 MiB x1 / memcpy  = {med['shm_w_4m_b1']/med['memcpy_4m']:.0%}  (same 4 MiB working set)")
PY
