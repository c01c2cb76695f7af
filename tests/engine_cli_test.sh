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
grep -Eq '^\{"finish_reason":"length","num_prompt_tokens":5,"token_ids":\[[0-9]+(,[0-9]+){5}\]\}$' <<<"$out" || { echo "bad json: $out"; exit 1; }
# Greedy and seeded sampling are reproducible.
again="$("$bin" run "$dir/m" --prompt-token-ids 100,7,300,45,200 --max-tokens 6 --ignore-eos --threads 1 --json 2>/dev/null)"
test "$out" = "$again" || { echo "greedy differs: $again"; exit 1; }
s1="$("$bin" run "$dir/m" --prompt-token-ids 1,2,3 --max-tokens 8 --temperature 1 --seed 9 --threads 1 2>/dev/null)"
s2="$("$bin" run "$dir/m" --prompt-token-ids 1,2,3 --max-tokens 8 --temperature 1 --seed 9 --threads 1 2>/dev/null)"
test "$s1" = "$s2" || { echo "seeded runs differ: $s1 / $s2"; exit 1; }
# A text prompt is the same request as its token ids; --chat goes through the chat template.
ids="$("$bin" tokenize "$dir/m" "The ferry leaves the harbour")"
t1="$("$bin" run "$dir/m" --prompt "The ferry leaves the harbour" --max-tokens 6 --ignore-eos --threads 1 --json 2>/dev/null)"
t2="$("$bin" run "$dir/m" --prompt-token-ids "$ids" --max-tokens 6 --ignore-eos --threads 1 --json 2>/dev/null)"
test "$(sed 's/,"text":"[^"]*"//' <<<"$t1")" = "$t2" || { echo "text prompt differs from its ids: $t1 / $t2"; exit 1; }
grep -q '"text":' <<<"$t1" || { echo "no text in: $t1"; exit 1; }
streamed="$("$bin" run "$dir/m" --prompt "The ferry leaves the harbour" --max-tokens 6 --ignore-eos --threads 1 2>/dev/null)"
want="$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["text"])' "$t1")"
test "$streamed" = "$want" || { echo "streamed text differs: [$streamed] vs [$want]"; exit 1; }
chat_ids="$("$bin" tokenize "$dir/m" --chat '[{"role":"user","content":"Hello"}]' --chat-ids)"
c1="$("$bin" run "$dir/m" --prompt Hello --chat --max-tokens 5 --ignore-eos --threads 1 --json 2>/dev/null)"
c2="$("$bin" run "$dir/m" --prompt-token-ids "$chat_ids" --max-tokens 5 --ignore-eos --threads 1 --json 2>/dev/null)"
test "$(sed 's/,"text":"[^"]*"//' <<<"$c1")" = "$c2" || { echo "--chat differs from the rendered ids: $c1 / $c2"; exit 1; }
if "$bin" run "$dir/m" 2>/dev/null; then echo "missing prompt accepted"; exit 1; fi
if "$bin" run "$dir/m" --prompt-token-ids 1,99999 2>/dev/null; then echo "bad token accepted"; exit 1; fi
if "$bin" run "$dir/nonexistent" --prompt-token-ids 1 2>/dev/null; then echo "missing model accepted"; exit 1; fi
out="$("$bin" bench engine "$dir/m" --num-prompts 8 --input-len 20 --output-len 8 --concurrency 4 --threads 1 --json 2>/dev/null)"
echo "$out"
grep -q '"output_tok_per_s":[0-9]' <<<"$out" || { echo "no output_tok_per_s in: $out"; exit 1; }
grep -q '"finished":8' <<<"$out" || { echo "not all finished: $out"; exit 1; }
echo OK
