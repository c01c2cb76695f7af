// Hostile and malformed traffic against `kvferry serve` (started with --api-key secret and
// --max-model-len 256). Every request must get a clean 4xx/5xx or be cleanly dropped; the server
// must keep serving; afterwards no KV block may stay in use. Args: BASE_URL
import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';

const base = new URL(process.argv[2]);
const KEY = 'secret';
const auth = { authorization: `Bearer ${KEY}` };
let hostile = 0;

// One request on a fresh connection; resolves { status, body }. Bounded by a timeout.
function request(method, path, body, headers = auth, timeoutMs = 30000) {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? undefined : typeof body === 'string' || Buffer.isBuffer(body) ? body : JSON.stringify(body);
    const req = http.request({ host: base.hostname, port: base.port, method, path, agent: false,
      headers: { 'content-type': 'application/json', ...headers, ...(data !== undefined ? { 'content-length': Buffer.byteLength(data) } : {}) } }, (res) => {
      const parts = [];
      res.on('data', (c) => parts.push(c));
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(parts).toString() }));
      res.on('error', reject);
    });
    req.setTimeout(timeoutMs, () => req.destroy(new Error(`timeout on ${method} ${path}`)));
    req.on('error', reject);
    if (data !== undefined) req.write(data);
    req.end();
  });
}

function expectError(r, statuses, what) {
  hostile++;
  assert.ok(statuses.includes(r.status), `${what}: status ${r.status} not in ${statuses}: ${r.body.slice(0, 200)}`);
  if (r.status !== 413) {
    const j = JSON.parse(r.body);
    assert.equal(typeof j.error.message, 'string', `${what}: no error.message`);
    assert.equal(j.error.code, r.status);
  }
}

async function healthy() {
  const h = await request('GET', '/health', undefined, {});
  assert.equal(h.status, 200);
  const r = await request('POST', '/v1/completions', { model: 'tiny', prompt: [1, 2, 3], max_tokens: 3, temperature: 0, ignore_eos: true });
  assert.equal(r.status, 200, `a good request failed: ${r.body}`);
  assert.equal(JSON.parse(r.body).usage.completion_tokens, 3);
}

async function metric(name) {
  const t = (await request('GET', '/metrics', undefined, {})).body;
  const m = t.match(new RegExp(`^${name}\\{[^}]*\\} ([0-9.e+-]+)`, 'm'));
  assert.ok(m, `no ${name}`);
  return Number(m[1]);
}

const good = { model: 'tiny', prompt: [5, 6, 7], max_tokens: 4 };
// 1. Bodies that are not JSON objects.
const badJson = ['', '{', '}', '[', '{"prompt":', 'null', '42', '"str"', '[]', 'true', '{"a":1}}', '\u0000\u0001',
  '{"prompt": [1,2,}', "{'prompt': 'x'}", '{"prompt": NaN}', '{"prompt": Infinity}', '{"prompt":"x",}', '\xff\xfe{}',
  '{"prompt":"\\ud800"', '{"model":"tiny","prompt":[1,2,3],"max_tokens":'.padEnd(200, ' ')];
for (const b of badJson) {
  for (const p of ['/v1/completions', '/v1/chat/completions', '/tokenize', '/detokenize']) expectError(await request('POST', p, b), [400], `bad json ${JSON.stringify(b)}`);
}
await healthy();

// 2. Wrong types and out-of-range values.
const bad = [
  { prompt: 5 }, { prompt: {} }, { prompt: true }, { prompt: [] }, { prompt: '' }, { prompt: [[1], [2]] }, { prompt: ['a', 'b'] },
  { prompt: [1, 'x'] }, { prompt: [-1] }, { prompt: [1e9] }, { prompt: [2 ** 31] }, { prompt: [1.5] },
  { ...good, max_tokens: 'x' }, { ...good, max_tokens: -1 }, { ...good, max_tokens: 0 }, { ...good, max_tokens: 1e12 },
  { ...good, max_tokens: 2 ** 31 - 1 }, { ...good, max_tokens: 1.5 }, { ...good, temperature: -1 }, { ...good, temperature: 'hot' },
  { ...good, temperature: 1e9 }, { ...good, top_p: 0 }, { ...good, top_p: 2 }, { ...good, top_k: -2 }, { ...good, min_p: 3 },
  { ...good, n: 0 }, { ...good, n: -5 }, { ...good, n: 1000 }, { ...good, n: 'two' }, { ...good, logprobs: 99 }, { ...good, logprobs: -3 },
  { ...good, stop: 5 }, { ...good, stop: [1, 2] }, { ...good, stop: [''] }, { ...good, seed: 'x' }, { ...good, seed: 1.5 },
  { ...good, stream: 'yes' }, { ...good, stream_options: { include_usage: true } }, { ...good, stream: true, stream_options: 3 },
  { ...good, presence_penalty: 5 }, { ...good, frequency_penalty: -9 }, { ...good, repetition_penalty: 0 },
  { ...good, min_tokens: 10, max_tokens: 2 }, { ...good, echo: true }, { ...good, suffix: 'x' }, { ...good, stop_token_ids: [-4] },
  { ...good, kv_transfer_params: 'x' }, { ...good, kv_transfer_params: { do_remote_decode: true, transfer_id: 't' } },
  { ...good, kv_transfer_params: { do_remote_prefill: true, transfer_id: 't', remote_bootstrap_addr: 'http://x:1', remote_engine_id: 'e' } },
  { ...good, model: 5 }, { prompt: Array(300).fill(7) }, { prompt: 'word '.repeat(400) }, { ...good, prompt: Array(250).fill(7), max_tokens: 10 },
];
for (const b of bad) expectError(await request('POST', '/v1/completions', b), [400], `bad ${JSON.stringify(b).slice(0, 80)}`);
const badChat = [{ messages: 'x' }, { messages: [] }, { messages: [{}] }, { messages: [{ role: 5 }] }, { messages: [{ role: 'user', content: 5 }] },
  { messages: [{ role: 'user', content: [{ type: 'image_url' }] }] }, { messages: [{ role: 'user', content: 'hi' }], logprobs: 'yes' },
  { messages: [{ role: 'user', content: 'hi' }], top_logprobs: 3 }, { messages: [{ role: 'user', content: 'x'.repeat(2000) }] },
  { messages: [{ role: 'user', content: 'hi' }], tools: 'x' }, { messages: [{ role: 'user', content: 'hi' }], max_completion_tokens: -1 }];
for (const b of badChat) expectError(await request('POST', '/v1/chat/completions', b), [400], `bad chat ${JSON.stringify(b).slice(0, 80)}`);
const overLimit = await request('POST', '/v1/completions', { prompt: Array(300).fill(7) });
assert.match(JSON.parse(overLimit.body).error.message, /maximum context length is 256/);
await healthy();

// 3. Unknown model, authentication, routes, methods.
for (let i = 0; i < 10; i++) {
  expectError(await request('POST', '/v1/completions', { ...good, model: `nope-${i}` }), [404], 'unknown model');
  expectError(await request('POST', '/v1/completions', good, { authorization: `Bearer wrong-${i}` }), [401], 'bad key');
}
expectError(await request('POST', '/v1/completions', good, {}), [401], 'no key');
expectError(await request('POST', '/v1/completions', good, { authorization: KEY }), [401], 'no Bearer');
expectError(await request('GET', '/v1/models', undefined, { authorization: 'Bearer None' }), [401], 'Bearer None');
expectError(await request('GET', '/v1/completions'), [405], 'GET completions');
expectError(await request('POST', '/v1/models', '{}'), [405], 'POST models');
expectError(await request('GET', '/v2/anything'), [404], 'unknown path');
expectError(await request('POST', '/tokenize', '{"prompt": 5}'), [400], 'tokenize type');
expectError(await request('POST', '/detokenize', '{"tokens": [99999999]}'), [400], 'detokenize id');
expectError(await request('POST', '/detokenize', '[1,2]'), [400], 'detokenize body');
const echoed = await request('GET', '/v1/models', undefined, { ...auth, 'x-request-id': 'abc-123' });
assert.equal(echoed.headers['x-request-id'], 'abc-123');
await healthy();

// 4. Oversized bodies: 413 (or the connection closed after the answer).
for (let i = 0; i < 3; i++) {
  const huge = JSON.stringify({ prompt: 'a'.repeat(10 * 1024 * 1024) });
  try {
    expectError(await request('POST', '/v1/completions', huge), [413], '10 MB body');
  } catch (e) {
    if (!/EPIPE|ECONNRESET/.test(String(e))) throw e;
    hostile++;
  }
}
await healthy();

// 5. Clients that vanish: mid-stream, before any answer, with a half-sent body; slow readers.
function rawSocket(payload, { closeAfterMs = 0, closeOnData = false, pause = false } = {}) {
  return new Promise((resolve) => {
    const s = net.connect(Number(base.port), base.hostname, () => s.write(payload));
    let got = '';
    let timer = null;
    const done = () => { clearTimeout(timer); s.destroy(); resolve(got); };
    s.on('data', (d) => { got += d.toString(); if (closeOnData && got.includes('data: ')) done(); });
    if (pause) s.pause();
    s.on('error', done);
    s.on('close', done);
    timer = setTimeout(done, closeAfterMs || 5000);
  });
}
const streamBody = (i) => JSON.stringify({ model: 'tiny', prompt: [i + 1, 2, 3, 4], max_tokens: 200, ignore_eos: true, stream: true });
const rawPost = (body, len = Buffer.byteLength(body)) =>
  `POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${KEY}\r\nContent-Type: application/json\r\nContent-Length: ${len}\r\n\r\n${body}`;
const vanish = [];
for (let i = 0; i < 20; i++) vanish.push(rawSocket(rawPost(streamBody(i)), { closeOnData: true, closeAfterMs: 10000 }));
for (let i = 0; i < 10; i++) vanish.push(rawSocket(rawPost(JSON.stringify({ model: 'tiny', prompt: [i, 9], max_tokens: 200, ignore_eos: true })), { closeAfterMs: 20 }));
for (let i = 0; i < 10; i++) vanish.push(rawSocket(rawPost('{"prompt": [1,2', 1000), { closeAfterMs: 50 }));
for (let i = 0; i < 5; i++) vanish.push(rawSocket(rawPost(streamBody(100 + i)), { pause: true, closeAfterMs: 1000 }));
for (let i = 0; i < 5; i++) vanish.push(rawSocket('POST /v1/comp', { closeAfterMs: 300 }));
for (let i = 0; i < 5; i++) vanish.push(rawSocket('GARBAGE\r\n\r\n', { closeAfterMs: 300 }));
const seen = await Promise.all(vanish);
hostile += vanish.length;
for (let i = 0; i < 20; i++) assert.match(seen[i], /^HTTP\/1\.1 200/, 'a mid-stream client got no stream');
await healthy();

console.log(`${hostile} hostile requests handled`);
assert.ok(hostile >= 200, `only ${hostile} hostile requests`);

// 6. Everything aborted or finished: KV blocks back to zero, nothing running (bounded wait).
let used = -1, running = -1;
for (let i = 0; i < 100; i++) {
  used = await metric('kvferry:kv_blocks_used');
  running = await metric('vllm:num_requests_running');
  if (used === 0 && running === 0) break;
  await new Promise((r) => setTimeout(r, 100));
}
assert.equal(used, 0, 'KV blocks still in use after every client left');
assert.equal(running, 0);
const aborted = (await request('GET', '/metrics', undefined, {})).body.match(/finished_reason="abort"\} (\d+)/);
assert.ok(Number(aborted[1]) >= 20, `only ${aborted[1]} requests aborted: disconnects did not abort`);
console.log(`kv blocks used ${used}; ${aborted[1]} requests aborted by disconnects`);
