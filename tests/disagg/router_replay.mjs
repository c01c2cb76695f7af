// Replays of the request flows of the two routers people put in front of MooncakeConnector
// prefill/decode pairs, written from shared/background/third-party-routers.md (what each sends
// and expects, read from their code), not from their code. An HTTP server that an OpenAI client
// talks to; it drives a real prefiller and decoder exactly as that router would:
//
//   --flow vllm-router   vllm-project/router --kv-connector mooncake, direct URL mode: waits for
//                        a healthy prefiller then decoder, GETs /query (30 tries, backoff, a 2xx
//                        is final) once and caches it forever; per request re-serializes the body
//                        with SGLang-style default fields, sends the prefill leg FIRST and awaits
//                        its JSON (status not checked), then the decode leg; `Authorization:
//                        Bearer ` with an empty token; X-Request-Id ___prefill_addr_..._decode_...
//   --flow llm-d         llm-d's routing sidecar: lazy /query (5 s, cached forever, 502 to the
//                        client when it fails); prefill and decode legs CONCURRENTLY, prefill
//                        answer discarded; client headers on both legs + X-Forwarded-For;
//                        X-Data-Parallel-Rank always on the prefill leg; keeps min_tokens.
//
// Both keep upstream connections alive, mint transfer_id = "xfer-<uuid4>", and send the decode
// leg even when the prefill leg failed.
//
// node router_replay.mjs --flow F --port P --prefill http://H:PORT --bootstrap-port B
//                        --decode http://H:PORT [--dp-header-on-decode 1]
// Prints "listening PORT" once ready (after the start-up discovery for vllm-router).
// GET /engine_ids answers the cached dp_rank → engine_id map (for tests).
import http from 'node:http';
import { randomUUID } from 'node:crypto';

const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, cur, i, all) => {
    if (cur.startsWith('--')) acc.push([cur.slice(2), all[i + 1]]);
    return acc;
  }, []));
const flow = args.flow;
const prefill = new URL(args.prefill);
const decode = new URL(args.decode);
const bootstrapPort = Number(args['bootstrap-port'] ?? 8998);
const bootstrapUrl = `http://${prefill.hostname}:${bootstrapPort}`;
const dpHeaderOnDecode = args['dp-header-on-decode'] === '1';
if (flow !== 'vllm-router' && flow !== 'llm-d') {
  console.error('--flow vllm-router|llm-d');
  process.exit(2);
}

// Routers keep upstream connections alive and reuse them.
const agent = new http.Agent({ keepAlive: true, maxSockets: 64 });

// `cancelWith`: the client's response; when the client leaves before its answer is complete the
// upstream call is cancelled (both routers tie the decode leg to the client's request).
function request(url, { method = 'GET', headers = {}, body, timeoutMs = 600000, cancelWith } = {}) {
  return new Promise((resolve, reject) => {
    const u = new URL(url);
    const req = http.request({ hostname: u.hostname, port: u.port, path: u.pathname + u.search, method, headers,
                               agent, timeout: timeoutMs }, resolve);
    if (cancelWith) {
      cancelWith.on('close', () => {
        if (!cancelWith.writableFinished) req.destroy(new Error('client left'));
      });
    }
    req.on('timeout', () => req.destroy(new Error(`timeout after ${timeoutMs} ms: ${method} ${url}`)));
    req.on('error', reject);
    if (body !== undefined) req.write(body);
    req.end();
  });
}
async function readAll(res) {
  const chunks = [];
  for await (const c of res) chunks.push(c);
  return Buffer.concat(chunks).toString('utf8');
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// dp_rank → engine_id, as both routers keep it: once learned, never refreshed.
let engineIds = null;
function parseQuery(text) {
  const j = JSON.parse(text);
  const out = {};
  for (const [k, v] of Object.entries(j)) {
    if (!/^\d+$/.test(k) || typeof v?.engine_id !== 'string') throw new Error(`bad /query entry ${k}`);
    out[k] = v.engine_id;
  }
  return out;
}

async function vllmRouterStartup() {
  // At least one healthy prefill host, then at least one healthy decode host (2 s per probe).
  for (const base of [prefill, decode]) {
    for (let i = 0; ; ++i) {
      try {
        const r = await request(new URL('/health', base), { timeoutMs: 2000 });
        await readAll(r);
        if (r.statusCode >= 200 && r.statusCode < 300) break;
      } catch {}
      if (i > 600) throw new Error(`${base} never healthy`);
      await sleep(100);
    }
  }
  // /query: retried on connection error and non-2xx, backoff 1, 2, 4, 8, 10... s (scaled down
  // 10x here so tests stay short); a 2xx is final, even {}.
  const backoff = [100, 200, 400, 800, 1000];
  for (let i = 0; i < 30; ++i) {
    try {
      const r = await request(`${bootstrapUrl}/query`, { timeoutMs: 30000 });
      const text = await readAll(r);
      if (r.statusCode >= 200 && r.statusCode < 300) {
        engineIds = parseQuery(text);
        return;
      }
    } catch {}
    await sleep(backoff[Math.min(i, backoff.length - 1)]);
  }
  throw new Error('bootstrap /query never answered 2xx');
}

async function llmdEngineIds() {
  if (engineIds) return engineIds;  // LRU, never invalidated
  const r = await request(`${bootstrapUrl}/query`, { timeoutMs: 5000 });
  const text = await readAll(r);
  if (r.statusCode < 200 || r.statusCode >= 300) throw new Error(`/query answered ${r.statusCode}`);
  const ids = parseQuery(text);
  if (Object.keys(ids).length === 0) throw new Error('/query lists no engine');
  engineIds = ids;
  return ids;
}

// vllm-router deserializes into typed structs and re-serializes: defaulted fields appear.
function withSglangDefaults(path, body) {
  const b = { ...body };
  const put = (k, v) => { if (!(k in b)) b[k] = v; };
  put('stream', false);
  put('ignore_eos', false);
  put('no_stop_trim', false);
  put('skip_special_tokens', true);
  put('return_hidden_states', false);
  if (path === '/v1/chat/completions') {
    put('logprobs', false);
    put('add_generation_prompt', true);
    put('continue_final_message', false);
    put('separate_reasoning', true);
    put('stream_reasoning', true);
    put('include_reasoning', true);
  } else {
    put('echo', false);
  }
  return b;
}

function prefillBody(path, body, transferId, clampMin) {
  const p = { ...body };
  if (path === '/v1/responses') p.max_output_tokens = 1;
  p.max_tokens = 1;
  if ('max_completion_tokens' in p) p.max_completion_tokens = 1;
  if (clampMin && 'min_tokens' in p) p.min_tokens = Math.min(p.min_tokens, 1);
  p.stream = false;
  delete p.stream_options;
  p.kv_transfer_params = { do_remote_decode: true, do_remote_prefill: false, transfer_id: transferId };
  return p;
}
function decodeBody(body, transferId, ids) {
  const rank = Object.keys(ids)[0];
  return { ...body, kv_transfer_params: { do_remote_decode: false, do_remote_prefill: true, transfer_id: transferId,
                                         remote_bootstrap_addr: bootstrapUrl, remote_engine_id: ids[rank] } };
}

// Relays the decoder's status, headers (less hop-by-hop ones) and body as it arrives.
async function relay(dres, res) {
  const headers = { ...dres.headers };
  delete headers['transfer-encoding'];
  delete headers['content-length'];
  delete headers['connection'];
  delete headers['keep-alive'];
  res.writeHead(dres.statusCode, headers);
  for await (const c of dres) res.write(c);
  res.end();
}

const stats = { requests: 0, prefill_failed: 0 };

async function handleVllmRouter(path, body, req, res, gone) {
  const b = withSglangDefaults(path, body);
  const transferId = `xfer-${randomUUID()}`;
  const rid = `___prefill_addr_${prefill.host}___decode_addr_${decode.host}_${randomUUID().replace(/-/g, '')}`;
  const headers = { 'Content-Type': 'application/json', Authorization: 'Bearer ', 'X-Request-Id': rid };
  const dpHeaders = dpHeaderOnDecode ? { 'X-data-parallel-rank': '0' } : {};
  // Prefill first, awaited; its JSON must parse; its status is only logged.
  const pres = await request(new URL(path, prefill), {
    method: 'POST', headers: { ...headers, ...dpHeaders },
    body: JSON.stringify(prefillBody(path, b, transferId, true)) });
  const ptext = await readAll(pres);
  if (pres.statusCode !== 200) ++stats.prefill_failed;
  try {
    JSON.parse(ptext);
  } catch {
    res.writeHead(500, { 'Content-Type': 'text/plain' });
    res.end(`Request processing failed: prefill answer is not JSON`);
    return;
  }
  if (gone()) return;
  const dreq = decodeBody(b, transferId, engineIds);
  const dres = await request(new URL(path, decode), { method: 'POST', headers: { ...headers, ...dpHeaders },
                                                      body: JSON.stringify(dreq), cancelWith: res });
  const buffered = !b.stream && (path === '/v1/chat/completions' || 'logprobs' in b || b.echo === true);
  if (buffered) {
    const text = await readAll(dres);
    JSON.parse(text);  // the router parses it to merge logprobs: it must be JSON
    res.writeHead(dres.statusCode, { 'Content-Type': 'application/json' });
    res.end(text);
    return;
  }
  await relay(dres, res);
}

async function handleLlmd(path, body, req, res) {
  let ids;
  try {
    ids = await llmdEngineIds();
  } catch (e) {
    res.writeHead(502, { 'Content-Type': 'application/json' });
    res.end(JSON.stringify({ error: { message: `mooncake bootstrap: ${e.message}`, type: 'BadGateway', code: 502 } }));
    return;
  }
  const transferId = `xfer-${randomUUID()}`;
  const rank = Object.keys(ids)[0];
  // r.Clone keeps every client header; the reverse proxy adds X-Forwarded-For.
  const clientHeaders = { ...req.headers };
  delete clientHeaders['content-length'];
  delete clientHeaders['connection'];
  delete clientHeaders['transfer-encoding'];
  clientHeaders['x-forwarded-for'] = req.socket.remoteAddress;
  // Prefill in its own task that survives the client (context.WithoutCancel), answer discarded.
  const pbody = JSON.stringify(prefillBody(path, body, transferId, false));
  (async () => {
    try {
      const pres = await request(new URL(path, prefill), { method: 'POST', body: pbody,
        headers: { ...clientHeaders, 'content-type': 'application/json', 'X-Data-Parallel-Rank': String(rank) } });
      await readAll(pres);
      if (pres.statusCode !== 200) ++stats.prefill_failed;
    } catch {
      ++stats.prefill_failed;
    }
  })();
  const dres = await request(new URL(path, decode), { method: 'POST', body: JSON.stringify(decodeBody(body, transferId, ids)),
                                                      headers: { ...clientHeaders, 'content-type': 'application/json' },
                                                      cancelWith: res });
  await relay(dres, res);
}

const server = http.createServer(async (req, res) => {
  if (req.method === 'GET' && req.url === '/engine_ids') {
    res.writeHead(200, { 'Content-Type': 'application/json' });
    res.end(JSON.stringify({ engine_ids: engineIds, ...stats }));
    return;
  }
  if (req.method === 'GET' && req.url === '/health') {
    res.writeHead(200);
    res.end();
    return;
  }
  const path = new URL(req.url, 'http://x').pathname;
  if (req.method !== 'POST' || !['/v1/completions', '/v1/chat/completions', '/v1/responses'].includes(path)) {
    res.writeHead(404, { 'Content-Type': 'application/json' });
    res.end(JSON.stringify({ error: { message: 'not routed', code: 404 } }));
    return;
  }
  let closed = false;
  res.on('close', () => { closed = true; });
  try {
    const body = JSON.parse(await readAll(req));
    ++stats.requests;
    if (flow === 'vllm-router') await handleVllmRouter(path, body, req, res, () => closed);
    else await handleLlmd(path, body, req, res);
  } catch (e) {
    if (!res.headersSent) {
      res.writeHead(500, { 'Content-Type': 'text/plain' });
      res.end(`Request processing failed: ${e.message}`);
    } else {
      res.destroy();
    }
  }
});

if (flow === 'vllm-router') await vllmRouterStartup();
server.listen(Number(args.port ?? 0), '127.0.0.1', () => {
  console.log(`listening ${server.address().port}`);
});
