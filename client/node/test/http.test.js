'use strict';

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { Readable } = require('node:stream');
const axios = require('axios');
const { TokenClient, attachTokenvend, tokenvendFetch } = require('../src');
const { startTokenvend, startUpstream } = require('./helpers');

let server;
before(async () => {
  server = await startTokenvend();
});
after(async () => {
  await server?.stop();
});

/** What tokenvend vends right now, asked by a client with no local cache. */
async function currentToken() {
  const fresh = new TokenClient(server.target);
  try {
    return (await fresh.getToken('demo')).accessToken;
  } finally {
    fresh.close();
  }
}

async function withSetup(statuses, fn) {
  const upstream = await startUpstream(statuses);
  const client = new TokenClient(server.target);
  try {
    await fn({ upstream, client });
  } finally {
    client.close();
    await upstream.close();
  }
}

// --- axios ---------------------------------------------------------------------------

test('axios: every request carries the token headers', () =>
  withSetup([200], async ({ upstream, client }) => {
    const api = axios.create({ baseURL: upstream.url });
    attachTokenvend(api, client, 'demo');
    const res = await api.get('/api/order/response');
    assert.equal(res.status, 200);
    const token = await client.getToken('demo');
    assert.equal(upstream.requests.length, 1);
    assert.equal(upstream.requests[0].authorization, token.headers.authorization);
  }));

test('axios: a 401 is retried once with the replacement token', () =>
  withSetup([401, 200], async ({ upstream, client }) => {
    const api = axios.create({ baseURL: upstream.url });
    attachTokenvend(api, client, 'demo');
    const res = await api.post('/api/orders', { id: 42 });
    assert.equal(res.status, 200);
    assert.equal(upstream.requests.length, 2);
    const [first, second] = upstream.requests;
    assert.notEqual(second.authorization, first.authorization);
    assert.equal(second.authorization, `Bearer ${await currentToken()}`);
    assert.deepEqual(JSON.parse(second.body), { id: 42 }, 'the body is sent again');
  }));

test('axios: a persistent 401 reaches the caller after exactly two requests', () =>
  withSetup([401], async ({ upstream, client }) => {
    const api = axios.create({ baseURL: upstream.url });
    attachTokenvend(api, client, 'demo');
    await assert.rejects(api.get('/api/order/response'), (err) => {
      assert.equal(err.response.status, 401);
      return true;
    });
    assert.equal(upstream.requests.length, 2);
    assert.notEqual(upstream.requests[1].authorization, upstream.requests[0].authorization);
    // The second, refused token was not reported: tokenvend still vends it.
    assert.equal(upstream.requests[1].authorization, `Bearer ${await currentToken()}`);
  }));

test('axios: a streamed body is not replayed, but the token is still replaced', () =>
  withSetup([401, 200], async ({ upstream, client }) => {
    const api = axios.create({ baseURL: upstream.url });
    attachTokenvend(api, client, 'demo');
    const sent = (await client.getToken('demo')).accessToken;
    await assert.rejects(api.post('/api/upload', Readable.from(['chunk'])), (err) => err.response.status === 401);
    assert.equal(upstream.requests.length, 1);
    assert.notEqual(await currentToken(), sent);
  }));

test('axios: other errors pass through untouched', () =>
  withSetup([500], async ({ upstream, client }) => {
    const api = axios.create({ baseURL: upstream.url });
    attachTokenvend(api, client, 'demo');
    await assert.rejects(api.get('/x'), (err) => err.response.status === 500);
    assert.equal(upstream.requests.length, 1);
  }));

test('axios: a tokenvend failure fails the request before it is sent', () =>
  withSetup([200], async ({ upstream, client }) => {
    const api = axios.create({ baseURL: upstream.url });
    attachTokenvend(api, client, 'no-such-profile');
    await assert.rejects(api.get('/x'), (err) => {
      assert.ok(err instanceof axios.AxiosError);
      assert.equal(err.code, 'ERR_TOKENVEND_NOT_FOUND');
      assert.equal(err.cause.code, 5 /* NOT_FOUND */);
      assert.equal(err.config.url, '/x');
      return true;
    });
    assert.equal(upstream.requests.length, 0);
  }));

test('axios: detaching stops adding headers', () =>
  withSetup([200], async ({ upstream, client }) => {
    const api = axios.create({ baseURL: upstream.url });
    const detach = attachTokenvend(api, client, 'demo');
    detach();
    await api.get('/x');
    assert.equal(upstream.requests[0].authorization, undefined);
  }));

// --- fetch ---------------------------------------------------------------------------

test('fetch: every request carries the token headers and keeps its own', () =>
  withSetup([200], async ({ upstream, client }) => {
    const f = tokenvendFetch(client, 'demo');
    const res = await f(`${upstream.url}/api/order/response`, { headers: { accept: 'application/json' } });
    assert.equal(res.status, 200);
    assert.deepEqual(await res.json(), { status: 200 });
    const token = await client.getToken('demo');
    assert.equal(upstream.requests[0].authorization, token.headers.authorization);
    assert.equal(upstream.requests[0].headers.accept, 'application/json');
  }));

test('fetch: a 401 is retried once with the replacement token', () =>
  withSetup([401, 200], async ({ upstream, client }) => {
    const f = tokenvendFetch(client, 'demo');
    const res = await f(`${upstream.url}/api/orders`, { method: 'POST', body: 'payload' });
    assert.equal(res.status, 200);
    assert.equal(upstream.requests.length, 2);
    const [first, second] = upstream.requests;
    assert.notEqual(second.authorization, first.authorization);
    assert.equal(second.authorization, `Bearer ${await currentToken()}`);
    assert.equal(second.body, 'payload');
  }));

test('fetch: a persistent 401 is returned after exactly two requests', () =>
  withSetup([401], async ({ upstream, client }) => {
    const f = tokenvendFetch(client, 'demo');
    const res = await f(new Request(`${upstream.url}/api/orders`, { method: 'PUT', body: 'x' }));
    assert.equal(res.status, 401);
    assert.equal(upstream.requests.length, 2);
    assert.equal(upstream.requests[1].body, 'x');
    assert.notEqual(upstream.requests[1].authorization, upstream.requests[0].authorization);
  }));

test('fetch: a stream body is not replayed', () =>
  withSetup([401, 200], async ({ upstream, client }) => {
    const f = tokenvendFetch(client, 'demo');
    const body = new ReadableStream({
      start(c) {
        c.enqueue(new TextEncoder().encode('once'));
        c.close();
      },
    });
    const res = await f(`${upstream.url}/api/upload`, { method: 'POST', body, duplex: 'half' });
    assert.equal(res.status, 401);
    assert.equal(upstream.requests.length, 1);
  }));

// --- aborts --------------------------------------------------------------------------

test('an abort while waiting for a hung tokenvend rejects as each library does', async () => {
  const { startSilentServer } = require('./helpers');
  const silent = await startSilentServer();
  const client = new TokenClient(silent.target);
  try {
    const api = axios.create();
    attachTokenvend(api, client, 'demo');
    const viaAxios = new AbortController();
    const viaFetch = new AbortController();
    setTimeout(() => {
      viaAxios.abort();
      viaFetch.abort();
    }, 100);
    const start = Date.now();
    const [a, f] = await Promise.allSettled([
      api.get('http://127.0.0.1:9/never-sent', { signal: viaAxios.signal }),
      tokenvendFetch(client, 'demo')('http://127.0.0.1:9/never-sent', { signal: viaFetch.signal }),
    ]);
    assert.ok(Date.now() - start < 1000);
    assert.ok(axios.isCancel(a.reason), String(a.reason));
    assert.ok(a.reason instanceof axios.CanceledError);
    assert.equal(a.reason.code, 'ERR_CANCELED');
    assert.equal(a.reason.cause.code, 1 /* CANCELLED */);
    assert.equal(f.reason.name, 'AbortError');
  } finally {
    client.close();
    await silent.close();
  }
});
