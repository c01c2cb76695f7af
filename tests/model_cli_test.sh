#!/usr/bin/env bash
# Smoke test of the model subcommands of the real binary: make-tiny, bench model --json,
# bench membw --json. Usage: model_cli_test.sh KVFERRY_BINARY
set -euo pipefail
bin="$1"
dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT
"$bin" model make-tiny "$dir/m" --arch qwen3 --seed 3 >/dev/null
for f in config.json generation_config.json model.safetensors tokenizer.json tokenizer_config.json; do
  test -s "$dir/m/$f" || { echo "missing $f"; exit 1; }
done
out="$("$bin" bench model "$dir/m" --prompt-len 20 --gen-len 4 --batch 2 --threads 2 --json)"
echo "$out"
for key in prefill_tok_s decode_tok_s membw_gbps membw_before_gbps membw_after_gbps decode_roofline_tok_s; do
  grep -q "\"$key\":[0-9]" <<<"$out" || { echo "no $key in: $out"; exit 1; }
done
out="$("$bin" bench membw --size 64MiB --reps 2 --json)"
echo "$out"
grep -q '"gbps":[0-9]' <<<"$out"
if "$bin" model make-tiny "$dir/bad" --like qwen9 2>/dev/null; then echo "bad --like accepted"; exit 1; fi
if "$bin" bench model "$dir/nonexistent" --json 2>/dev/null; then echo "missing model accepted"; exit 1; fi
echo OK
