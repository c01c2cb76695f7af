#!/usr/bin/env bash
# The prefiller is killed (kill -9) while requests are in flight, with real processes on loopback:
# a prefiller, a decoder with kv_load_failure_policy "fail" (behind `kvferry proxy`), a decoder
# with "recompute" (sent decode legs directly, as a router would), and a colocated reference.
# All servers run with VLLM_MOONCAKE_ABORT_REQUEST_TIMEOUT=3, so a decoder's load timeout is
# 3 + 60 s; the decoders must not wait for it: they watch their side-channel connections, and
# a pull whose reply died with the prefiller ends when the connection closes. Every request must
# end within 20 s of the kill.
#   fail:      12 streaming requests with 3,000-token prompts through the proxy, prefiller killed
#              once the first of them has sent its KV: every request ends (answer equal to the reference, or an HTTP error /
#              SSE error event), at least one failed, none hangs; a decode leg sent straight to the
#              "fail" decoder after the kill (cached bootstrap, dead side channel) gets an SSE error
#              at once (it asks the bootstrap server again); the decoder keeps serving
#   recompute: decode legs whose prefill leg was lost, on the "recompute" decoder: pulls sent
#              before the kill (the reply dies with the prefiller) and after it (bootstrap
#              refused) all answer exactly what the colocated server answers
# Afterwards both decoders' KV blocks in use are back to zero.
#
# Usage: prefill_kill_test.sh KVFERRY_BINARY
set -uo pipefail
bin="$(readlink -f "$1")"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/lib.sh"

make_model
P=$(pick) DF=$(pick) DR=$(pick) C=$(pick) X=$(pick) BOOT=$(pick)
p_cfg='{"kv_connector":"MooncakeConnector","kv_role":"kv_producer"}'
df_cfg='{"kv_connector":"MooncakeConnector","kv_role":"kv_consumer","kv_load_failure_policy":"fail"}'
dr_cfg='{"kv_connector":"MooncakeConnector","kv_role":"kv_consumer","kv_load_failure_policy":"recompute"}'
to=(VLLM_MOONCAKE_ABORT_REQUEST_TIMEOUT=3 VLLM_MOONCAKE_CONNECTOR_TIMEOUT=5)
start colocated -- serve "$work/m" --port "$C" "${common[@]}"
start prefill "${to[@]}" VLLM_MOONCAKE_BOOTSTRAP_PORT="$BOOT" -- serve "$work/m" --port "$P" "${common[@]}" \
  --kv-transfer-config "$p_cfg"
start decode_fail "${to[@]}" -- serve "$work/m" --port "$DF" "${common[@]}" --kv-transfer-config "$df_cfg"
start decode_recompute "${to[@]}" -- serve "$work/m" --port "$DR" "${common[@]}" --kv-transfer-config "$dr_cfg"
start proxy -- proxy --prefill "http://127.0.0.1:$P" "$BOOT" --decode "http://127.0.0.1:$DF" --port "$X"
PU="http://127.0.0.1:$P" DFU="http://127.0.0.1:$DF" DRU="http://127.0.0.1:$DR" CU="http://127.0.0.1:$C"
XU="http://127.0.0.1:$X"
for u in "$CU" "$PU" "$DFU" "$DRU" "$XU"; do wait_healthy "$u" 60 || die "$u not healthy within 60 s"; done

failures=0
note() { echo "  not: $*"; failures=$((failures + 1)); }
now() { date +%s.%N; }
# body SEED LEN STREAM [KV_TRANSFER_PARAMS]: a greedy completion request with a prompt of its own
body() {
  python3 - "$@" <<'EOF'
import json, random, sys
seed, n, stream = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "true"
r = random.Random(seed)
b = {"model": "tiny", "prompt": [r.randrange(256) for _ in range(n)], "max_tokens": 16,
     "temperature": 0, "stream": stream}
if len(sys.argv) > 4:
    b["kv_transfer_params"] = json.loads(sys.argv[4])
print(json.dumps(b))
EOF
}
# answer FILE: "text:<text>" for a complete answer (JSON or SSE), "error:<message>" for an error
answer() {
  python3 - "$1" <<'EOF'
import json, sys
raw = open(sys.argv[1], errors="replace").read()
try:
    if raw.lstrip().startswith("data:"):
        text, done = "", False
        for line in raw.splitlines():
            if not line.startswith("data: "):
                continue
            d = line[6:]
            if d == "[DONE]":
                done = True
                continue
            j = json.loads(d)
            if "error" in j:
                print("error:" + j["error"]["message"]); sys.exit()
            for c in j.get("choices", []):
                text += c.get("text") or ""
        print(("text:" + text) if done else "error:stream ended without [DONE]")
    else:
        j = json.loads(raw)
        print(("error:" + j["error"]["message"]) if "error" in j else "text:" + j["choices"][0]["text"])
except Exception as e:
    print("error:unparsable answer (%s): %r" % (e, raw[:200]))
EOF
}
reference() {  # reference SEED LEN → the colocated server's answer
  curl -s --max-time 60 -H 'Content-Type: application/json' -d "$(body "$1" "$2" false)" \
    "$CU/v1/completions" >"$work/ref.out"
  answer "$work/ref.out"
}
lost() {  # lost ID ADDR: the decode leg of a request whose prefill leg never reached the prefiller
  echo '{"do_remote_prefill":true,"do_remote_decode":false,"transfer_id":"xfer-lost-'"$1"'",
    "remote_bootstrap_addr":"'"$2"'","remote_engine_id":"'"$engine"'","remote_dp_rank":0}'
}
engine=$(curl -s --max-time 5 "http://127.0.0.1:$BOOT/query" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["0"]["engine_id"])')

# Warm-up: both decoders have the prefiller's bootstrap entry cached and a side channel open.
curl -s -o "$work/w.out" --max-time 30 -H 'Content-Type: application/json' -d "$(body 1 40 false)" "$XU/v1/completions"
[ "$(answer "$work/w.out")" = "$(reference 1 40)" ] || die "warm-up through the proxy differs from colocated"
exp_rf=$(metric "$DFU" kvferry:kv_receive_failed_total)
sent0=$(metric "$PU" kvferry:kv_transfers_total)

# In flight at the kill: 12 proxied streams, and 4 recompute decode legs whose pulls wait on the
# prefiller for a prefill that never comes (so their replies die with it).
for i in $(seq 12); do body $((100 + i)) 3000 true >"$work/x$i.json"; done
for i in 1 2 3 4; do
  s=$([ $i -le 2 ] && echo true || echo false)
  body $((200 + i)) $((i * 300)) "$s" "$(lost "r$i" "http://127.0.0.1:$BOOT")" >"$work/r$i.json"
done
t0=$(now)
cpids=()
for i in $(seq 12); do
  curl -s -N --max-time 90 -o "$work/x$i.out" -w '%{time_total}' -H 'Content-Type: application/json' \
    -d "@$work/x$i.json" "$XU/v1/completions" >"$work/x$i.time" &
  cpids+=($!)
done
for i in 1 2 3 4; do
  curl -s -N --max-time 90 -o "$work/r$i.out" -H 'Content-Type: application/json' \
    -d "@$work/r$i.json" "$DRU/v1/completions" &
  cpids+=($!)
done
# Kill once the first of these prefills is done (its KV sent) and the others are still running.
for _ in $(seq 500); do
  [ "$(metric "$PU" kvferry:kv_transfers_total)" -gt "$sent0" ] && break
  sleep 0.02
done
kill -KILL "$pid_prefill"
wait "$pid_prefill" 2>/dev/null
t_kill=$(now)
echo "prefiller killed $(awk -v a="$t0" -v b="$t_kill" 'BEGIN { printf "%.2f", b - a }') s after the first request"

# After the kill: a "fail" decode leg on the cached (now dead) side channel, and recompute legs
# whose bootstrap is refused (another spelling of the address, so not cached).
curl -s -N --max-time 90 -o "$work/f1.out" -H 'Content-Type: application/json' \
  -d "$(body 301 64 true "$(lost f1 "http://127.0.0.1:$BOOT")")" "$DFU/v1/completions" &
cpids+=($!)
for i in 5 6; do
  s=$([ $i = 5 ] && echo true || echo false)
  t1=$(now)
  curl -s -N --max-time 30 -o "$work/r$i.out" -H 'Content-Type: application/json' \
    -d "$(body $((200 + i)) 500 "$s" "$(lost "r$i" "http://localhost:$BOOT")")" "$DRU/v1/completions"
  echo "  recompute, bootstrap refused: $(awk -v a="$t1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }') s"
done
curl -s -N --max-time 30 -o "$work/f2.out" -H 'Content-Type: application/json' \
  -d "$(body 302 64 false "$(lost f2 "http://localhost:$BOOT")")" "$DFU/v1/completions"
case "$(answer "$work/f2.out")" in
  error:*bootstrap*) ;;
  *) note "fail decoder, bootstrap refused: expected an error naming the bootstrap server, got $(answer "$work/f2.out")" ;;
esac
# The "fail" decoder keeps serving while its lost pulls wait.
[ "$(http_code "$DFU/health")" = 200 ] || note "fail decoder unhealthy after the kill"
curl -s -o "$work/plain.out" --max-time 30 -H 'Content-Type: application/json' -d "$(body 400 100 false)" "$DFU/v1/completions"
[ "$(answer "$work/plain.out")" = "$(reference 400 100)" ] || note "fail decoder's local answer differs from colocated"

wait "${cpids[@]}"
t_end=$(awk -v a="$t_kill" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')
echo "every request ended $t_end s after the kill"
awk -v t="$t_end" 'BEGIN { exit !(t < 20) }' || note "requests ended $t_end s after the kill (the load timeout, not the closed connection)"

ok=0 err=0
for i in $(seq 12); do
  a=$(answer "$work/x$i.out")
  case "$a" in
    text:*) if [ "$a" = "$(reference $((100 + i)) 3000)" ]; then ok=$((ok + 1)); else note "proxied $i: '$a' differs from colocated"; fi ;;
    error:*) err=$((err + 1)); echo "  proxied $i: ${a:0:160}" ;;
  esac
done
slowest=$(sort -g "$work"/x*.time | tail -1)
echo "proxied streams: $ok answered correctly, $err got an error, slowest ended after $slowest s"
awk -v t="$slowest" 'BEGIN { exit !(t < 20) }' || note "a proxied request took $slowest s"
[ "$err" -ge 1 ] || note "no proxied request was affected by the kill"
a=$(answer "$work/f1.out")
echo "  fail decoder, dead side channel: ${a:0:160}"
[[ "$a" == error:* ]] && grep -q '^data: \[DONE\]' "$work/f1.out" || note "fail decoder, dead side channel: expected an SSE error event then [DONE]"
for i in 1 2 3 4 5 6; do
  n=$([ $i -le 4 ] && echo $((i * 300)) || echo 500)
  a=$(answer "$work/r$i.out")
  [ "$a" = "$(reference $((200 + i)) "$n")" ] || note "recompute $i: '${a:0:160}' differs from colocated"
done
[ "$(metric "$DFU" kvferry:kv_receive_failed_total)" -gt "$exp_rf" ] || note "fail decoder counted no failed load"
[ "$(metric "$DRU" kvferry:kv_receive_failed_total)" -ge 6 ] || note "recompute decoder counted fewer than 6 failed loads"
for u in "$DFU" "$DRU" "$CU"; do
  wait_metric "$u" kvferry:kv_blocks_used 0 10 || note "$u KV blocks in use not back to 0"
  wait_metric "$u" kvferry:kv_pending_loads 0 1 >/dev/null || [ "$u" = "$CU" ] || note "$u still has pending loads"
done
[ "$(http_code "$DFU/health")" = 200 ] && [ "$(http_code "$DRU/health")" = 200 ] || note "a decoder is unhealthy"
echo "total $(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }') s"
if [ "$failures" = 0 ]; then echo "ok prefill_killed"; echo "1 passed, 0 failed"; exit 0; fi
echo "FAIL prefill_killed"
dump_logs
echo "0 passed, 1 failed"
exit 1
