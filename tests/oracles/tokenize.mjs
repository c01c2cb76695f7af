// Tokenizer oracle: encodes/decodes with the reference HF tokenizers (JS port).
// Usage: node tokenize.mjs IN.json OUT.json
//   IN:  {"tokenizer": "path/tokenizer.json", "config": "path/tokenizer_config.json",
//         "texts_b64": ["...", ...], "bench_file": optional path, "bench_repeats": n}
//   OUT: {"ids": [[...], ...], "decoded_b64": ["...", ...], "bench": {...}}
// Texts travel as base64 bytes; bytes that are not valid UTF-8 decode to U+FFFD (TextDecoder),
// the same rule the C++ tokenizer applies.
import { readFileSync, writeFileSync } from "node:fs";
import { Tokenizer } from "@huggingface/tokenizers";

const [inPath, outPath] = process.argv.slice(2);
const input = JSON.parse(readFileSync(inPath, "utf8"));
const tokenizerJson = JSON.parse(readFileSync(input.tokenizer, "utf8"));
const config = input.config ? JSON.parse(readFileSync(input.config, "utf8")) : {};
const t0 = process.hrtime.bigint();
const tok = new Tokenizer(tokenizerJson, config);
const loadMs = Number(process.hrtime.bigint() - t0) / 1e6;
const decoder = new TextDecoder("utf-8", { fatal: false, ignoreBOM: true });

const out = { ids: [], decoded_b64: [], load_ms: loadMs };
for (const b64 of input.texts_b64 || []) {
  const text = decoder.decode(Buffer.from(b64, "base64"));
  const ids = tok.encode(text, { add_special_tokens: false }).ids;
  out.ids.push(ids);
  const decoded = ids.length ? tok.decode(ids, { skip_special_tokens: false }) : "";
  out.decoded_b64.push(Buffer.from(decoded, "utf8").toString("base64"));
}
if (input.bench_file) {
  const text = readFileSync(input.bench_file, "utf8");
  const repeats = input.bench_repeats || 1;
  let best = Infinity, count = 0;
  for (let r = 0; r < repeats; ++r) {
    const s = process.hrtime.bigint();
    count = tok.encode(text, { add_special_tokens: false }).ids.length;
    best = Math.min(best, Number(process.hrtime.bigint() - s) / 1e9);
  }
  out.bench = { bytes: Buffer.byteLength(text, "utf8"), seconds: best, tokens: count };
}
writeFileSync(outPath, JSON.stringify(out));
