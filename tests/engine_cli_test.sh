#!/usr/bin/env bash
# Smoke test of `kvferry run` and `kvferry bench engine` on a tiny model.
# Usage: engine_cli_test.sh KVFERRY_BINARY
set -euo pipefail
bin="$1"
dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT
"$bin" model make-tiny "$dir/m" --dtype f32 --seed 5 >/dev/null
out="$("$bin" run "$dir/m" --prompt-token-ids 100,7,300,45,200 --max-tokens 6 --ignore-eos --threads 1 --json 2>/dev/null)"
echo "$out"
grep -Eq '^\{"finish_reason":"length","token_ids":\[[0-9]+(,[0-9]+){5}\]\}$' <<<"$out" || { echo "bad json: $out"; exit 1; }
# Greedy and seeded sampling are reproducible.
again="$("$bin" run "$dir/m" --prompt-token-ids 100,7,300,45,200 --max-tokens 6 --ignore-eos --threads 1 --json 2>/dev/null)"
test "$out" = "$again" || { echo "greedy differs: $again"; exit 1; }
s1="$("$bin" run "$dir/m" --prompt-token-ids 1,2,3 --max-tokens 8 --temperature 1 --seed 9 --threads 1 2>/dev/null)"
s2="$("$bin" run "$dir/m" --prompt-token-ids 1,2,3 --max-tokens 8 --temperature 1 --seed 9 --threads 1 2>/dev/null)"
test "$s1" = "$s2" || { echo "seeded runs differ: $s1 / $s2"; exit 1; }
if "$bin" run "$dir/m" --prompt-token-ids 1,99999 2>/dev/null; then echo "bad token accepted"; exit 1; fi
if "$bin" run "$dir/nonexistent" --prompt-token-ids 1 2>/dev/null; then echo "missing model accepted"; exit 1; fi
out="$("$bin" bench engine "$dir/m" --num-prompts 8 --input-len 20 --output-len 8 --concurrency 4 --threads 1 --json 2>/dev/null)"
echo "$out"
grep -q '"output_tok_per_s":[0-9]' <<<"$out" || { echo "no output_tok_per_s in: $out"; exit 1; }
grep -q '"finished":8' <<<"$out" || { echo "not all finished: $out"; exit 1; }
echo OK
