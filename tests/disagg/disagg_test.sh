#!/usr/bin/env bash
# End-to-end disaggregation test with real processes: a prefiller and a decoder
# (`kvferry serve --kv-transfer-config ...`), `kvferry proxy` in front, and a colocated
# `kvferry serve` as the reference. The same greedy requests go to the proxy and to the
# colocated server (official `openai` client, streaming and not, prompts of 1 to 2,000
# tokens); the answers must agree token for token; /v1/responses (tests/disagg/responses.mjs)
# colocated and through the proxy. Afterwards every server's KV blocks in use must be back to zero.
#
# Usage: disagg_test.sh KVFERRY_BINARY loopback|netns tcp|shm [q4_k_m]
#   q4_k_m:   serve a Q4_K_M GGUF file of the tiny model (kvferry's writer; hidden 256 so that
#             Q4_K and Q6_K appear) instead of the f32 directory.
#   loopback: everything on 127.0.0.1.
#   netns:    the seed's topology in network namespaces this script creates (and removes):
#             prefiller on 10.231.0.2, decoder on 10.231.0.3, proxy and client on 10.231.0.1,
#             started with exactly PROTOCOL.md §1's command lines. Needs root.
set -uo pipefail
bin="$(readlink -f "$1")"
mode="$2"
proto="$3"
gguf="${4:-}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
work="$(mktemp -d /tmp/kvf-disagg-XXXXXX)"
pids=()
ns_tag="kvf$$"
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done
  for p in "${pids[@]}"; do
    for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null
  done
  if [ "$mode" = netns ]; then
    for n in hub p d x; do ip netns del "$ns_tag-$n" 2>/dev/null; done
  fi
  [ -n "${KVF_KEEP_LOGS:-}" ] && cp -r "$work" "$KVF_KEEP_LOGS"; rm -rf "$work"
}
trap cleanup EXIT
fail() {
  echo "FAIL: $*"
  for f in "$work"/*.log; do echo "--- $f"; tail -30 "$f"; done
  exit 1
}

if [ "$mode" = netns ] && { [ "$(id -u)" != 0 ] || ! ip netns list >/dev/null 2>&1; }; then
  echo "SKIP: network namespaces need root"
  exit 77
fi
if [ "$gguf" = q4_k_m ]; then
  "$bin" model make-tiny "$work/m" --dtype f32 --seed 11 --layers 2 --hidden 256 --intermediate 512 \
    --gguf q4_k_m >/dev/null || fail "make-tiny"
  model="$work/m/model-q4_k_m.gguf"
else
  "$bin" model make-tiny "$work/m" --dtype f32 --seed 11 --layers 2 --hidden 64 >/dev/null || fail "make-tiny"
  model="$work/m"
fi
common=(--served-model-name tiny --kv-cache-dtype float32 --max-model-len 4096)
if [ "$mode" = netns ]; then
  # The seed's topology: three hosts on one L2 segment (a bridge in a hub namespace).
  ip netns add "$ns_tag-hub" || fail "ip netns add (needs root)"
  ip netns exec "$ns_tag-hub" ip link add br0 type bridge
  ip netns exec "$ns_tag-hub" ip link set br0 up
  i=1
  for n in x p d; do
    ip netns add "$ns_tag-$n"
    ip link add "v$n$$" type veth peer name "h$n$$"
    ip link set "v$n$$" netns "$ns_tag-$n"
    ip link set "h$n$$" netns "$ns_tag-hub"
    ip netns exec "$ns_tag-hub" ip link set "h$n$$" master br0 up
    ip netns exec "$ns_tag-$n" ip link set lo up
    ip netns exec "$ns_tag-$n" ip addr add "10.231.0.$i/24" dev "v$n$$"
    ip netns exec "$ns_tag-$n" ip link set "v$n$$" up
    i=$((i + 1))
  done
  X=10.231.0.1 P=10.231.0.2 D=10.231.0.3
  in_x=(ip netns exec "$ns_tag-x")
  in_p=(ip netns exec "$ns_tag-p")
  in_d=(ip netns exec "$ns_tag-d")
  p_port=8010 d_port=8020 x_port=8000 c_port=8030 boot=8998
else
  X=127.0.0.1 P=127.0.0.1 D=127.0.0.1
  in_x=() in_p=() in_d=()
  pick() { python3 "$here/pick_port.py" "$work/.ports"; }
  p_port=$(pick) d_port=$(pick) x_port=$(pick) c_port=$(pick) boot=$(pick)
  common+=(--host 127.0.0.1)
fi
if [ "$proto" = tcp ] && [ "$mode" = netns ]; then
  # Exactly PROTOCOL.md §1: no protocol named (TCP is chosen when there is no RDMA device).
  p_cfg='{"kv_connector":"MooncakeConnector","kv_role":"kv_producer"}'
  d_cfg='{"kv_connector":"MooncakeConnector","kv_role":"kv_consumer"}'
else
  p_cfg='{"kv_connector":"MooncakeConnector","kv_role":"kv_producer","kv_connector_extra_config":{"mooncake_protocol":"'$proto'"}}'
  d_cfg='{"kv_connector":"MooncakeConnector","kv_role":"kv_consumer","kv_connector_extra_config":{"mooncake_protocol":"'$proto'"}}'
fi

"${in_x[@]}" "$bin" serve "$model" --port "$c_port" "${common[@]}" >"$work/colocated.log" 2>&1 &
pids+=($!)
VLLM_MOONCAKE_BOOTSTRAP_PORT=$boot "${in_p[@]}" "$bin" serve "$model" --port "$p_port" "${common[@]}" \
  --kv-transfer-config "$p_cfg" >"$work/prefill.log" 2>&1 &
pids+=($!)
"${in_d[@]}" "$bin" serve "$model" --port "$d_port" "${common[@]}" --kv-transfer-config "$d_cfg" >"$work/decode.log" 2>&1 &
pids+=($!)
"${in_x[@]}" "$bin" proxy --prefill "http://$P:$p_port" "$boot" --decode "http://$D:$d_port" --port "$x_port" \
  >"$work/proxy.log" 2>&1 &
pids+=($!)

healthy() { "${in_x[@]}" curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$1/health"; }
# The proxy listens on 127.0.0.1 by default (like vLLM's example proxy); the client runs beside it.
proxy_url="http://127.0.0.1:$x_port"
for url in "http://$X:$c_port" "$proxy_url"; do
  ok=0
  for _ in $(seq 600); do
    [ "$(healthy "$url")" = 200 ] && { ok=1; break; }
    sleep 0.1
  done
  [ $ok = 1 ] || fail "$url not healthy within 60 s"
done

"${in_x[@]}" node "$here/compare.mjs" --a "$proxy_url" --b "http://$X:$c_port" --model tiny \
  --max-tokens 8 --concurrency 4 --chat 3 | tee "$work/compare.out"
[ "${PIPESTATUS[0]}" = 0 ] || fail "proxy and colocated answers differ"

# POST /v1/responses with the official client: on the colocated server, and through the proxy
# (the P/D path) against it.
for a in "http://$X:$c_port" "$proxy_url"; do
  "${in_x[@]}" node "$here/responses.mjs" --a "$a" --b "http://$X:$c_port" --model tiny | tee "$work/responses.out"
  [ "${PIPESTATUS[0]}" = 0 ] || fail "/v1/responses through $a"
done

metric() {  # metric URL NAME → sum over samples
  "${in_x[@]}" curl -s --max-time 5 "$1/metrics" |
    awk -v n="$2" '$1 == n || index($1, n "{") == 1 { s += $NF } END { printf "%d\n", s }'
}
transfers=$(metric "http://$P:$p_port" kvferry:kv_transfers_total)
received=$(metric "http://$D:$d_port" kvferry:kv_transfers_total)
echo "prefiller sent $transfers KV transfers, decoder received $received"
[ "$transfers" -ge 20 ] || fail "expected at least 20 KV transfers from the prefiller, got $transfers"
for url in "http://$P:$p_port" "http://$D:$d_port" "http://$X:$c_port"; do
  used=-1
  for _ in $(seq 100); do
    used=$(metric "$url" kvferry:kv_blocks_used)
    [ "$used" = 0 ] && break
    sleep 0.1
  done
  [ "$used" = 0 ] || fail "$url still has $used KV blocks in use"
done
echo "1 passed, 0 failed"
