#!/usr/bin/env bash
# Disaggregation under faults, with real processes on loopback: a prefiller and a decoder
# (VLLM_MOONCAKE_ABORT_REQUEST_TIMEOUT=3, VLLM_MOONCAKE_CONNECTOR_TIMEOUT=5), `kvferry proxy` in
# front, a colocated `kvferry serve` as the reference. Named cases, each printing `ok NAME` or
# `FAIL NAME`; after each, KV blocks in use on every surviving server must be back to zero.
#   duplicate_transfer_id  two concurrent prefill legs with one transfer_id: one 200, one 409/400;
#                          the id is free again once its blocks expired
#   garbage_side_channel   random bytes and undecodable ZMTP messages on the prefiller's ZMQ port
#                          (from bootstrap /query): ERROR replies, counted, prefiller keeps serving
#   garbage_bootstrap      random bytes, truncated HTTP, bad JSON to /register: 4xx or closed,
#                          /query unchanged, prefiller keeps serving
#   client_disconnect      clients leave the proxy mid-stream: both legs aborted, blocks freed
#   bootstrap_unreachable  decoder leg naming a closed port / a port that never answers: clear
#                          error within the connector timeout, decoder healthy after
#   decoder_killed         kill -9 of the decoder: the proxy answers an error at once, the
#                          prefiller frees the held blocks after the abort timeout (expired)
#
# Usage: faults_test.sh KVFERRY_BINARY
set -uo pipefail
bin="$(readlink -f "$1")"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/lib.sh"

make_model
P=$(pick) D=$(pick) C=$(pick) X=$(pick) BOOT=$(pick)
p_cfg='{"kv_connector":"MooncakeConnector","kv_role":"kv_producer"}'
d_cfg='{"kv_connector":"MooncakeConnector","kv_role":"kv_consumer"}'
to=(VLLM_MOONCAKE_ABORT_REQUEST_TIMEOUT=3 VLLM_MOONCAKE_CONNECTOR_TIMEOUT=5)
start colocated -- serve "$work/m" --port "$C" "${common[@]}"
start prefill "${to[@]}" VLLM_MOONCAKE_BOOTSTRAP_PORT="$BOOT" -- serve "$work/m" --port "$P" "${common[@]}" \
  --kv-transfer-config "$p_cfg"
start decode "${to[@]}" -- serve "$work/m" --port "$D" "${common[@]}" --kv-transfer-config "$d_cfg"
start proxy -- proxy --prefill "http://127.0.0.1:$P" "$BOOT" --decode "http://127.0.0.1:$D" --port "$X"
PU="http://127.0.0.1:$P" DU="http://127.0.0.1:$D" CU="http://127.0.0.1:$C" XU="http://127.0.0.1:$X"
for u in "$CU" "$PU" "$DU" "$XU"; do wait_healthy "$u" 60 || die "$u not healthy within 60 s"; done

passed=0 failed=0
case_ok=1
check() {  # check DESCRIPTION COMMAND...: runs the command, notes a failure
  if ! "${@:2}"; then echo "  not: $1"; case_ok=0; fi
}
finish_case() {  # finish_case NAME SERVER_URL...: blocks back to 0 on each, then ok/FAIL
  local name="$1" u; shift
  for u in "$@"; do check "$u KV blocks in use back to 0" wait_metric "$u" kvferry:kv_blocks_used 0 15; done
  if [ "$case_ok" = 1 ]; then echo "ok $name"; passed=$((passed + 1))
  else echo "FAIL $name"; failed=$((failed + 1)); dump_logs; fi
  case_ok=1
}
post() {  # post URL BODY [MAX_TIME] → body in $work/out, prints the HTTP status
  curl -s -N -o "$work/out" -w '%{http_code}' --max-time "${3:-30}" -H 'Content-Type: application/json' \
    -d "$2" "$1/v1/completions"
}
text_of() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["choices"][0]["text"])' "$1"; }
# works PROMPT: a greedy request through the proxy answers 200 with the colocated server's text
works() {
  local b='{"model":"tiny","prompt":"'"$1"'","max_tokens":6,"temperature":0}' s
  s=$(post "$XU" "$b"); [ "$s" = 200 ] || { echo "  proxy answered $s: $(cat "$work/out")"; return 1; }
  local a; a=$(text_of "$work/out")
  s=$(post "$CU" "$b"); [ "$s" = 200 ] || return 1
  [ "$a" = "$(text_of "$work/out")" ] || { echo "  proxy '$a' != colocated '$(text_of "$work/out")'"; return 1; }
}
wait_ge() {  # wait_ge URL NAME MIN SECONDS: true once the metric is at least MIN
  local v
  for _ in $(seq $(( $4 * 10 ))); do v=$(metric "$1" "$2"); [ "$v" -ge "$3" ] && return 0; sleep 0.1; done
  echo "  $1 $2 = $v after $4 s (want >= $3)"; return 1
}
ge() { [ "$1" -ge "$2" ] || { echo "  $1 < $2"; return 1; }; }
eq() { [ "$1" = "$2" ] || { echo "  '$1' != '$2'"; return 1; }; }
elapsed_lt() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a < b) }' || { echo "  took $1 s, limit $2 s"; return 1; }; }
now() { date +%s.%N; }
since() { awk -v t0="$1" -v t1="$(now)" 'BEGIN { printf "%.2f", t1 - t0 }'; }

check "proxy works before the faults" works "a quiet morning at the harbour"

# --- duplicate_transfer_id ---------------------------------------------------------------------
t0=$(now)
pleg='{"model":"tiny","prompt":"the ferry leaves the island at dawn","max_tokens":1,"temperature":0,
  "kv_transfer_params":{"do_remote_decode":true,"do_remote_prefill":false,"transfer_id":"xfer-dup-1"}}'
exp0=$(metric "$PU" kvferry:kv_expired_requests_total)
cpids=()
for i in 1 2; do
  curl -s -o "$work/dup$i.out" -w '%{http_code}\n' --max-time 30 -H 'Content-Type: application/json' \
    -d "$pleg" "$PU/v1/completions" >"$work/dup$i.code" &
  cpids+=($!)
done
wait "${cpids[@]}"
codes="$(cat "$work/dup1.code" "$work/dup2.code" | sort | tr '\n' ' ')"
check "one 200 and one 409/400 (got $codes)" eval '[[ "$codes" =~ ^200\ (400|409)\ $ ]]'
check "the rejection names the transfer_id" grep -q 'xfer-dup-1' "$work"/dup*.out
check "a third request with the id while the first holds its blocks is rejected" \
  eval '[[ "$(post "$PU" "$pleg")" =~ ^(400|409)$ ]]'
check "held blocks expire after the abort timeout" wait_metric "$PU" kvferry:kv_expired_requests_total $((exp0 + 1)) 10
check "the id may be used again once its blocks are freed" eq "$(post "$PU" "$pleg")" 200
check "and expires again" wait_metric "$PU" kvferry:kv_expired_requests_total $((exp0 + 2)) 10
check "proxy works after" works "bread at the station"
finish_case duplicate_transfer_id "$PU" "$DU"
echo "  ($(since "$t0") s)"

# --- garbage_side_channel ----------------------------------------------------------------------
t0=$(now)
worker=$(curl -s --max-time 5 "http://127.0.0.1:$BOOT/query" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["0"]["worker_addr"]["0"]["0"])')
check "bootstrap /query names a tcp:// worker (got '$worker')" eval '[[ "$worker" =~ ^tcp://[0-9.]+:[0-9]+$ ]]'
whost=${worker#tcp://} wport=${whost##*:} whost=${whost%:*}
rej0=$(metric "$PU" kvferry:kv_rejected_messages_total)
python3 "$here/poke.py" zmtp "$whost" "$wport" >"$work/zmtp.out" 2>&1
check "every undecodable message got an ERROR reply: $(sort "$work/zmtp.out" | uniq -c | tr '\n' ' ')" \
  eval '[ "$(grep -c "^reply status=2$" "$work/zmtp.out")" = 7 ]'
python3 "$here/poke.py" raw "$whost" "$wport" >/dev/null 2>&1
check "rejected messages counted" ge "$(metric "$PU" kvferry:kv_rejected_messages_total)" $((rej0 + 7))
check "prefiller healthy" eq "$(http_code "$PU/health")" 200
check "proxy works after" works "the engine room smells of bread"
finish_case garbage_side_channel "$PU" "$DU"
echo "  ($(since "$t0") s)"

# --- garbage_bootstrap -------------------------------------------------------------------------
t0=$(now)
q0=$(curl -s --max-time 5 "http://127.0.0.1:$BOOT/query")
python3 "$here/poke.py" http 127.0.0.1 "$BOOT" >"$work/http.out" 2>&1
check "every bad request rejected with 4xx or a close: $(tr '\n' ';' <"$work/http.out")" \
  eval '[ "$(grep -c -E "^(4[0-9][0-9]|-) " "$work/http.out")" = 10 ]'
for _ in 1 2; do timeout 5 python3 "$here/poke.py" raw 127.0.0.1 "$BOOT" >/dev/null 2>&1; done
check "/query unchanged" eq "$(curl -s --max-time 5 "http://127.0.0.1:$BOOT/query")" "$q0"
check "prefiller healthy" eq "$(http_code "$PU/health")" 200
check "proxy works after" works "tide tables for the island"
finish_case garbage_bootstrap "$PU" "$DU"
echo "  ($(since "$t0") s)"

# --- client_disconnect -------------------------------------------------------------------------
t0=$(now)
long_body() {  # a streaming request with a 3,000-token prompt of its own
  python3 -c 'import random,sys; r=random.Random(int(sys.argv[1])); print(",".join(str(r.randrange(256)) for _ in range(3000)))' "$1" |
    sed 's/.*/{"model":"tiny","prompt":[&],"max_tokens":1000,"ignore_eos":true,"temperature":0,"stream":true}/'
}
pab0=$(metric "$PU" 'vllm:request_success_total{model_name="tiny",finished_reason="abort"}')
dab0=$(metric "$DU" 'vllm:request_success_total{model_name="tiny",finished_reason="abort"}')
dis0=$(metric "$XU" kvferry_proxy_client_disconnects_total)
# One client that leaves while the decoder streams, then 12 at once that leave after 0.03 to 0.9 s
# (some while their prefill is still queued on the prefiller).
# It leaves after its fifth event, not after a fixed time: the tiny model can stream all 4,000
# tokens within a second.
timeout 20 python3 - "$XU" >"$work/stream.out" <<'PY'
import http.client, json, sys, urllib.parse
u = urllib.parse.urlparse(sys.argv[1])
c = http.client.HTTPConnection(u.hostname, u.port, timeout=15)
body = {"model": "tiny", "prompt": "a story", "max_tokens": 4000, "ignore_eos": True, "temperature": 0, "stream": True}
c.request("POST", "/v1/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
r = c.getresponse()
events = 0
for _ in range(1000):
    line = r.fp.readline()
    if not line:
        break
    sys.stdout.write(line.decode())
    events += line.startswith(b"data: {")
    if events >= 5:
        break
c.sock.close()  # gone mid-stream
PY
check "the first client got part of a stream" eval '[ "$(grep -c "^data: {" "$work/stream.out")" -ge 5 ]'
ab='vllm:request_success_total{model_name="tiny",finished_reason="abort"}'
check "the decoder aborted the stream" wait_ge "$DU" "$ab" $((dab0 + 1)) 10
# The first leave within 30 ms, while the prefiller still works through the 12 prompts (all 12
# prefills of the tiny model can be done within 100 ms); the last after 0.9 s, mid-decode.
cpids=()
i=0
for t in 0.03 0.12 0.2 0.27 0.35 0.42 0.5 0.57 0.65 0.72 0.8 0.9; do
  i=$((i + 1))
  curl -s -N --max-time "$t" -o /dev/null -H 'Content-Type: application/json' \
    -d "$(long_body "$i")" "$XU/v1/completions" &
  cpids+=($!)
done
# curl exits 28 when its --max-time cut the stream; one whose request finished first (a fast
# machine streams the 1,000 tokens of the tiny model within the second) left nothing to count.
cut=0
for p in "${cpids[@]}"; do
  wait "$p"
  [ $? = 28 ] && cut=$((cut + 1))
done
echo "  $cut of 12 clients left mid-stream"
check "most clients left mid-stream" ge "$cut" 6
check "the proxy saw every disconnect" wait_metric "$XU" kvferry_proxy_client_disconnects_total $((dis0 + 1 + cut)) 5
# (a client that leaves before the proxy's decode leg reached the decoder leaves nothing to abort)
check "the decoder aborted decode legs" wait_ge "$DU" "$ab" $((dab0 + 2)) 10
check "the prefiller aborted prefill legs still running" wait_ge "$PU" "$ab" $((pab0 + 1)) 10
echo "  aborted: prefiller $(( $(metric "$PU" "$ab") - pab0 )), decoder $(( $(metric "$DU" "$ab") - dab0 ))"
check "nothing left waiting on the prefiller" wait_metric "$PU" kvferry:kv_held_requests 0 10
check "nothing left waiting on the decoder" wait_metric "$DU" kvferry:kv_pending_loads 0 10
check "proxy works after" works "morning sea"
finish_case client_disconnect "$PU" "$DU"
echo "  ($(since "$t0") s)"

# --- bootstrap_unreachable ---------------------------------------------------------------------
t0=$(now)
closed=$(pick)
python3 -c 'import socket,sys,time
s=socket.socket(); s.bind(("127.0.0.1",0)); s.listen(1); print(s.getsockname()[1], flush=True); time.sleep(60)' \
  >"$work/silent.port" &
silent_pid=$!
pids+=($silent_pid)
for _ in $(seq 50); do [ -s "$work/silent.port" ] && break; sleep 0.1; done
silent=$(cat "$work/silent.port")
rf0=$(metric "$DU" kvferry:kv_receive_failed_total)
n=0
for addr in "http://127.0.0.1:$closed" "127.0.0.1:$closed" "http://127.0.0.1:$silent"; do
  for stream in false true; do
    n=$((n + 1))
    body='{"model":"tiny","prompt":"island ferry","max_tokens":4,"temperature":0,"stream":'$stream',
      "kv_transfer_params":{"do_remote_prefill":true,"do_remote_decode":false,"transfer_id":"xfer-unreach-'$n'",
      "remote_bootstrap_addr":"'$addr'","remote_engine_id":"nobody","remote_dp_rank":0}}'
    t1=$(now)
    s=$(post "$DU" "$body" 40)
    dt=$(since "$t1")
    echo "  $addr stream=$stream: $s in $dt s: $(head -c 200 "$work/out")"
    check "bounded time" elapsed_lt "$dt" 15
    if [ "$stream" = false ]; then
      check "an HTTP error status" eval '[ "$s" -ge 500 ] && [ "$s" -le 599 ]'
    else
      check "an HTTP error or an SSE error event" \
        eval '[ "$s" -ge 500 ] || { grep -q "^data: {\"error\"" "$work/out" && grep -q "^data: \[DONE\]" "$work/out"; }'
    fi
    check "the error names the bootstrap server" grep -q 'bootstrap' "$work/out"
  done
done
kill "$silent_pid" 2>/dev/null
check "receive failures counted" ge "$(metric "$DU" kvferry:kv_receive_failed_total)" $((rf0 + 6))
check "decoder healthy" eq "$(http_code "$DU/health")" 200
check "proxy works after" works "harbour station"
finish_case bootstrap_unreachable "$PU" "$DU"
echo "  ($(since "$t0") s)"

# --- decoder_killed (last: the decoder does not come back) -----------------------------------------
t0=$(now)
exp0=$(metric "$PU" kvferry:kv_expired_requests_total)
kill -KILL "$pid_decode"
wait "$pid_decode" 2>/dev/null
# The proxy's decode leg is refused; its prefill leg may already have finished: held until expiry.
s=$(post "$XU" '{"model":"tiny","prompt":"the last ferry of the evening","max_tokens":4,"temperature":0}' 10)
echo "  proxy, decoder dead: $s $(head -c 200 "$work/out")"
check "the proxy answers an error at once" eval '[ "$s" -ge 500 ]'
# The prefill leg as a proxy sends it, for a decoder that died before pulling.
sleep 0.5
check "the proxy's prefill leg expired or aborted" wait_metric "$PU" kvferry:kv_held_requests 0 10
exp0=$(metric "$PU" kvferry:kv_expired_requests_total)
held0=$(metric "$PU" kvferry:kv_held_requests)
s=$(post "$PU" '{"model":"tiny","prompt":"engine bread tide story sea morning","max_tokens":1,"temperature":0,
  "kv_transfer_params":{"do_remote_decode":true,"do_remote_prefill":false,"transfer_id":"xfer-orphan"}}')
check "prefill leg answered 200" eq "$s" 200
check "its blocks are held for the decoder" ge "$(metric "$PU" kvferry:kv_held_requests)" $((held0 + 1))
check "held blocks still in use" ge "$(metric "$PU" kvferry:kv_blocks_used)" 1
check "expired after the abort timeout" wait_ge "$PU" kvferry:kv_expired_requests_total $((exp0 + 1)) 10
check "no request holds blocks" wait_metric "$PU" kvferry:kv_held_requests 0 5
check "prefiller healthy" eq "$(http_code "$PU/health")" 200
finish_case decoder_killed "$PU" "$CU"
echo "  ($(since "$t0") s)"

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
