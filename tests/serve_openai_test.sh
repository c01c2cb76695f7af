#!/usr/bin/env bash
# `kvferry serve` driven by the official OpenAI Node client (tests/oracles/node_modules/openai):
# completions and chat, streamed and not, against `kvferry run` for the same token ids.
# Usage: serve_openai_test.sh KVFERRY_BINARY SOURCE_DIR
set -euo pipefail
bin="$1"
src="$2"
dir="$(mktemp -d)"
source "$src/tests/serve_lib.sh"
trap 'stop_server; rm -rf "$dir"' EXIT
if [ ! -d "$src/tests/oracles/node_modules/openai" ]; then
  echo "tests/oracles/node_modules/openai is missing: run scripts/setup"; exit 1
fi
"$bin" model make-tiny "$dir/m" --dtype f32 --seed 5 --vocab 267 >/dev/null
prompt="1,2,3,4,5,6,7,8"
expected="$("$bin" run "$dir/m" --prompt-token-ids "$prompt" --max-tokens 12 --ignore-eos --threads 1 --json 2>/dev/null)"
echo "kvferry run: $expected"
# bf16 KV like `kvferry run` (its default), so the server must reproduce run's tokens exactly.
start_server "$bin" "$dir/m" "$dir/server.log" --threads 1 --kv-cache-dtype bf16 --max-model-len 512
timeout 240 node "$src/tests/serve_openai_test.mjs" "http://127.0.0.1:$PORT" "$src" "[$prompt]" "$expected"
# The load generator against the same server, streamed and not.
for flag in --stream ""; do
  out="$(timeout 120 "$bin" bench serve --url "http://127.0.0.1:$PORT" --concurrency 4 --num-prompts 8 --input-len 16 \
        --output-len 8 --token-id-max 267 --json $flag 2>/dev/null)"
  echo "bench serve $flag: $out"
  for key in req_s output_tok_s ttft_p50_ms ttft_p99_ms tpot_p50_ms tpot_p99_ms; do
    grep -Eq "\"$key\":[0-9]" <<<"$out" || { echo "no $key"; exit 1; }
  done
  grep -q '"failed":0' <<<"$out" || { echo "bench serve had failures"; exit 1; }
  grep -q '"output_tokens":64' <<<"$out" || { echo "bench serve did not get 8 x 8 tokens"; exit 1; }
done
stop_server
echo OK
