// Drives `kvferry serve` with the official OpenAI Node client. Args: BASE_URL SOURCE_DIR
// PROMPT_IDS_JSON RUN_JSON (the output of `kvferry run --json` for PROMPT_IDS, 12 tokens).
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import path from 'node:path';

const [base, src, promptJson, runJson] = process.argv.slice(2);
const require = createRequire(path.join(src, 'tests/oracles/package.json'));
const { default: OpenAI } = await import(require.resolve('openai'));
const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: 'unused', maxRetries: 0, timeout: 60000 });
const prompt = JSON.parse(promptJson);
const expected = JSON.parse(runJson);
const model = 'tiny';
let checks = 0;
const ok = (what) => { checks++; console.log(`ok ${checks} - ${what}`); };

async function post(p, body) {
  const r = await fetch(`${base}${p}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  return { status: r.status, body: await r.json() };
}

// Streams a completion; returns { text, finish, usage, chunks }.
async function streamCompletion(params) {
  const stream = await client.completions.create({ ...params, stream: true, stream_options: { include_usage: true } });
  let text = '', finish = null, usage = null, chunks = 0;
  for await (const c of stream) {
    chunks++;
    if (c.usage) usage = c.usage;
    for (const ch of c.choices) {
      text += ch.text;
      if (ch.finish_reason) finish = ch.finish_reason;
    }
  }
  return { text, finish, usage, chunks };
}

async function streamChat(params) {
  const stream = await client.chat.completions.create({ ...params, stream: true, stream_options: { include_usage: true } });
  let text = '', finish = null, usage = null, role = null;
  for await (const c of stream) {
    if (c.usage) usage = c.usage;
    for (const ch of c.choices) {
      if (ch.delta.role) role = ch.delta.role;
      text += ch.delta.content ?? '';
      if (ch.finish_reason) finish = ch.finish_reason;
    }
  }
  return { text, finish, usage, role };
}

// /v1/models
const models = await client.models.list();
assert.deepEqual(models.data.map((m) => m.id), [model]);
ok('/v1/models lists the served name');

// Completions, token-id prompt: the same tokens as `kvferry run`.
const greedy = { model, prompt, max_tokens: 12, temperature: 0, ignore_eos: true, skip_special_tokens: false };
const full = await client.completions.create({ ...greedy, return_token_ids: true });
assert.deepEqual(full.choices[0].token_ids, expected.token_ids, 'server tokens differ from kvferry run');
assert.equal(full.choices[0].finish_reason, 'length');
assert.deepEqual([full.usage.prompt_tokens, full.usage.completion_tokens, full.usage.total_tokens], [prompt.length, 12, prompt.length + 12]);
assert.match(full.id, /^cmpl-[0-9a-f]{32}$/);
const runText = (await post('/detokenize', { tokens: expected.token_ids })).body.prompt;
assert.equal(full.choices[0].text, runText);
ok('non-streamed completion equals kvferry run (tokens and text), usage right');

const streamed = await streamCompletion(greedy);
assert.equal(streamed.text, full.choices[0].text);
assert.equal(streamed.finish, 'length');
assert.deepEqual([streamed.usage.prompt_tokens, streamed.usage.completion_tokens], [prompt.length, 12]);
assert.ok(streamed.chunks >= 3, `only ${streamed.chunks} chunks: not streamed`);
ok('streamed completion equals the non-streamed one; usage chunk right');

// Text prompt: tokenized like /tokenize does.
const textPrompt = 'The quick brown fox jumps over the lazy dog';
const tok = await post('/tokenize', { model, prompt: textPrompt });
assert.equal(tok.status, 200);
assert.equal(tok.body.count, tok.body.tokens.length);
const detok = await post('/detokenize', { model, tokens: tok.body.tokens });
assert.equal(detok.body.prompt, textPrompt);
ok('/tokenize and /detokenize round trip');
const byText = await client.completions.create({ model, prompt: textPrompt, max_tokens: 6, temperature: 0, ignore_eos: true, return_token_ids: true });
const byIds = await client.completions.create({ model, prompt: tok.body.tokens, max_tokens: 6, temperature: 0, ignore_eos: true, return_token_ids: true });
assert.equal(byText.usage.prompt_tokens, tok.body.count);
assert.deepEqual(byText.choices[0].token_ids, byIds.choices[0].token_ids);
ok('text prompt equals its token ids');

// Chat, streamed and not.
const messages = [{ role: 'system', content: 'You are terse.' }, { role: 'user', content: 'Say something.' }];
const chatTok = await post('/tokenize', { model, messages });
const chat = await client.chat.completions.create({ model, messages, max_tokens: 10, temperature: 0, ignore_eos: true });
assert.equal(chat.object, 'chat.completion');
assert.equal(chat.choices[0].message.role, 'assistant');
assert.equal(chat.usage.prompt_tokens, chatTok.body.count);
assert.equal(chat.usage.completion_tokens, 10);
assert.match(chat.id, /^chatcmpl-[0-9a-f]{32}$/);
const chatStream = await streamChat({ model, messages, max_tokens: 10, temperature: 0, ignore_eos: true });
assert.equal(chatStream.role, 'assistant');
assert.equal(chatStream.text, chat.choices[0].message.content);
assert.equal(chatStream.finish, 'length');
assert.equal(chatStream.usage.completion_tokens, 10);
ok('chat completion streamed equals non-streamed; usage matches /tokenize');

// Stop strings: cut at the first occurrence, streamed and not.
const long = await client.completions.create({ model, prompt, max_tokens: 40, temperature: 0, ignore_eos: true, skip_special_tokens: false });
const longText = long.choices[0].text;
const chars = [...longText];
assert.ok(chars.length >= 6, `greedy text too short for a stop test: ${JSON.stringify(longText)}`);
const stopStr = chars.slice(3, 5).join('');
const cut = longText.slice(0, longText.indexOf(stopStr));
for (const stream of [false, true]) {
  const p = { model, prompt, max_tokens: 40, temperature: 0, ignore_eos: true, skip_special_tokens: false, stop: [stopStr] };
  const r = stream ? await streamCompletion(p) : await client.completions.create(p).then((x) => ({ text: x.choices[0].text, finish: x.choices[0].finish_reason }));
  assert.equal(r.text, cut, `stop=${JSON.stringify(stopStr)} stream=${stream}`);
  assert.equal(r.finish, 'stop');
}
ok('stop strings cut the text (streamed and not)');

// n > 1 greedy: every choice equals the n = 1 answer; logprobs shape.
const many = await client.completions.create({ ...greedy, n: 3, logprobs: 2 });
assert.equal(many.choices.length, 3);
for (const c of many.choices) {
  assert.equal(c.text, full.choices[0].text);
  assert.equal(c.logprobs.tokens.length, 12);
  assert.equal(c.logprobs.token_logprobs.length, 12);
  for (const t of c.logprobs.top_logprobs) assert.ok(Object.keys(t).length >= 1 && Object.keys(t).length <= 2);
  for (const lp of c.logprobs.token_logprobs) assert.ok(lp <= 0);
}
assert.equal(many.usage.completion_tokens, 36);
ok('n=3 gives three equal greedy choices with logprobs');

// Seeded sampling is reproducible.
const seeded = { model, prompt, max_tokens: 12, temperature: 1, seed: 42, return_token_ids: true };
const s1 = await client.completions.create(seeded);
const s2 = await client.completions.create(seeded);
assert.deepEqual(s1.choices[0].token_ids, s2.choices[0].token_ids);
ok('same seed, same sample');

// 32 concurrent streams each produce what they produce alone.
const prompts = Array.from({ length: 32 }, (_, i) => [10 + i, 20 + (i * 7) % 200, 30 + (i * 13) % 200, 40 + i, 50, 60 + i]);
const alone = [];
for (const p of prompts) alone.push((await streamCompletion({ model, prompt: p, max_tokens: 16, temperature: 0, ignore_eos: true })).text);
const together = await Promise.all(prompts.map((p) => streamCompletion({ model, prompt: p, max_tokens: 16, temperature: 0, ignore_eos: true })));
for (let i = 0; i < prompts.length; i++) {
  assert.equal(together[i].text, alone[i], `stream ${i} differs under concurrency`);
  assert.equal(together[i].usage.completion_tokens, 16);
}
ok('32 concurrent streams equal their solo runs');

// Errors come back as OpenAI errors through the client.
await assert.rejects(client.completions.create({ model: 'nope', prompt: 'x' }), (e) => e.status === 404 && /nope/.test(e.message));
await assert.rejects(client.completions.create({ model, prompt: Array(600).fill(5) }), (e) => e.status === 400 && /maximum context length/.test(e.message));
ok('unknown model 404, prompt over max-model-len 400');

// /metrics carries every metric the dashboards need.
const metrics = await (await fetch(`${base}/metrics`)).text();
for (const name of ['vllm:num_requests_running', 'vllm:num_requests_waiting', 'vllm:kv_cache_usage_perc',
  'vllm:prefix_cache_queries', 'vllm:prefix_cache_hits', 'vllm:time_to_first_token_seconds_bucket',
  'vllm:inter_token_latency_seconds_bucket', 'vllm:prompt_tokens_total', 'vllm:generation_tokens_total',
  'kvferry:kv_blocks_used', 'kvferry:kv_blocks_total']) {
  assert.match(metrics, new RegExp(`^${name}[_a-z]*\\{model_name="tiny"`, 'm'), `no ${name} in /metrics`);
}
const gen = Number(metrics.match(/^vllm:generation_tokens_total\{[^}]*\} (\d+)/m)[1]);
assert.ok(gen >= 12 * 5 + 32 * 16, `generation_tokens_total ${gen} too small`);
const ttftCount = Number(metrics.match(/^vllm:time_to_first_token_seconds_count\{[^}]*\} (\d+)/m)[1]);
assert.ok(ttftCount >= 64, `TTFT histogram count ${ttftCount}`);
ok('/metrics has every metric, counts plausible');
console.log(`all ${checks} checks passed`);
