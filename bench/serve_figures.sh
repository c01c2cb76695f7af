#!/usr/bin/env bash
# Figures for the serving and disaggregation issues, on the `--like qwen2.5-0.5b` model:
#   1. colocated `kvferry serve`: `kvferry bench serve` at concurrency 1, 4 and 16 (streamed),
#      and the serving process's peak RSS next to weights + KV arena;
#   2. disaggregated (prefiller + decoder + proxy) vs colocated: TTFT of 1,024-token prompts
#      (one at a time), KV bytes per request and transfer time, over tcp and shm.
# Usage: bench/serve_figures.sh [KVFERRY_BINARY] [--quick]
# Env: PARTS="1 2" (which parts to run); LOGS_DIR=DIR keeps the servers' logs there.
set -uo pipefail
bin="$(readlink -f "${1:-build/release/kvferry}")"
quick=0
[ "${2:-}" = "--quick" ] && quick=1
work="$(mktemp -d /tmp/kvf-figures-XXXXXX)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done
  wait 2>/dev/null
  [ -n "${LOGS_DIR:-}" ] && mkdir -p "$LOGS_DIR" && cp "$work"/*.log "$LOGS_DIR"/ 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
pick() { python3 "$(dirname "$0")/../tests/disagg/pick_port.py" "$work/.ports"; }
wait_healthy() {
  for _ in $(seq 1200); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$1/health")" = 200 ] && return 0
    sleep 0.1
  done
  echo "$1 not healthy"; exit 1
}
metric() { curl -s --max-time 5 "$1/metrics" | awk -v n="$2" '$1 == n || index($1, n "{") == 1 { s += $NF } END { printf "%.6f\n", s }'; }

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-), load $(cut -d' ' -f1-3 /proc/loadavg)"
"$bin" model make-tiny "$work/m" --like qwen2.5-0.5b >/dev/null || exit 1
weights=$(stat -c %s "$work/m/model.safetensors")
kv="512MiB"
serve_flags=(--host 127.0.0.1 --served-model-name q --kv-cache-memory "$kv" --max-num-seqs 16)

parts="${PARTS:-1 2}"
if [[ " $parts " == *" 1 "* ]]; then
echo
echo "== 1. colocated serve, input 128 / output 64 tokens, streamed"
port=$(pick)
"$bin" serve "$work/m" --port "$port" "${serve_flags[@]}" >"$work/serve.log" 2>&1 &
spid=$!
pids+=($spid)
wait_healthy "http://127.0.0.1:$port"
printf "%-12s %8s %12s %10s %10s %10s %10s %7s\n" concurrency req/s out_tok/s ttft_p50 ttft_p99 tpot_p50 tpot_p99 failed
for c in 1 4 16; do
  n=$((c * 2)); [ $c = 1 ] && n=3; [ $quick = 1 ] && n=$c
  j=$("$bin" bench serve --url "http://127.0.0.1:$port" --concurrency $c --num-prompts $n --input-len 128 \
      --output-len 64 --stream --json 2>/dev/null)
  python3 -c 'import json,sys; j=json.loads(sys.argv[1]); print("%-12s %8.2f %12.1f %9.0fms %9.0fms %9.1fms %9.1fms %7d" % (sys.argv[2], j["req_s"], j["output_tok_s"], j["ttft_p50_ms"], j["ttft_p99_ms"], j["tpot_p50_ms"], j["tpot_p99_ms"], j["failed"]))' "$j" "$c"
done
hwm_kb=$(awk '/VmHWM/ {print $2}' /proc/$spid/status)
echo "peak RSS $((hwm_kb / 1024)) MiB; weights $((weights / 1048576)) MiB + KV arena $kv + 300 MiB = $(( weights / 1048576 + 512 + 300 )) MiB budget"
kill -TERM $spid; wait $spid 2>/dev/null
fi
[[ " $parts " == *" 2 "* ]] || exit 0

echo
echo "== 2. disaggregated vs colocated, 1,024-token prompts, max_tokens 8, one request at a time"
n_req=8; [ $quick = 1 ] && n_req=2
for proto in tcp shm; do
  p_port=$(pick) d_port=$(pick) x_port=$(pick) c_port=$(pick) boot=$(pick)
  cfg() { echo '{"kv_connector":"MooncakeConnector","kv_role":"'$1'","kv_connector_extra_config":{"mooncake_protocol":"'$proto'"}}'; }
  "$bin" serve "$work/m" --port "$c_port" "${serve_flags[@]}" >"$work/c.log" 2>&1 & pids+=($!)
  VLLM_MOONCAKE_BOOTSTRAP_PORT=$boot "$bin" serve "$work/m" --port "$p_port" "${serve_flags[@]}" \
    --kv-transfer-config "$(cfg kv_producer)" >"$work/p.log" 2>&1 & pids+=($!)
  "$bin" serve "$work/m" --port "$d_port" "${serve_flags[@]}" --kv-transfer-config "$(cfg kv_consumer)" \
    >"$work/d.log" 2>&1 & pids+=($!)
  "$bin" proxy --prefill "http://127.0.0.1:$p_port" "$boot" --decode "http://127.0.0.1:$d_port" --port "$x_port" \
    >"$work/x.log" 2>&1 & pids+=($!)
  wait_healthy "http://127.0.0.1:$c_port"
  wait_healthy "http://127.0.0.1:$x_port"
  # Alternate colocated and proxied requests, so that drift in machine load hits both alike.
  tc=() tx=()
  for i in $(seq $n_req); do
    for target in colocated proxy; do
      url="http://127.0.0.1:$c_port"; [ $target = proxy ] && url="http://127.0.0.1:$x_port"
      # A fresh prompt each time (seed) so that no prefix cache helps either side.
      j=$("$bin" bench serve --url "$url" --concurrency 1 --num-prompts 1 --input-len 1024 --output-len 8 \
          --stream --json --seed $((i * 7919 + 17)) --token-id-max 100000 2>/dev/null)
      t=$(python3 -c 'import json,sys; print("%.1f" % json.loads(sys.argv[1])["ttft_p50_ms"])' "$j")
      if [ $target = proxy ]; then tx+=("$t"); else tc+=("$t"); fi
    done
  done
  ttft_colocated=$(printf '%s\n' "${tc[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
  ttft_proxy=$(printf '%s\n' "${tx[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
  echo "  colocated TTFT ms: ${tc[*]}; through proxy: ${tx[*]}"
  P="http://127.0.0.1:$p_port"
  xfers=$(metric "$P" kvferry:kv_transfers_total)
  bytes=$(metric "$P" kvferry:kv_transfer_bytes_total)
  secs=$(metric "$P" kvferry:kv_transfer_duration_seconds_sum)
  descs=$(metric "$P" kvferry:kv_transfer_descriptors_total)
  python3 -c '
import sys
proto, c, x, n, b, s = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6])
d = float(sys.argv[7])
print("%s: TTFT p50 colocated %.0f ms, through proxy %.0f ms (%+.1f%%); KV per request %.2f MiB in %.1f descriptors, transfer %.1f ms (%.2f GB/s) over %d transfers" % (proto, c, x, (x / c - 1) * 100, b / n / 2**20, d / n, s / n * 1e3, b / s / 1e9 if s else 0, n))' \
    "$proto" "$ttft_colocated" "$ttft_proxy" "$xfers" "$bytes" "$secs" "$descs"
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done
  wait 2>/dev/null
  pids=()
done
