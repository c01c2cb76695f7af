#!/usr/bin/env bash
# Data-parallel ranks with real processes on loopback: a prefiller and a decoder each started with
# `--data-parallel-size 2` (two engines, two connector workers behind one API server), `kvferry
# proxy` in front routing over both prefiller ranks, and a colocated one-rank `kvferry serve` as
# the reference. Checks: /query lists both prefiller ranks with their worker addresses; greedy
# answers through the proxy equal the colocated ones token for token (20 prompt lengths,
# streaming and not, and chat); both ranks of both servers did work (per-rank /metrics, label
# engine); X-data-parallel-rank pins a rank (and an out-of-range one is a 400); the prefill leg's
# answer names the rank that holds the KV; KV blocks return to zero everywhere; `kvferry demo
# --data-parallel-size 2` has both prefiller ranks send KV.
#
# Usage: dp_test.sh KVFERRY_BINARY
set -uo pipefail
bin="$(readlink -f "$1")"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/lib.sh"
make_model
p_port=$(pick) d_port=$(pick) x_port=$(pick) c_port=$(pick) boot=$(pick)
p_cfg='{"kv_connector":"MooncakeConnector","kv_role":"kv_producer","kv_connector_extra_config":{"mooncake_protocol":"tcp"}}'
d_cfg='{"kv_connector":"MooncakeConnector","kv_role":"kv_consumer","kv_connector_extra_config":{"mooncake_protocol":"tcp"}}'
dp=(--data-parallel-size 2 --threads 1)

# Inconsistent data-parallel flags are refused before anything starts.
check_refused() {
  local want="$1"; shift
  local out
  out="$(timeout 20 "$bin" serve "$work/m" "${common[@]}" --port 0 "$@" 2>&1)" && die "serve $* started"
  grep -q -- "$want" <<<"$out" || die "serve $*: expected '$want' in: $out"
}
check_refused "--data-parallel-size 0 must be >= 1" --data-parallel-size 0
check_refused "--data-parallel-start-rank 2 must be in 0..1" --data-parallel-size 2 --data-parallel-start-rank 2
check_refused "without --headless" --data-parallel-size 2 --data-parallel-start-rank 1
check_refused "needs --data-parallel-start-rank >= 1" --data-parallel-size 2 --headless
check_refused "exceeds --data-parallel-size 2" --data-parallel-size 2 --data-parallel-size-local 2 \
  --data-parallel-start-rank 1 --headless
check_refused "--data-parallel-rpc-port 0 must be in" --data-parallel-size 2 --data-parallel-rpc-port 0

start colocated -- serve "$work/m" --port "$c_port" "${common[@]}"
start prefill VLLM_MOONCAKE_BOOTSTRAP_PORT="$boot" -- serve "$work/m" --port "$p_port" "${common[@]}" "${dp[@]}" \
  --kv-transfer-config "$p_cfg"
start decode -- serve "$work/m" --port "$d_port" "${common[@]}" "${dp[@]}" --kv-transfer-config "$d_cfg"
P="http://127.0.0.1:$p_port" D="http://127.0.0.1:$d_port" C="http://127.0.0.1:$c_port" X="http://127.0.0.1:$x_port"
for u in "$C" "$P" "$D"; do wait_healthy "$u" 90 || die "$u not healthy within 90 s"; done
start proxy -- proxy --prefill "$P" "$boot" --decode "$D" --port "$x_port"
wait_healthy "$X" 60 || die "proxy not healthy within 60 s"

# /query: both ranks, each with its own engine id and worker address.
query="$(curl -s --max-time 5 "http://127.0.0.1:$boot/query")" || die "GET /query"
echo "/query: $query"
/usr/bin/python3 - "$query" <<'EOF' || die "/query does not list both ranks with worker addresses"
import json, sys
q = json.loads(sys.argv[1])
assert sorted(q) == ["0", "1"], q
ids = {q[r]["engine_id"] for r in q}
addrs = {q[r]["worker_addr"]["0"]["0"] for r in q}
assert len(ids) == 2 and len(addrs) == 2, q
assert all(a.startswith("tcp://") for a in addrs), q
EOF

node "$here/compare.mjs" --a "$X" --b "$C" --model tiny --max-tokens 8 --concurrency 4 --chat 3 | tee "$work/compare.out"
[ "${PIPESTATUS[0]}" = 0 ] || die "proxy and colocated answers differ"

# rank_metric URL NAME RANK → the sample of rank RANK (label engine="RANK").
rank_metric() {
  curl -s --max-time 5 "$1/metrics" |
    awk -v n="$2" -v r="engine=\"$3\"" 'index($1, n "{") == 1 && index($1, r) > 0 { s += $NF } END { printf "%d\n", s }'
}
for r in 0 1; do
  pp=$(rank_metric "$P" vllm:prompt_tokens_total "$r")
  sent=$(rank_metric "$P" kvferry:kv_transfers_total "$r")
  dg=$(rank_metric "$D" vllm:generation_tokens_total "$r")
  got=$(rank_metric "$D" kvferry:kv_transfers_total "$r")
  echo "rank $r: prefiller prompt tokens $pp, KV transfers sent $sent; decoder generated $dg, KV transfers received $got"
  [ "$pp" -gt 0 ] && [ "$sent" -gt 0 ] || die "prefiller rank $r did no work"
  [ "$dg" -gt 0 ] && [ "$got" -gt 0 ] || die "decoder rank $r did no work"
done
# The total (no engine label) is the sum of the ranks.
total=$(curl -s --max-time 5 "$P/metrics" | awk '$1 ~ /^vllm:prompt_tokens_total\{/ && $1 !~ /engine=/ { print $NF }')
sum=$(( $(rank_metric "$P" vllm:prompt_tokens_total 0) + $(rank_metric "$P" vllm:prompt_tokens_total 1) ))
[ "${total%.*}" = "$sum" ] || die "prefiller total prompt tokens $total != sum of ranks $sum"

# X-data-parallel-rank pins a rank: 3 requests on rank 1 of the colocated-mode path.
before=$(rank_metric "$D" vllm:prompt_tokens_total 1)
for i in 1 2 3; do
  code=$(curl -s -o "$work/pin.json" -w '%{http_code}' --max-time 30 -H 'X-data-parallel-rank: 1' \
    -H 'Content-Type: application/json' -d '{"model":"tiny","prompt":"pinned '"$i"'","max_tokens":2}' "$D/v1/completions")
  [ "$code" = 200 ] || die "pinned request: HTTP $code $(cat "$work/pin.json")"
done
after=$(rank_metric "$D" vllm:prompt_tokens_total 1)
[ "$after" -gt "$before" ] || die "X-data-parallel-rank 1 did not run on rank 1 ($before -> $after)"
code=$(curl -s -o "$work/bad.json" -w '%{http_code}' --max-time 10 -H 'X-data-parallel-rank: 2' \
  -H 'Content-Type: application/json' -d '{"model":"tiny","prompt":"x","max_tokens":2}' "$D/v1/completions")
[ "$code" = 400 ] && grep -q 'not a data-parallel rank' "$work/bad.json" || die "rank 2 of 2: HTTP $code $(cat "$work/bad.json")"

# A prefill leg pinned to rank 1 answers with kv_transfer_params naming rank 1's engine; a decode
# leg built from them (no remote_dp_rank: found by engine id) equals the colocated answer.
body='{"model":"tiny","prompt":"the rank that holds the KV","max_tokens":1,"kv_transfer_params":{"do_remote_decode":true,"do_remote_prefill":false,"transfer_id":"xfer-dp-pin"}}'
curl -s --max-time 30 -H 'X-data-parallel-rank: 1' -H 'Content-Type: application/json' -d "$body" \
  "$P/v1/completions" >"$work/prefill.json" || die "pinned prefill leg"
/usr/bin/python3 - "$work/prefill.json" "$query" "http://127.0.0.1:$boot" "$D" "$C" <<'EOF' || die "decode leg from the prefill leg's kv_transfer_params"
import json, sys, urllib.request
p = json.load(open(sys.argv[1]))
q = json.loads(sys.argv[2])
kv = p["kv_transfer_params"]
assert kv["remote_dp_rank"] == 1 and kv["remote_engine_id"] == q["1"]["engine_id"], kv
assert kv["remote_bootstrap_addr"].endswith(":" + sys.argv[3].rsplit(":", 1)[1]), kv
def post(url, body):
    r = urllib.request.Request(url + "/v1/completions", json.dumps(body).encode(), {"Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(r, timeout=60))
params = {"do_remote_prefill": True, "do_remote_decode": False, "transfer_id": kv["transfer_id"],
          "remote_bootstrap_addr": kv["remote_bootstrap_addr"], "remote_engine_id": kv["remote_engine_id"]}
body = {"model": "tiny", "prompt": "the rank that holds the KV", "max_tokens": 6, "temperature": 0}
d = post(sys.argv[4], dict(body, kv_transfer_params=params))
c = post(sys.argv[5], body)
assert d["choices"][0]["text"] == c["choices"][0]["text"], (d, c)
EOF

for u in "$P" "$D" "$C"; do
  wait_metric "$u" kvferry:kv_blocks_used 0 10 || die "$u still has KV blocks in use"
done

# The demo with a two-rank prefiller: every rank served a request and sent its KV.
timeout 120 "$bin" demo --data-parallel-size 2 --max-tokens 4 >"$work/demo.log" 2>&1 || die "demo --data-parallel-size 2"
grep -q -- '--data-parallel-size 2 --kv-transfer-config' "$work/demo.log" || die "demo: prefiller command line"
for r in 0 1; do
  awk -v r="$r" '$1 == "P" && $2 == "rank" && $3 == r && $4 >= 1 { ok = 1 } END { exit !ok }' "$work/demo.log" ||
    die "demo: prefiller rank $r sent no KV: $(cat "$work/demo.log")"
done
echo "1 passed, 0 failed"
