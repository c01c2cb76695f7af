#!/usr/bin/env bash
# Headless data-parallel ranks across two "machines" (network namespaces this script creates and
# removes): a master prefiller on 10.232.0.2 (`--data-parallel-size 2 --data-parallel-size-local
# 1`, rank 0 and the API server), a headless prefiller on 10.232.0.3 (`--headless
# --data-parallel-start-rank 1 --data-parallel-address 10.232.0.2`), two decoders on 10.232.0.4
# (kv_load_failure_policy fail behind the proxy; recompute, sent decode legs directly), and `kvferry proxy` plus a colocated reference on 10.232.0.1.
#   1. /query lists both ranks with their worker addresses (rank 1's on the headless host); greedy
#      answers through the proxy equal the colocated ones token for token (20 prompt lengths,
#      streaming and not, and chat); both prefiller ranks did work (per-rank /metrics).
#   2. The headless instance is killed (kill -9) while 16 long streams run on rank 1 (pinned with
#      X-data-parallel-rank) and 12 proxied requests are in flight: every request ends within 35 s
#      (pinned ones with an error naming rank 1, proxied ones with the colocated answer or an
#      error; decode legs on the recompute decoder whose KV was on rank 1 with the colocated answer);
#      /health is 503 naming rank 1 and /query lists rank 0 only; rank 0 keeps serving (a
#      plain request, and a prefill/decode pair pinned to rank 0, equal colocated); KV blocks in
#      use return to zero on the master, the decoders and the colocated server.
#   3. The headless instance restarted rejoins under the same engine_id, /health is 200 again and
#      rank 1 takes work through the proxy again (KV transfers from rank 1, answers equal colocated).
#
# Usage: headless_test.sh KVFERRY_BINARY   (needs root for the namespaces; exit 77 otherwise)
set -uo pipefail
bin="$(readlink -f "$1")"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ "$(id -u)" != 0 ] || ! ip netns list >/dev/null 2>&1; then
  echo "SKIP: network namespaces need root"
  exit 77
fi
source "$here/lib.sh"
ns_tag="kvh$$"
netns_cleanup() {
  lib_cleanup
  for n in hub x p h d; do ip netns del "$ns_tag-$n" 2>/dev/null; done
}
trap netns_cleanup EXIT

ip netns add "$ns_tag-hub" || die "ip netns add"
ip netns exec "$ns_tag-hub" ip link add br0 type bridge
ip netns exec "$ns_tag-hub" ip link set br0 up
i=1
for n in x p h d; do
  ip netns add "$ns_tag-$n"
  ip link add "v$n$$" type veth peer name "h$n$$"
  ip link set "v$n$$" netns "$ns_tag-$n"
  ip link set "h$n$$" netns "$ns_tag-hub"
  ip netns exec "$ns_tag-hub" ip link set "h$n$$" master br0 up
  ip netns exec "$ns_tag-$n" ip link set lo up
  ip netns exec "$ns_tag-$n" ip addr add "10.232.0.$i/24" dev "v$n$$"
  ip netns exec "$ns_tag-$n" ip link set "v$n$$" up
  i=$((i + 1))
done
XH=10.232.0.1 PH=10.232.0.2 HH=10.232.0.3 DH=10.232.0.4
in_x=(ip netns exec "$ns_tag-x") in_p=(ip netns exec "$ns_tag-p") in_h=(ip netns exec "$ns_tag-h")
in_d=(ip netns exec "$ns_tag-d")

make_model
common=(--served-model-name tiny --kv-cache-dtype float32 --max-model-len 4096 --threads 1)
p_cfg='{"kv_connector":"MooncakeConnector","kv_role":"kv_producer"}'
d_cfg='{"kv_connector":"MooncakeConnector","kv_role":"kv_consumer","kv_load_failure_policy":"fail"}'
env_p=(VLLM_MOONCAKE_BOOTSTRAP_PORT=8998 VLLM_MOONCAKE_CONNECTOR_TIMEOUT=5)
# runs_in NAME NETNS... -- ARGS: `start`, inside a namespace
start_in() {
  local name="$1"; shift
  local ns=()
  while [ "$1" != -- ]; do ns+=("$1"); shift; done
  shift
  "${ns[@]}" env "${env_p[@]}" nice -n 19 "$bin" "$@" >>"$work/$name.log" 2>&1 &
  pids+=($!)
  printf -v "pid_$name" '%s' "$!"
}
headless_cmd=(serve "$work/m" --port 8011 "${common[@]}" --data-parallel-size 2 --headless
  --data-parallel-start-rank 1 --data-parallel-address "$PH" --kv-transfer-config "$p_cfg")
start_in colocated "${in_x[@]}" -- serve "$work/m" --port 8030 "${common[@]}"
start_in master "${in_p[@]}" -- serve "$work/m" --port 8010 "${common[@]}" --data-parallel-size 2 \
  --data-parallel-size-local 1 --data-parallel-address "$PH" --kv-transfer-config "$p_cfg"
start_in headless "${in_h[@]}" -- "${headless_cmd[@]}"
start_in decode "${in_d[@]}" -- serve "$work/m" --port 8020 "${common[@]}" --kv-transfer-config "$d_cfg"
start_in decode_recompute "${in_d[@]}" -- serve "$work/m" --port 8021 "${common[@]}" --kv-transfer-config \
  '{"kv_connector":"MooncakeConnector","kv_role":"kv_consumer","kv_load_failure_policy":"recompute"}'
start_in proxy "${in_x[@]}" -- proxy --prefill "http://$PH:8010" 8998 --decode "http://$DH:8020" --port 8000
P="http://$PH:8010" D="http://$DH:8020" DR="http://$DH:8021" C="http://$XH:8030" X="http://127.0.0.1:8000" BOOT="http://$PH:8998"

# Everything below runs from the proxy's host (x).
xcurl() { "${in_x[@]}" curl "$@"; }
http_code() { xcurl -s -o /dev/null -w '%{http_code}' --max-time "${2:-2}" "$1"; }
wait_healthy() {
  local n=$(( ${2:-60} * 10 ))
  for _ in $(seq "$n"); do
    [ "$(http_code "$1/health")" = 200 ] && return 0
    sleep 0.1
  done
  return 1
}
metric() {
  local body
  body="$(xcurl -s --max-time 5 "$1/metrics")" || { echo -1; return; }
  awk -v n="$2" '$1 == n || index($1, n "{") == 1 { s += $NF } END { printf "%d\n", s }' <<<"$body"
}
# total_metric URL NAME: the sample without an engine label (several ranks: the total)
total_metric() {
  xcurl -s --max-time 5 "$1/metrics" |
    awk -v n="$2" '(index($1, n "{") == 1 && index($1, "engine=") == 0) || $1 == n { s += $NF } END { printf "%d\n", s }'
}
rank_metric() {
  xcurl -s --max-time 5 "$1/metrics" |
    awk -v n="$2" -v r="engine=\"$3\"" 'index($1, n "{") == 1 && index($1, r) > 0 { s += $NF } END { printf "%d\n", s }'
}
wait_total() {  # wait_total URL NAME VALUE SECONDS
  local n=$(( $4 * 10 )) v
  for _ in $(seq "$n"); do
    v=$(total_metric "$1" "$2")
    [ "$v" = "$3" ] && return 0
    sleep 0.1
  done
  echo "  $1 $2 = $v after $4 s (want $3)"
  return 1
}
for u in "$C" "$P" "$D" "$DR" "$X"; do wait_healthy "$u" 120 || die "$u not healthy within 120 s"; done

failures=0
note() { echo "  not: $*"; failures=$((failures + 1)); }
now() { date +%s.%N; }

# --- 1. both ranks, across the namespaces ---------------------------------------------------------
query="$(xcurl -s --max-time 5 "$BOOT/query")" || die "GET /query"
echo "/query: $query"
python3 - "$query" "$PH" "$HH" <<'EOF' || die "/query does not list both ranks with their worker addresses"
import json, sys
q, ph, hh = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
assert sorted(q) == ["0", "1"], q
assert q["0"]["worker_addr"]["0"]["0"].startswith("tcp://%s:" % ph), q
assert q["1"]["worker_addr"]["0"]["0"].startswith("tcp://%s:" % hh), q
assert q["0"]["engine_id"] != q["1"]["engine_id"], q
EOF
engine1=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["1"]["engine_id"])' "$query")
engine0=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["0"]["engine_id"])' "$query")

"${in_x[@]}" node "$here/compare.mjs" --a "$X" --b "$C" --model tiny --max-tokens 8 --concurrency 4 --chat 3 |
  tee "$work/compare.out"
[ "${PIPESTATUS[0]}" = 0 ] || die "proxy and colocated answers differ"
for r in 0 1; do
  pp=$(rank_metric "$P" vllm:prompt_tokens_total "$r")
  sent=$(rank_metric "$P" kvferry:kv_transfers_total "$r")
  echo "prefiller rank $r: prompt tokens $pp, KV transfers sent $sent"
  [ "$pp" -gt 0 ] && [ "$sent" -gt 0 ] || die "prefiller rank $r did no work"
done

# A client that goes away cancels its request on the headless rank: the abort crosses the channel
# (the rank's final output says "abort") and the rank's KV blocks come back.
aborted() {
  xcurl -s --max-time 5 "$P/metrics" | awk 'index($1, "vllm:request_success_total{") == 1 &&
    index($1, "engine=\"1\"") > 0 && index($1, "finished_reason=\"abort\"") > 0 { s += $NF } END { printf "%d\n", s }'
}
ab0=$(aborted)
gone=$(python3 -c 'import json; print(json.dumps({"model": "tiny", "prompt": "going away", "max_tokens": 4000,
  "ignore_eos": True, "temperature": 0, "stream": True}))')
gpids=()
for k in 1 2 3 4; do
  xcurl -s -N --max-time 1 -o /dev/null -H 'X-data-parallel-rank: 1' -H 'Content-Type: application/json' \
    -d "$gone" "$P/v1/completions" &
  gpids+=($!)
done
wait "${gpids[@]}"
for _ in $(seq 100); do [ "$(aborted)" -ge $((ab0 + 4)) ] && break; sleep 0.1; done
ab1=$(aborted)
echo "client gone: rank 1 aborted $((ab1 - ab0)) of 4 requests"
[ "$ab1" -ge $((ab0 + 4)) ] || note "rank 1 did not abort the requests of clients that went away ($ab0 -> $ab1)"
for _ in $(seq 50); do
  [ "$(rank_metric "$P" vllm:num_requests_running 1)" = 0 ] && [ "$(rank_metric "$P" kvferry:kv_blocks_used 1)" = 0 ] && break
  sleep 0.1
done
[ "$(rank_metric "$P" vllm:num_requests_running 1)" = 0 ] && [ "$(rank_metric "$P" kvferry:kv_blocks_used 1)" = 0 ] ||
  note "rank 1 still runs or holds KV blocks after its clients went away"

# --- 2. the headless instance killed mid-request --------------------------------------------------
body() {  # body SEED LEN STREAM MAX_TOKENS [KV_TRANSFER_PARAMS]
  python3 - "$@" <<'EOF'
import json, random, sys
seed, n, stream, mt = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "true", int(sys.argv[4])
r = random.Random(seed)
b = {"model": "tiny", "prompt": [r.randrange(256) for _ in range(n)], "max_tokens": mt,
     "temperature": 0, "stream": stream}
if mt > 1000:
    b["ignore_eos"] = True
if len(sys.argv) > 5:
    b["kv_transfer_params"] = json.loads(sys.argv[5])
print(json.dumps(b))
EOF
}
answer() {  # answer FILE → "text:<text>" or "error:<message>"
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
reference() {  # reference SEED LEN MAX_TOKENS
  xcurl -s --max-time 120 -H 'Content-Type: application/json' -d "$(body "$1" "$2" false "$3")" \
    "$C/v1/completions" >"$work/ref.out"
  answer "$work/ref.out"
}

for i in $(seq 16); do body $((500 + i)) 20 true 4000 >"$work/long$i.json"; done
for i in $(seq 12); do body $((100 + i)) 3000 true 16 >"$work/x$i.json"; done
cpids=()
for i in $(seq 16); do
  xcurl -s -N --max-time 120 -o "$work/long$i.out" -H 'X-data-parallel-rank: 1' \
    -H 'Content-Type: application/json' -d "@$work/long$i.json" "$P/v1/completions" &
  cpids+=($!)
done
for i in $(seq 12); do
  xcurl -s -N --max-time 120 -o "$work/x$i.out" -w '%{time_total}' -H 'Content-Type: application/json' \
    -d "@$work/x$i.json" "$X/v1/completions" >"$work/x$i.time" &
  cpids+=($!)
done
# Kill once every long stream on rank 1 is producing tokens.
for _ in $(seq 300); do
  started=0
  for i in $(seq 16); do [ -s "$work/long$i.out" ] && started=$((started + 1)); done
  [ "$started" = 16 ] && break
  sleep 0.05
done
# And 4 prefill/decode pairs on rank 1, the decode legs on the "recompute" decoder (as a router
# would send them): whatever the kill catches, their answers must equal colocated.
for i in 1 2 3 4; do
  pkv='{"do_remote_decode":true,"do_remote_prefill":false,"transfer_id":"xfer-rc-'$i'"}'
  dkv='{"do_remote_prefill":true,"do_remote_decode":false,"transfer_id":"xfer-rc-'$i'","remote_bootstrap_addr":"'"$BOOT"'","remote_engine_id":"'"$engine1"'","remote_dp_rank":1}'
  xcurl -s --max-time 120 -o /dev/null -H 'X-data-parallel-rank: 1' -H 'Content-Type: application/json' \
    -d "$(body $((800 + i)) 2000 false 1 "$pkv")" "$P/v1/completions" &
  cpids+=($!)
  xcurl -s -N --max-time 120 -o "$work/rc$i.out" -H 'Content-Type: application/json' \
    -d "$(body $((800 + i)) 2000 "$([ $i -le 2 ] && echo true || echo false)" 12 "$dkv")" "$DR/v1/completions" &
  cpids+=($!)
done
sleep 0.3
kill -KILL "$pid_headless"
wait "$pid_headless" 2>/dev/null
t_kill=$(now)
echo "headless instance killed with $started long streams started on rank 1"
wait "${cpids[@]}"
t_end=$(awk -v a="$t_kill" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }')
echo "every request in flight ended $t_end s after the kill"
awk -v t="$t_end" 'BEGIN { exit !(t < 35) }' || note "requests ended $t_end s after the kill (bound 35 s)"
lerr=0
for i in $(seq 16); do
  a=$(answer "$work/long$i.out")
  case "$a" in
    error:*"data-parallel rank 1"*) lerr=$((lerr + 1)) ;;
    error:*) note "long stream $i: an error that does not name rank 1: ${a:0:200}" ;;
    text:*) echo "  long stream $i finished before the kill" ;;
  esac
done
echo "long streams on rank 1: $lerr ended with an error naming rank 1, e.g. $(answer "$work/long1.out" | cut -c1-220)"
[ "$lerr" -ge 1 ] || note "no long stream on rank 1 was cut by the kill"
ok=0 err=0
for i in $(seq 12); do
  a=$(answer "$work/x$i.out")
  case "$a" in
    text:*) if [ "$a" = "$(reference $((100 + i)) 3000 16)" ]; then ok=$((ok + 1)); else note "proxied $i: '${a:0:100}' differs from colocated"; fi ;;
    error:*) err=$((err + 1)); echo "  proxied $i: ${a:0:200}" ;;
  esac
done
echo "proxied requests: $ok answered correctly, $err got an error, slowest ended after $(sort -g "$work"/x*.time | tail -1) s"

for i in 1 2 3 4; do
  a=$(answer "$work/rc$i.out")
  [ "$a" = "$(reference $((800 + i)) 2000 12)" ] || note "recompute decode leg $i: '${a:0:200}' differs from colocated"
done
echo "recompute decoder: 4 decode legs whose KV was on rank 1 answered, failed loads counted: $(metric "$DR" kvferry:kv_receive_failed_total)"
code=$(xcurl -s -o "$work/health.out" -w '%{http_code}' --max-time 5 "$P/health")
echo "master /health with rank 1 gone: $code $(cat "$work/health.out")"
[ "$code" = 503 ] && grep -q 'data-parallel rank 1' "$work/health.out" || note "master /health should be 503 naming rank 1"
q2="$(xcurl -s --max-time 5 "$BOOT/query")"
echo "/query with rank 1 gone: $q2"
python3 -c 'import json,sys; q=json.loads(sys.argv[1]); assert sorted(q)==["0"], q' "$q2" || note "/query should list rank 0 only"
# Rank 0 keeps serving: a plain request (least loaded skips the missing rank), one pinned to rank 1
# (503 naming it), and a prefill/decode pair on rank 0.
for k in 1 2 3; do
  xcurl -s --max-time 60 -H 'Content-Type: application/json' -d "$(body $((700 + k)) 50 false 12)" \
    "$P/v1/completions" >"$work/plain$k.out"
  [ "$(answer "$work/plain$k.out")" = "$(reference $((700 + k)) 50 12)" ] ||
    note "plain request $k on the master after the kill: $(answer "$work/plain$k.out" | cut -c1-200)"
done
code=$(xcurl -s -o "$work/pin1.out" -w '%{http_code}' --max-time 10 -H 'X-data-parallel-rank: 1' \
  -H 'Content-Type: application/json' -d "$(body 710 20 false 4)" "$P/v1/completions")
[ "$code" = 503 ] && grep -q 'data-parallel rank 1' "$work/pin1.out" || note "pinned to the missing rank 1: HTTP $code $(cat "$work/pin1.out")"
pkv='{"do_remote_decode":true,"do_remote_prefill":false,"transfer_id":"xfer-rank0-after-kill"}'
dkv='{"do_remote_prefill":true,"do_remote_decode":false,"transfer_id":"xfer-rank0-after-kill","remote_bootstrap_addr":"'"$BOOT"'","remote_engine_id":"'"$engine0"'","remote_dp_rank":0}'
xcurl -s --max-time 60 -H 'X-data-parallel-rank: 0' -H 'Content-Type: application/json' \
  -d "$(body 720 300 false 1 "$pkv")" "$P/v1/completions" >"$work/p0.out" &
ppid=$!
xcurl -s --max-time 60 -H 'Content-Type: application/json' -d "$(body 720 300 false 12 "$dkv")" \
  "$D/v1/completions" >"$work/d0.out"
wait $ppid
[ "$(answer "$work/d0.out")" = "$(reference 720 300 12)" ] ||
  note "prefill/decode pair on rank 0 after the kill: $(answer "$work/d0.out" | cut -c1-200)"
for u in "$P" "$D" "$DR" "$C"; do
  wait_total "$u" kvferry:kv_blocks_used 0 15 || note "$u KV blocks in use not back to 0"
done
[ "$(http_code "$D/health")" = 200 ] || note "the decoder is unhealthy after the kill"

# --- 3. restarted, it rejoins under the same engine_id and takes work again -----------------------
t_restart=$(now)
start_in headless "${in_h[@]}" -- "${headless_cmd[@]}"
wait_healthy "$P" 120 || die "master not healthy within 120 s of the headless restart"
echo "master healthy again $(awk -v a="$t_restart" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }') s after the restart"
q3="$(xcurl -s --max-time 5 "$BOOT/query")"
echo "/query after the restart: $q3"
python3 - "$q3" "$engine1" "$HH" <<'EOF' || note "rank 1 did not rejoin under its engine_id"
import json, sys
q = json.loads(sys.argv[1])
assert sorted(q) == ["0", "1"], q
assert q["1"]["engine_id"] == sys.argv[2], q
assert q["1"]["worker_addr"]["0"]["0"].startswith("tcp://%s:" % sys.argv[3]), q
EOF
wait_healthy "$X" 60 || die "proxy not healthy after the restart"
sent_before=$(rank_metric "$P" kvferry:kv_transfers_total 1)
"${in_x[@]}" node "$here/compare.mjs" --a "$X" --b "$C" --model tiny --max-tokens 8 --concurrency 4 --chat 0 \
  --lengths 3,40,300,1000 --seed 9 | tee "$work/compare2.out"
[ "${PIPESTATUS[0]}" = 0 ] || note "after the restart, proxy and colocated answers differ"
# A headless rank's counters reach the master with its next stats message (every 0.5 s).
for _ in $(seq 50); do
  sent_after=$(rank_metric "$P" kvferry:kv_transfers_total 1)
  [ "$sent_after" -gt "$sent_before" ] && break
  sleep 0.1
done
echo "rank 1 KV transfers after the restart: $sent_before -> $sent_after"
[ "$sent_after" -gt "$sent_before" ] || note "rank 1 took no work after rejoining"
for u in "$P" "$D" "$DR" "$C"; do
  wait_total "$u" kvferry:kv_blocks_used 0 15 || note "$u KV blocks in use not back to 0 at the end"
done

if [ "$failures" = 0 ]; then echo "ok headless"; echo "1 passed, 0 failed"; exit 0; fi
echo "FAIL headless"
dump_logs
echo "0 passed, 1 failed"
exit 1
