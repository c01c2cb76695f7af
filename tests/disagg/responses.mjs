// POST /v1/responses (OpenAI Responses API) checked with the official `openai` client against
// server A, and compared with server B (e.g. A = the disaggregation proxy, B = colocated serve):
// text input and message input with instructions, non-streaming and streaming, greedy. Checks:
// the response object's shape, the stream's event types in order with increasing
// sequence_number, deltas adding up to the final text, max_output_tokens honoured, the answer
// equal to /v1/chat/completions for the same messages on B, and A equal to B.
//
// node responses.mjs --a URL --b URL [--model NAME]
// Prints one line per check and ends with "N passed, N failed"; exit status 1 on any failure.
import OpenAI from '../oracles/node_modules/openai/index.mjs';

const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, cur, i, all) => {
    if (cur.startsWith('--')) acc.push([cur.slice(2), all[i + 1]]);
    return acc;
  }, []));
const model = args.model ?? 'tiny';
const client = (u) => new OpenAI({ baseURL: u.replace(/\/$/, '') + '/v1', apiKey: 'none', timeout: 120000, maxRetries: 0 });
const A = client(args.a), B = client(args.b);
let passed = 0, failed = 0;
function check(name, ok, detail = '') {
  if (ok) { ++passed; console.log(`ok   ${name}`); }
  else { ++failed; console.log(`FAIL ${name} ${detail}`); }
}

async function plain(c, body) {
  const r = await c.responses.create({ ...body, model, temperature: 0 });
  return { text: r.output_text, status: r.status, out: r.usage?.output_tokens, in: r.usage?.input_tokens, raw: r };
}
async function streamed(c, body) {
  const s = await c.responses.create({ ...body, model, temperature: 0, stream: true });
  const types = [];
  let seq = -1, seqOk = true, deltas = '', final = null;
  for await (const ev of s) {
    types.push(ev.type);
    if (!(ev.sequence_number > seq)) seqOk = false;
    seq = ev.sequence_number;
    if (ev.type === 'response.output_text.delta') deltas += ev.delta;
    if (ev.type === 'response.completed' || ev.type === 'response.incomplete') final = ev.response;
  }
  return { types, seqOk, deltas, final };
}

const cases = [
  { name: 'text input', body: { input: 'the ferry leaves the island at dawn', max_output_tokens: 8 },
    chat: [{ role: 'user', content: 'the ferry leaves the island at dawn' }], max: 8 },
  { name: 'messages + instructions', body: {
      instructions: 'Answer like a harbour master.',
      input: [{ role: 'user', content: [{ type: 'input_text', text: 'when is the tide?' }] },
              { role: 'assistant', content: [{ type: 'output_text', text: 'at noon' }] },
              { type: 'message', role: 'user', content: 'and tomorrow?' }],
      max_output_tokens: 6 },
    chat: [{ role: 'system', content: 'Answer like a harbour master.' }, { role: 'user', content: 'when is the tide?' },
           { role: 'assistant', content: 'at noon' }, { role: 'user', content: 'and tomorrow?' }], max: 6 },
];

for (const k of cases) {
  try {
    const [a, b] = await Promise.all([plain(A, k.body), plain(B, k.body)]);
    check(`${k.name}: a response object`, a.raw.object === 'response' && /^resp_/.test(a.raw.id) &&
          a.raw.output?.[0]?.type === 'message' && a.raw.output[0].content?.[0]?.type === 'output_text',
          JSON.stringify(a.raw).slice(0, 300));
    check(`${k.name}: max_output_tokens honoured (${a.out} tokens, ${a.status})`,
          a.out >= 1 && a.out <= k.max && (a.status === 'completed' || (a.status === 'incomplete' && a.out === k.max &&
          a.raw.incomplete_details?.reason === 'max_output_tokens')));
    check(`${k.name}: A equals B`, JSON.stringify([a.text, a.status, a.out, a.in]) === JSON.stringify([b.text, b.status, b.out, b.in]),
          `\n  a: ${JSON.stringify(a.text)} ${a.status} ${a.out}\n  b: ${JSON.stringify(b.text)} ${b.status} ${b.out}`);
    const chat = await B.chat.completions.create({ model, messages: k.chat, max_tokens: k.max, temperature: 0 });
    check(`${k.name}: same answer as chat completions`, chat.choices[0].message.content === b.text &&
          chat.usage.completion_tokens === b.out && chat.usage.prompt_tokens === b.in,
          `\n  chat: ${JSON.stringify(chat.choices[0].message.content)}\n  resp: ${JSON.stringify(b.text)}`);
    const [sa, sb] = await Promise.all([streamed(A, k.body), streamed(B, k.body)]);
    const want = ['response.created', 'response.in_progress', 'response.output_item.added', 'response.content_part.added'];
    const tail = ['response.output_text.done', 'response.content_part.done', 'response.output_item.done'];
    const t = sa.types;
    check(`${k.name} stream: event types in order (${t.length} events)`,
          JSON.stringify(t.slice(0, 4)) === JSON.stringify(want) &&
          JSON.stringify(t.slice(-4, -1)) === JSON.stringify(tail) &&
          (t.at(-1) === 'response.completed' || t.at(-1) === 'response.incomplete') &&
          t.slice(4, -4).every((x) => x === 'response.output_text.delta'), JSON.stringify(t));
    check(`${k.name} stream: sequence numbers increase`, sa.seqOk);
    check(`${k.name} stream: deltas add up to the final text and equal the plain answer`,
          sa.final && sa.deltas === sa.final.output[0].content[0].text && sa.deltas === a.text,
          `${JSON.stringify(sa.deltas)} vs ${JSON.stringify(a.text)}`);
    check(`${k.name} stream: A equals B`, sa.deltas === sb.deltas &&
          sa.final?.usage?.output_tokens === sb.final?.usage?.output_tokens);
  } catch (e) {
    check(`${k.name}`, false, `${e.status ?? ''} ${e.message}`);
  }
}
try {
  await A.responses.create({ model, input: [{ type: 'function_call_output', call_id: 'x', output: 'y' }] });
  check('unsupported input items are refused', false, 'no error');
} catch (e) {
  check(`unsupported input items are refused (${e.status})`, e.status === 400);
}
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
