// Chat-template oracle with @huggingface/jinja (the JS port used by transformers.js).
// Usage: node render_chat.mjs IN.json OUT.json  (same formats as render_chat.py)
// raise_exception is built into @huggingface/jinja.
import { readFileSync, writeFileSync } from "node:fs";
import { Template } from "@huggingface/jinja";

const [inPath, outPath] = process.argv.slice(2);
const { cases } = JSON.parse(readFileSync(inPath, "utf8"));
const compiled = new Map();
const results = [];
for (const c of cases) {
  try {
    const config = JSON.parse(readFileSync(c.config, "utf8"));
    if (!compiled.has(c.config)) compiled.set(c.config, new Template(config.chat_template));
    const vars = {
      messages: c.messages, tools: c.tools ?? null, documents: null,
      add_generation_prompt: c.add_generation_prompt ?? false,
    };
    for (const name of ["bos_token", "eos_token"]) if (config[name]) vars[name] = config[name];
    Object.assign(vars, c.extra || {});
    results.push({ ok: true, text: compiled.get(c.config).render(vars) });
  } catch (e) {
    results.push({ ok: false, error: String(e && e.message || e) });
  }
}
writeFileSync(outPath, JSON.stringify({ results }));
