// Sends the same greedy requests to two OpenAI-compatible servers (e.g. the disaggregation
// proxy and a colocated `kvferry serve`) with the official `openai` client and checks that the
// answers agree token for token (text, finish reason, usage), streaming and not.
//
// node compare.mjs --a URL --b URL [--model NAME] [--lengths 1,7,...] [--max-tokens N]
//                  [--concurrency C] [--chat N] [--vocab V] [--seed S] [--modes both|stream|plain]
// Prints one line per check and ends with "N passed, N failed"; exit status 1 on any failure.
import OpenAI from '../oracles/node_modules/openai/index.mjs';

const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, cur, i, all) => {
    if (cur.startsWith('--')) acc.push([cur.slice(2), all[i + 1]]);
    return acc;
  }, []));
const A = args.a, B = args.b;
if (!A || !B) {
  console.error('usage: compare.mjs --a URL --b URL [...]');
  process.exit(2);
}
const model = args.model ?? 'tiny';
const lengths = (args.lengths ?? '1,2,5,15,16,17,31,33,64,100,127,200,255,300,511,700,1000,1023,1500,2000')
  .split(',').map(Number);
const maxTokens = Number(args['max-tokens'] ?? 8);
const concurrency = Number(args.concurrency ?? 4);
const chatCount = Number(args.chat ?? 3);
const vocab = Number(args.vocab ?? 256);
let seed = Number(args.seed ?? 1);
const timeoutMs = Number(args['timeout-ms'] ?? 120000);
const modes = args.modes ?? 'both';  // which of streaming / non-streaming requests to send
const streamModes = modes === 'stream' ? [true] : modes === 'plain' ? [false] : [false, true];

function rand() {  // xorshift32: prompts are the same on every run
  seed ^= seed << 13; seed >>>= 0;
  seed ^= seed >>> 17;
  seed ^= seed << 5; seed >>>= 0;
  return seed;
}
function client(base) {
  return new OpenAI({ baseURL: base.replace(/\/$/, '') + '/v1', apiKey: 'none', timeout: timeoutMs, maxRetries: 0 });
}
const ca = client(A), cb = client(B);

// One answer as {text, finish, prompt_tokens, completion_tokens}.
async function complete(c, prompt, stream) {
  const body = { model, prompt, max_tokens: maxTokens, temperature: 0 };
  if (!stream) {
    const r = await c.completions.create(body);
    return { text: r.choices[0].text, finish: r.choices[0].finish_reason,
             prompt_tokens: r.usage.prompt_tokens, completion_tokens: r.usage.completion_tokens };
  }
  const s = await c.completions.create({ ...body, stream: true, stream_options: { include_usage: true } });
  let text = '', finish = null, usage = null;
  for await (const chunk of s) {
    if (chunk.choices?.length) {
      text += chunk.choices[0].text ?? '';
      if (chunk.choices[0].finish_reason) finish = chunk.choices[0].finish_reason;
    }
    if (chunk.usage) usage = chunk.usage;
  }
  return { text, finish, prompt_tokens: usage?.prompt_tokens, completion_tokens: usage?.completion_tokens };
}

async function chat(c, content, stream) {
  const body = { model, messages: [{ role: 'user', content }], max_tokens: maxTokens, temperature: 0 };
  if (!stream) {
    const r = await c.chat.completions.create(body);
    return { text: r.choices[0].message.content, finish: r.choices[0].finish_reason,
             prompt_tokens: r.usage.prompt_tokens, completion_tokens: r.usage.completion_tokens };
  }
  const s = await c.chat.completions.create({ ...body, stream: true, stream_options: { include_usage: true } });
  let text = '', finish = null, usage = null;
  for await (const chunk of s) {
    if (chunk.choices?.length) {
      text += chunk.choices[0].delta?.content ?? '';
      if (chunk.choices[0].finish_reason) finish = chunk.choices[0].finish_reason;
    }
    if (chunk.usage) usage = chunk.usage;
  }
  return { text, finish, prompt_tokens: usage?.prompt_tokens, completion_tokens: usage?.completion_tokens };
}

const checks = [];
for (const len of lengths) {
  const ids = Array.from({ length: len }, () => rand() % vocab);
  for (const stream of streamModes) {
    checks.push({ name: `completion len=${len} stream=${stream}`, run: (c) => complete(c, ids, stream) });
  }
}
const words = ['ferry', 'harbour', 'tide', 'engine', 'island', 'bread', 'station', 'story', 'sea', 'morning'];
for (let i = 0; i < chatCount; ++i) {
  const n = 3 + (rand() % 40);
  const content = Array.from({ length: n }, () => words[rand() % words.length]).join(' ');
  for (const stream of streamModes) {
    checks.push({ name: `chat words=${n} stream=${stream}`, run: (c) => chat(c, content, stream) });
  }
}

let passed = 0, failed = 0;
async function runCheck(ch) {
  try {
    const [ra, rb] = await Promise.all([ch.run(ca), ch.run(cb)]);
    const same = JSON.stringify(ra) === JSON.stringify(rb);
    const sane = ra.completion_tokens >= 1 && ra.prompt_tokens >= 1 && ra.finish;
    if (same && sane) {
      ++passed;
      console.log(`ok   ${ch.name}: ${ra.completion_tokens} tokens, finish ${ra.finish}`);
    } else {
      ++failed;
      console.log(`FAIL ${ch.name}:\n  a: ${JSON.stringify(ra)}\n  b: ${JSON.stringify(rb)}`);
    }
  } catch (e) {
    ++failed;
    console.log(`FAIL ${ch.name}: ${e.status ?? ''} ${e.message}`);
  }
}
let next = 0;
await Promise.all(Array.from({ length: Math.max(1, concurrency) }, async () => {
  while (next < checks.length) await runCheck(checks[next++]);
}));
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
