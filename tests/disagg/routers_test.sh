#!/usr/bin/env bash
# Behind the routers people deploy: replays of vllm-project/router (sequential legs) and llm-d's
# routing sidecar (concurrent legs) (tests/disagg/router_replay.mjs) in front of a real kvferry
# prefiller and decoder; a colocated `kvferry serve` is the reference. Default connector settings.
#   replay_vllm_router / replay_llm_d   the official openai client through each replay:
#       completions and chat, streaming and not, and /v1/responses (tests/disagg/responses.mjs);
#       greedy answers equal colocated token for token;
#       the decoder received the KV transfers; KV blocks in use 0 on every server within 5 s
#   query_never_empty   /query polled every 20 ms from the moment a prefiller starts (and again
#       across the restart below): 503 until its worker registered, never a 200 without workers
#   prefiller_restart   kill -9 and restart the prefiller with the same command line while both
#       replays keep their cached engine_id: a request in flight across it ends at once with a
#       clear error; the next request pair succeeds, no router restart
#   idle_keepalive_stop a prefiller that routers hold keep-alive connections to stops promptly
#
# Usage: routers_test.sh KVFERRY_BINARY
set -uo pipefail
bin="$(readlink -f "$1")"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/lib.sh"
[ -d "$here/../oracles/node_modules/openai" ] || die "tests/oracles/node_modules/openai is missing: run scripts/setup"

make_model
P=$(pick) D=$(pick) C=$(pick) BOOT=$(pick)
p_cfg='{"kv_connector":"MooncakeConnector","kv_role":"kv_producer"}'
d_cfg='{"kv_connector":"MooncakeConnector","kv_role":"kv_consumer"}'
PU="http://127.0.0.1:$P" DU="http://127.0.0.1:$D" CU="http://127.0.0.1:$C"

passed=0 failed=0
case_ok=1
check() { if ! "${@:2}"; then echo "  not: $1"; case_ok=0; fi; }
finish_case() {
  if [ "$case_ok" = 1 ]; then echo "ok $1"; passed=$((passed + 1))
  else echo "FAIL $1"; failed=$((failed + 1)); dump_logs; fi
  case_ok=1
}
blocks_zero() {  # blocks_zero SECONDS URL...: kvferry:kv_blocks_used 0 on each within SECONDS
  local s="$1" u; shift
  for u in "$@"; do check "$u KV blocks in use back to 0 within $s s" wait_metric "$u" kvferry:kv_blocks_used 0 "$s"; done
}
# poll_query PORT OUT: polls /query every 20 ms for up to 60 s, one line per answer
# ("STATUS WORKERS"), until a 200 with workers.
poll_query() {
  python3 - "$1" >"$2" 2>&1 <<'EOF' &
import http.client, json, sys, time
port = int(sys.argv[1]); end = time.time() + 60
print("start", flush=True)
while time.time() < end:
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        c.request("GET", "/query"); r = c.getresponse(); body = r.read(); c.close()
        n = len(json.loads(body)) if r.status == 200 else 0
        print(r.status, n, flush=True)
        if r.status == 200 and n > 0: break
    except (OSError, ValueError) as e:
        print("-", 0, flush=True)
    time.sleep(0.02)
EOF
  pids+=($!)
  poll_pid=$!
  # The prefiller starts only once the poller runs (python can take seconds to start on a busy host).
  for _ in $(seq 200); do grep -q '^start' "$2" 2>/dev/null && return; sleep 0.05; done
}
query_check() {  # query_check OUT: the polls ended in a 200 with workers, and no 200 came without
  local bad
  wait "$poll_pid" 2>/dev/null
  bad=$(awk '$1 == 200 && $2 == 0' "$1" | wc -l)
  echo "  /query polls: $(grep -v '^start' "$1" | sort | uniq -c | tr '\n' ' ')"
  check "no 200 without workers" eq "$bad" 0
  check "polled before the prefiller answered" test "$(grep -c '^- ' "$1")" -ge 1
  check "ends with a 200 listing the worker" eq "$(tail -1 "$1")" "200 1"
  # (a 503 shows only when a poll lands between the bootstrap server's start and the worker's
  # registration, a few ms: counted above, not required)
}
eq() { [ "$1" = "$2" ] || { echo "  '$1' != '$2'"; return 1; }; }

start colocated -- serve "$work/m" --port "$C" "${common[@]}"
poll_query "$BOOT" "$work/query1.out"
start prefill VLLM_MOONCAKE_BOOTSTRAP_PORT="$BOOT" -- serve "$work/m" --port "$P" "${common[@]}" --kv-transfer-config "$p_cfg"
start decode -- serve "$work/m" --port "$D" "${common[@]}" --kv-transfer-config "$d_cfg"
for u in "$CU" "$PU" "$DU"; do wait_healthy "$u" 60 || die "$u not healthy within 60 s"; done

# --- query_never_empty ---------------------------------------------------------------------------
query_check "$work/query1.out"
finish_case query_never_empty

# start_replay NAME FLOW [EXTRA...]: sets port_NAME
start_replay() {
  local name="$1" flow="$2"; shift 2
  node "$here/router_replay.mjs" --flow "$flow" --port 0 --prefill "$PU" --bootstrap-port "$BOOT" --decode "$DU" "$@" \
    >"$work/$name.log" 2>&1 &
  pids+=($!)
  local p=""
  for _ in $(seq 300); do
    p=$(awk '/^listening/ { print $2 }' "$work/$name.log")
    [ -n "$p" ] && break
    sleep 0.1
  done
  [ -n "$p" ] || die "replay $name did not start"
  printf -v "port_$name" '%s' "$p"
}
start_replay vr vllm-router --dp-header-on-decode 1
start_replay ld llm-d
VR="http://127.0.0.1:$port_vr" LD="http://127.0.0.1:$port_ld"

# --- the replays ------------------------------------------------------------------------------------
for r in vr ld; do
  url=$VR name=replay_vllm_router
  [ $r = ld ] && url=$LD name=replay_llm_d
  t0=$(metric "$DU" kvferry:kv_transfers_total)
  timeout 240 node "$here/compare.mjs" --a "$url" --b "$CU" --model tiny --lengths 1,16,17,100,300,1000 \
    --max-tokens 6 --concurrency 3 --chat 2 >"$work/compare_$r.out" 2>&1
  rc=$?
  tail -1 "$work/compare_$r.out"
  check "answers through the $name replay equal colocated" eq "$rc" 0
  [ "$rc" = 0 ] || cat "$work/compare_$r.out"
  pf() { curl -s --max-time 5 "$url/engine_ids" | python3 -c 'import json,sys; print(json.load(sys.stdin)["prefill_failed"])'; }
  check "the prefill legs were all served" eq "$(pf)" 0
  # /v1/responses through the replay (llm-d routes it the same way; caps max_tokens only).
  timeout 120 node "$here/responses.mjs" --a "$url" --b "$CU" --model tiny >"$work/responses_$r.out" 2>&1
  rc=$?
  tail -1 "$work/responses_$r.out"
  check "/v1/responses through the $name replay" eq "$rc" 0
  [ "$rc" = 0 ] || cat "$work/responses_$r.out"
  t1=$(metric "$DU" kvferry:kv_transfers_total)
  echo "  decoder KV transfers: $((t1 - t0))"
  check "the decoder received a KV transfer per request (16)" test $((t1 - t0)) -ge 16
  if [ $r = ld ]; then
    # llm-d keeps the client's min_tokens on the prefill leg it caps at max_tokens 1. (The
    # decoder's policy is fail: a refused prefill leg would make this an error, not the text.)
    b='{"model":"tiny","prompt":"tide tables for the island ferry","max_tokens":6,"min_tokens":4,"temperature":0}'
    a2=$(curl -s --max-time 60 -H 'Content-Type: application/json' -d "$b" "$CU/v1/completions" |
      python3 -c 'import json,sys; print(json.load(sys.stdin)["choices"][0]["text"])')
    a1=$(curl -s --max-time 60 -H 'Content-Type: application/json' -d "$b" "$LD/v1/completions" |
      python3 -c 'import json,sys; print(json.load(sys.stdin)["choices"][0]["text"])')
    check "min_tokens through llm-d: the colocated answer ('$a1')" eq "$a1" "$a2"
  else
    # vllm-router's defaults are ignored with one warning per field name, not per request.
    for f in prefill decode; do
      check "$f warned once about no_stop_trim" eq "$(grep -c "field 'no_stop_trim'" "$work/$f.log")" 1
    done
  fi
  blocks_zero 5 "$PU" "$DU" "$CU"
  finish_case "$name"
done

# --- prefiller_restart ------------------------------------------------------------------------------
id0=$(curl -s --max-time 5 "$VR/engine_ids" | python3 -c 'import json,sys; print(json.load(sys.stdin)["engine_ids"]["0"])')
# A decode leg in flight across the restart (its pull waits on the prefiller): a clear error, at once.
curl -s -o "$work/inflight.json" -w '%{http_code}' --max-time 60 -H 'Content-Type: application/json' \
  -d '{"model":"tiny","prompt":"in flight","max_tokens":4,"temperature":0,"kv_transfer_params":{"do_remote_prefill":true,
       "do_remote_decode":false,"transfer_id":"xfer-inflight","remote_bootstrap_addr":"http://127.0.0.1:'"$BOOT"'",
       "remote_engine_id":"'"$id0"'"}}' "$DU/v1/completions" >"$work/inflight.code" &
inflight_pid=$!
check "the in-flight pull waits on the prefiller" wait_metric "$PU" kvferry:kv_waiting_pulls 1 10
t_kill=$(date +%s.%N)
kill -KILL "$pid_prefill"
wait "$pid_prefill" 2>/dev/null
wait "$inflight_pid"
dt=$(awk -v a="$t_kill" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
echo "  in-flight request: $(cat "$work/inflight.code") after $dt s: $(head -c 250 "$work/inflight.json")"
check "it ends with an error within 5 s of the kill" awk -v d="$dt" -v c="$(cat "$work/inflight.code")" 'BEGIN { exit !(d < 5 && c >= 500) }'
check "the error says the prefiller went away" grep -q "closed the side channel" "$work/inflight.json"
poll_query "$BOOT" "$work/query2.out"
start prefill VLLM_MOONCAKE_BOOTSTRAP_PORT="$BOOT" -- serve "$work/m" --port "$P" "${common[@]}" --kv-transfer-config "$p_cfg"
wait_healthy "$PU" 60 || die "restarted prefiller not healthy"
id1=$(curl -s --max-time 5 "http://127.0.0.1:$BOOT/query" | python3 -c 'import json,sys; print(json.load(sys.stdin)["0"]["engine_id"])')
echo "  engine_id before $id0, after $id1"
check "the restarted prefiller has the engine_id the routers cached" eq "$id1" "$id0"
query_check "$work/query2.out"
for url in "$VR" "$LD"; do
  timeout 120 node "$here/compare.mjs" --a "$url" --b "$CU" --model tiny --lengths 40 --max-tokens 4 --chat 1 \
    --modes plain >"$work/after.out" 2>&1
  check "the next request pair through $url succeeds: $(tail -1 "$work/after.out")" eq "$?" 0
done
check "the restarted prefiller served KV" wait_metric "$PU" kvferry:kv_held_requests 0 5
check "and sent transfers" test "$(metric "$PU" kvferry:kv_transfers_total)" -ge 2
blocks_zero 5 "$PU" "$DU" "$CU"
finish_case prefiller_restart

# --- idle_keepalive_stop --------------------------------------------------------------------------
# Both replays hold idle keep-alive connections to the prefiller now.
t1=$(date +%s.%N)
kill -TERM "$pid_prefill"
for _ in $(seq 100); do kill -0 "$pid_prefill" 2>/dev/null || break; sleep 0.05; done
dt=$(awk -v a="$t1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
echo "  the prefiller stopped in $dt s"
check "a prefiller with idle keep-alive connections stops within 1.5 s" awk -v d="$dt" 'BEGIN { exit !(d < 1.5) }'
finish_case idle_keepalive_stop

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
