#!/usr/bin/env bash
# Prefix caching through `kvferry serve`: the same long prompt twice; the second is served from
# the cache (usage.prompt_tokens_details.cached_tokens, vllm:prefix_cache_hits_total) and the
# output is the same. Prints both TTFTs (figures, not asserted: timing is not a test).
# Usage: serve_prefix_cache_test.sh KVFERRY_BINARY SOURCE_DIR
set -euo pipefail
bin="$1"
src="$2"
dir="$(mktemp -d)"
source "$src/tests/serve_lib.sh"
trap 'stop_server; rm -rf "$dir"' EXIT
"$bin" model make-tiny "$dir/m" --dtype f32 --seed 5 --vocab 267 --hidden 128 --heads 4 --intermediate 256 --layers 2 >/dev/null
start_server "$bin" "$dir/m" "$dir/server.log" --threads 1 --max-model-len 2048 --kv-cache-dtype f32
ids="$(seq 1 1000 | awk '{printf "%s%d", (NR>1?",":""), ($1*7)%250}')"
body="{\"model\":\"tiny\",\"prompt\":[$ids],\"max_tokens\":1,\"temperature\":0,\"return_token_ids\":true}"
q0="$(metric 'vllm:prefix_cache_hits_total')"
first="$(curl -sf -w '\n%{time_total}' "http://127.0.0.1:$PORT/v1/completions" -d "$body")"
second="$(curl -sf -w '\n%{time_total}' "http://127.0.0.1:$PORT/v1/completions" -d "$body")"
t1="$(tail -1 <<<"$first")"; t2="$(tail -1 <<<"$second")"
j1="$(head -1 <<<"$first")"; j2="$(head -1 <<<"$second")"
c1="$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["usage"]["prompt_tokens_details"]["cached_tokens"])' "$j1")"
c2="$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["usage"]["prompt_tokens_details"]["cached_tokens"])' "$j2")"
tok1="$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["choices"][0]["token_ids"])' "$j1")"
tok2="$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["choices"][0]["token_ids"])' "$j2")"
hits="$(metric 'vllm:prefix_cache_hits_total')"
queries="$(metric 'vllm:prefix_cache_queries_total')"
echo "1000-token prompt: TTFT first ${t1}s (cached $c1), second ${t2}s (cached $c2); prefix cache hits $hits of $queries queried tokens"
test "$c1" -eq 0 || { echo "first request already cached?"; exit 1; }
test "$c2" -ge 900 || { echo "second request cached only $c2 tokens"; exit 1; }
test "$tok1" = "$tok2" || { echo "cached prefix changed the output: $tok1 vs $tok2"; exit 1; }
awk -v h="$hits" -v h0="$q0" 'BEGIN { exit !(h - h0 >= 900) }' || { echo "prefix_cache_hits_total $q0 -> $hits"; exit 1; }
# With caching off the same prompt is never a hit.
stop_server
start_server "$bin" "$dir/m" "$dir/server2.log" --threads 1 --max-model-len 2048 --no-enable-prefix-caching
curl -sf "http://127.0.0.1:$PORT/v1/completions" -d "$body" >/dev/null
again="$(curl -sf "http://127.0.0.1:$PORT/v1/completions" -d "$body")"
grep -q '"cached_tokens":0' <<<"$again" || { echo "--no-enable-prefix-caching still cached: $again"; exit 1; }
echo OK
