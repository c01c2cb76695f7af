#!/usr/bin/env bash
# Two prefillers (each with its own bootstrap port) and two decoders behind one `kvferry proxy`,
# plus a colocated `kvferry serve` as the reference. 32 concurrent greedy streaming requests with
# different prompts go through the proxy (official `openai` client); each answer must equal the
# reference's token for token. Afterwards every instance must have taken work (prefillers sent KV
# transfers, decoders received them) and every server's KV blocks in use must be back to zero.
#
# Usage: two_by_two_test.sh KVFERRY_BINARY
set -uo pipefail
bin="$(readlink -f "$1")"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/lib.sh"

make_model
p1=$(pick) p2=$(pick) d1=$(pick) d2=$(pick) c=$(pick) x=$(pick) b1=$(pick) b2=$(pick)
p_cfg='{"kv_connector":"MooncakeConnector","kv_role":"kv_producer","kv_connector_extra_config":{"mooncake_protocol":"tcp"}}'
d_cfg='{"kv_connector":"MooncakeConnector","kv_role":"kv_consumer","kv_connector_extra_config":{"mooncake_protocol":"tcp"}}'
start colocated -- serve "$work/m" --port "$c" "${common[@]}"
start prefill1 VLLM_MOONCAKE_BOOTSTRAP_PORT="$b1" -- serve "$work/m" --port "$p1" "${common[@]}" --kv-transfer-config "$p_cfg"
start prefill2 VLLM_MOONCAKE_BOOTSTRAP_PORT="$b2" -- serve "$work/m" --port "$p2" "${common[@]}" --kv-transfer-config "$p_cfg"
start decode1 -- serve "$work/m" --port "$d1" "${common[@]}" --kv-transfer-config "$d_cfg"
start decode2 -- serve "$work/m" --port "$d2" "${common[@]}" --kv-transfer-config "$d_cfg"
start proxy -- proxy --prefill "http://127.0.0.1:$p1" "$b1" --prefill "http://127.0.0.1:$p2" "$b2" \
  --decode "http://127.0.0.1:$d1" --decode "http://127.0.0.1:$d2" --port "$x"

servers=("http://127.0.0.1:$p1" "http://127.0.0.1:$p2" "http://127.0.0.1:$d1" "http://127.0.0.1:$d2"
         "http://127.0.0.1:$c")
for url in "${servers[@]}" "http://127.0.0.1:$x"; do
  wait_healthy "$url" 60 || die "$url not healthy within 60 s"
done
# The proxy answers /health once one prefiller and one decoder are up; this test needs all four
# in its rotation before it sends anything.
wait_metric "http://127.0.0.1:$x" kvferry_proxy_instance_healthy 4 30 || die "the proxy does not see all four instances"

# 32 prompts of 1 to ~1,500 tokens, all different, all streamed at once.
lengths=$(seq 1 32 | awk '{ printf "%s%d", (NR > 1 ? "," : ""), ($1 * 47) % 1531 + 1 }')
t0=$(date +%s.%N)
node "$here/compare.mjs" --a "http://127.0.0.1:$x" --b "http://127.0.0.1:$c" --model tiny \
  --lengths "$lengths" --modes stream --chat 0 --max-tokens 16 --concurrency 32 --seed 7 \
  --timeout-ms 60000 >"$work/compare.out"
rc=$?
grep -v '^ok' "$work/compare.out"
[ "$rc" = 0 ] || die "proxy and colocated answers differ"
echo "32 concurrent streams: $(awk -v t0="$t0" -v t1="$(date +%s.%N)" 'BEGIN { printf "%.1f", t1 - t0 }') s"

for u in "http://127.0.0.1:$p1" "http://127.0.0.1:$p2"; do
  t=$(metric "$u" kvferry:kv_transfers_total)
  echo "prefiller $u: $t transfers sent"
  [ "$t" -gt 0 ] || die "prefiller $u took no work"
done
for u in "http://127.0.0.1:$d1" "http://127.0.0.1:$d2"; do
  t=$(metric "$u" kvferry:kv_transfers_total)
  g=$(metric "$u" vllm:generation_tokens_total)
  echo "decoder $u: $t transfers received, $g tokens generated"
  { [ "$t" -gt 0 ] && [ "$g" -gt 0 ]; } || die "decoder $u took no work"
done
f=0
for u in "${servers[@]}"; do
  f=$((f + $(metric "$u" kvferry:kv_transfer_failed_total) + $(metric "$u" kvferry:kv_receive_failed_total)))
done
[ "$f" = 0 ] || die "$f failed transfers/receives"
for u in "${servers[@]}"; do
  wait_metric "$u" kvferry:kv_blocks_used 0 10 || die "$u still has KV blocks in use"
done
echo "1 passed, 0 failed"
