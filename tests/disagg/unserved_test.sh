#!/usr/bin/env bash
# Decode legs for transfers no prefill will serve, with default connector settings except the
# prefiller's unclaimed-pull bound, 12 s here instead of 30 s to keep the test short (routers send
# the decode leg even when the prefill leg was refused or never sent): a prefiller, a decoder with
# kv_load_failure_policy fail, one with recompute, a colocated reference. Each case prints ok/FAIL.
#   refused_prefill_leg   the prefill leg was refused (bad body 400, unknown model 404): the decode
#                         leg ends at once (not after the 12 s bound: the error names the refusal;
#                         8 s allowed for a loaded CI machine) — fail: that error; recompute: 200
#                         with the colocated answer
#   duplicate_transfer_id a second prefill leg with an active transfer_id is refused (409) and
#                         the first one's decode leg still gets its KV
#   never_prefilled       no prefill leg at all: ends within 20 s (the 12 s unclaimed-pull bound)
#   abandoned_load        a client gives up while its decode leg waits for remote KV: the load ends,
#                         the decoder frees its blocks and the prefiller its waiting pull within 5 s
#   decoder_refuses       the decoder refuses a decode leg (wrong remote_engine_id, invalid body)
#                         whose prefill holds KV: the prefiller frees it within 5 s, not 480 s
# After each case KV blocks in use are 0 on every server within 5 s.
#
# Usage: unserved_test.sh KVFERRY_BINARY
set -uo pipefail
bin="$(readlink -f "$1")"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/lib.sh"

make_model
P=$(pick) F=$(pick) R=$(pick) C=$(pick) BOOT=$(pick)
p_cfg='{"kv_connector":"MooncakeConnector","kv_role":"kv_producer"}'
f_cfg='{"kv_connector":"MooncakeConnector","kv_role":"kv_consumer","kv_load_failure_policy":"fail"}'
r_cfg='{"kv_connector":"MooncakeConnector","kv_role":"kv_consumer","kv_load_failure_policy":"recompute"}'
start colocated -- serve "$work/m" --port "$C" "${common[@]}"
start prefill VLLM_MOONCAKE_BOOTSTRAP_PORT="$BOOT" KVFERRY_UNCLAIMED_PULL_TIMEOUT=12 -- serve "$work/m" --port "$P" "${common[@]}" --kv-transfer-config "$p_cfg"
start dfail -- serve "$work/m" --port "$F" "${common[@]}" --kv-transfer-config "$f_cfg"
start drec -- serve "$work/m" --port "$R" "${common[@]}" --kv-transfer-config "$r_cfg"
PU="http://127.0.0.1:$P" FU="http://127.0.0.1:$F" RU="http://127.0.0.1:$R" CU="http://127.0.0.1:$C"
for u in "$CU" "$PU" "$FU" "$RU"; do wait_healthy "$u" 60 || die "$u not healthy within 60 s"; done
ENGINE=$(curl -s --max-time 5 "http://127.0.0.1:$BOOT/query" | python3 -c 'import json,sys; print(json.load(sys.stdin)["0"]["engine_id"])')

passed=0 failed=0
case_ok=1
check() { if ! "${@:2}"; then echo "  not: $1"; case_ok=0; fi; }
finish_case() {
  local u
  for u in "$PU" "$FU" "$RU" "$CU"; do check "$u KV blocks in use back to 0 within 5 s" wait_metric "$u" kvferry:kv_blocks_used 0 5; done
  if [ "$case_ok" = 1 ]; then echo "ok $1"; passed=$((passed + 1))
  else echo "FAIL $1"; failed=$((failed + 1)); dump_logs; fi
  case_ok=1
}
eq() { [ "$1" = "$2" ] || { echo "  '$1' != '$2'"; return 1; }; }
lt() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a < b) }' || { echo "  $1 >= $2"; return 1; }; }
now() { date +%s.%N; }
since() { awk -v t0="$1" -v t1="$(now)" 'BEGIN { printf "%.2f", t1 - t0 }'; }
# post URL BODY OUT [MAX_TIME] → prints the HTTP status; the body goes to OUT
post() {
  curl -s -N -o "$3" -w '%{http_code}' --max-time "${4:-60}" -H 'Content-Type: application/json' -d "$2" \
    "$1/v1/completions"
}
text_of() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["choices"][0]["text"])' "$1"; }
PROMPT="the harbour master counts the ferries that leave the island before the morning tide"
plain='"model":"tiny","prompt":"'"$PROMPT"'","max_tokens":6,"temperature":0'
s=$(post "$CU" "{$plain}" "$work/ref.json"); [ "$s" = 200 ] || die "colocated answered $s"
REF=$(text_of "$work/ref.json")
pleg() {  # pleg TRANSFER_ID [EXTRA_JSON]: a prefill leg body
  echo '{'"$plain"',"max_tokens":1'"${2:+,$2}"',"kv_transfer_params":{"do_remote_decode":true,"do_remote_prefill":false,"transfer_id":"'"$1"'"}}'
}
dleg() {  # dleg TRANSFER_ID [ENGINE_ID] [EXTRA_JSON]: a decode leg body
  echo '{'"$plain"''"${3:+,$3}"',"kv_transfer_params":{"do_remote_decode":false,"do_remote_prefill":true,"transfer_id":"'"$1"'","remote_bootstrap_addr":"http://127.0.0.1:'"$BOOT"'","remote_engine_id":"'"${2:-$ENGINE}"'"}}'
}
# expect_fail OUT STATUS SECONDS LIMIT WHAT: the fail-policy decoder's documented outcome
expect_fail() {
  check "fail policy: an error status (got $2)" test "$2" -ge 400
  check "fail policy: ended in $3 s, under $4 s" lt "$3" "$4"
  check "fail policy: the error says $5: $(head -c 300 "$1")" grep -q "$5" "$1"
}
expect_recompute() {  # OUT STATUS SECONDS LIMIT
  check "recompute policy: 200 (got $2): $(head -c 200 "$1")" eq "$2" 200
  check "recompute policy: ended in $3 s, under $4 s" lt "$3" "$4"
  [ "$2" = 200 ] && check "recompute policy: the colocated answer" eq "$(text_of "$1")" "$REF"
}

# --- refused_prefill_leg --------------------------------------------------------------------------
s=$(post "$PU" "$(pleg xfer-refused-1 '"temperature":-1')" "$work/p1.json")
check "a prefill leg with a bad body is refused with 400 (got $s)" eq "$s" 400
s=$(post "$PU" "$(pleg xfer-refused-2 '"model":"no-such-model"')" "$work/p2.json")
check "a prefill leg for an unknown model is refused with 404 (got $s)" eq "$s" 404
t=$(now); s=$(post "$FU" "$(dleg xfer-refused-1)" "$work/f1.json"); dt=$(since "$t")
echo "  fail decoder: $s in $dt s: $(head -c 200 "$work/f1.json")"
expect_fail "$work/f1.json" "$s" "$dt" 8 "refused"
t=$(now); s=$(post "$RU" "$(dleg xfer-refused-2)" "$work/r1.json"); dt=$(since "$t")
echo "  recompute decoder: $s in $dt s"
expect_recompute "$work/r1.json" "$s" "$dt" 8
finish_case refused_prefill_leg

# --- duplicate_transfer_id -------------------------------------------------------------------------
tr0=$(metric "$FU" kvferry:kv_transfers_total)
s=$(post "$PU" "$(pleg xfer-dup-a)" "$work/pa.json")
check "the first prefill leg is served (got $s)" eq "$s" 200
s=$(post "$PU" "$(pleg xfer-dup-a)" "$work/pb.json")
check "a second prefill leg with the same transfer_id is refused with 409 (got $s)" eq "$s" 409
t=$(now); s=$(post "$FU" "$(dleg xfer-dup-a)" "$work/fa.json"); dt=$(since "$t")
check "the first one's decode leg still works (got $s): $(head -c 200 "$work/fa.json")" eq "$s" 200
[ "$s" = 200 ] && check "with the colocated answer" eq "$(text_of "$work/fa.json")" "$REF"
check "and got its KV from the prefiller" eq "$(metric "$FU" kvferry:kv_transfers_total)" $((tr0 + 1))
finish_case duplicate_transfer_id

# --- never_prefilled ---------------------------------------------------------------------------------
t=$(now)
( s=$(post "$FU" "$(dleg xfer-never-f)" "$work/fn.json" 60); echo "$s $(since "$t")" >"$work/fn.res" ) &
fpid=$!
( s=$(post "$RU" "$(dleg xfer-never-r)" "$work/rn.json" 60); echo "$s $(since "$t")" >"$work/rn.res" ) &
rpid=$!
wait "$fpid" "$rpid"
read -r fs fdt <"$work/fn.res"
read -r rs rdt <"$work/rn.res"
echo "  fail decoder: $fs in $fdt s: $(head -c 300 "$work/fn.json")"
echo "  recompute decoder: $rs in $rdt s"
expect_fail "$work/fn.json" "$fs" "$fdt" 20 "no prefill request"
expect_recompute "$work/rn.json" "$rs" "$rdt" 20
check "nothing waits on the prefiller" wait_metric "$PU" kvferry:kv_waiting_pulls 0 5
finish_case never_prefilled

# --- abandoned_load --------------------------------------------------------------------------------
for u in "$FU" "$RU"; do
  body=$(dleg "xfer-abandon-${u##*:}" "" '"stream":true')
  curl -s -N -o /dev/null --max-time 2 -H 'Content-Type: application/json' -d "$body" "$u/v1/completions"
  t=$(now)
  check "$u: the abandoned load ends" wait_metric "$u" kvferry:kv_pending_loads 0 5
  check "the prefiller's waiting pull ends" wait_metric "$PU" kvferry:kv_waiting_pulls 0 5
  check "$u frees its blocks" wait_metric "$u" kvferry:kv_blocks_used 0 5
  echo "  $u: cleaned up in $(since "$t") s after the client left"
done
finish_case abandoned_load

# --- decoder_refuses -----------------------------------------------------------------------------------
s=$(post "$PU" "$(pleg xfer-mismatch)" "$work/pm.json")
check "prefill leg served (got $s)" eq "$s" 200
check "its KV is held" eq "$(metric "$PU" kvferry:kv_held_requests)" 1
s=$(post "$FU" "$(dleg xfer-mismatch 00000000-0000-4000-8000-000000000000)" "$work/fm.json")
echo "  decoder with a wrong remote_engine_id: $s $(head -c 200 "$work/fm.json")"
check "the decoder refuses the wrong engine (got $s)" test "$s" -ge 400
check "the prefiller frees the KV at once" wait_metric "$PU" kvferry:kv_held_requests 0 5
s=$(post "$PU" "$(pleg xfer-invalid)" "$work/pi.json")
check "prefill leg served (got $s)" eq "$s" 200
s=$(post "$FU" "$(dleg xfer-invalid "" '"top_p":7')" "$work/fi.json")
check "the decoder refuses an invalid decode leg with 400 (got $s)" eq "$s" 400
check "the prefiller frees the KV at once" wait_metric "$PU" kvferry:kv_held_requests 0 5
finish_case decoder_refuses

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
