'use strict';

// The conformance scenarios every tokenvend client passes (client/README.md), one test per
// id, against the real tokenvend binary.

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const axios = require('axios');
const { TokenClient, TokenvendError, status, attachTokenvend, tokenvendFetch } = require('../src');
const {
  startTokenvend,
  startSilentServer,
  startUpstream,
  rpcRecorder,
  freePort,
  sleep,
} = require('./helpers');

let server;
before(async () => {
  server = await startTokenvend();
});
after(async () => {
  await server?.stop();
});

function newClient(target = server.target, options = {}) {
  const rec = rpcRecorder();
  const client = new TokenClient(target, { ...options, interceptors: [rec.interceptor] });
  const gets = () => rec.calls.filter((c) => c.method === 'GetToken');
  return { client, calls: rec.calls, gets };
}

/** What tokenvend vends right now, asked by a client with no local copy. */
async function currentToken(target = server.target, profile = 'demo') {
  const fresh = new TokenClient(target);
  try {
    return (await fresh.getToken(profile)).accessToken;
  } finally {
    fresh.close();
  }
}

function tempDir() {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'tokenvend-node-'));
}

test('conformance cache_hit_no_rpc', async () => {
  const { client, gets } = newClient();
  try {
    const first = await client.getToken('demo');
    const second = await client.getToken('demo');
    const third = await client.getToken('demo', { minTtlMs: 60_000 });
    assert.equal(second, first);
    assert.equal(third, first);
    assert.equal(gets().length, 1, 'only the first get makes an RPC');
  } finally {
    client.close();
  }
});

test('conformance single_flight', async () => {
  const { client, gets } = newClient();
  try {
    const tokens = await Promise.all(Array.from({ length: 25 }, () => client.getToken('demo')));
    assert.equal(gets().length, 1);
    for (const t of tokens) assert.equal(t, tokens[0]);
  } finally {
    client.close();
  }
});

test('conformance reject_coalesced', async () => {
  const { client, gets } = newClient();
  try {
    const old = await client.getToken('demo');
    const replacements = await Promise.all(Array.from({ length: 60 }, () => client.reject('demo', old.accessToken)));
    const rejects = gets().slice(1);
    assert.ok(rejects.length >= 1 && rejects.length <= 2, `${rejects.length} RPCs for 60 rejects`);
    assert.equal(rejects[0].request.rejectedToken, old.accessToken);
    for (const t of replacements) assert.equal(t.accessToken, replacements[0].accessToken);
    assert.notEqual(replacements[0].accessToken, old.accessToken);
    assert.equal(await currentToken(), replacements[0].accessToken, 'tokenvend vends the replacement');

    // The old token is no longer the local copy: reporting it again makes no RPC.
    const count = gets().length;
    assert.equal((await client.reject('demo', old)).accessToken, replacements[0].accessToken);
    assert.equal(gets().length, count);
  } finally {
    client.close();
  }
});

test('conformance http_401_retried_once', async () => {
  for (const adapter of ['axios', 'fetch']) {
    const upstream = await startUpstream([401, 200]);
    const { client, gets } = newClient();
    try {
      let res;
      if (adapter === 'axios') {
        const api = axios.create({ baseURL: upstream.url });
        attachTokenvend(api, client, 'demo');
        res = await api.post('/orders', { id: 7 });
      } else {
        res = await tokenvendFetch(client, 'demo')(`${upstream.url}/orders`, { method: 'POST', body: '{"id":7}' });
      }
      assert.equal(res.status, 200, adapter);
      assert.equal(upstream.requests.length, 2, adapter);
      const [first, second] = upstream.requests;
      assert.notEqual(second.authorization, first.authorization, adapter);
      assert.equal(second.authorization, `Bearer ${await currentToken()}`, adapter);
      assert.deepEqual(JSON.parse(second.body), { id: 7 }, `${adapter}: the body is sent again`);
      assert.equal(gets().length, 2, `${adapter}: one get, one reject`);
      assert.equal(gets()[1].request.rejectedToken, first.authorization.slice('Bearer '.length));
    } finally {
      client.close();
      await upstream.close();
    }
  }
});

test('conformance always_401_bounded', async () => {
  for (const adapter of ['axios', 'fetch']) {
    const upstream = await startUpstream([401]);
    const { client, gets } = newClient();
    let call;
    if (adapter === 'axios') {
      const api = axios.create({ baseURL: upstream.url });
      attachTokenvend(api, client, 'demo');
      call = () => api.get('/orders').then(
        () => assert.fail('a 401 must reach the caller'),
        (err) => err.response.status,
      );
    } else {
      const f = tokenvendFetch(client, 'demo');
      call = () => f(`${upstream.url}/orders`).then((res) => res.status);
    }
    try {
      // Concurrent calls share the token, so they share its rejection too.
      const statuses = await Promise.all(Array.from({ length: 10 }, call));
      assert.deepEqual(statuses, Array(10).fill(401), adapter);
      assert.equal(upstream.requests.length, 20, `${adapter}: each call is retried once only`);
      assert.ok(gets().length <= 3, `${adapter}: ${gets().length} RPCs for 10 concurrent calls`);

      for (let i = 0; i < 3; i += 1) {
        const requestsBefore = upstream.requests.length;
        const rpcsBefore = gets().length;
        assert.equal(await call(), 401);
        assert.equal(upstream.requests.length - requestsBefore, 2, `${adapter}: one retry`);
        assert.ok(gets().length - rpcsBefore <= 2, `${adapter}: ${gets().length - rpcsBefore} RPCs for one call`);
      }
    } finally {
      client.close();
      await upstream.close();
    }
  }
});

test('conformance deadline_bounds_fetch', async () => {
  const silent = await startSilentServer();
  const clients = [];
  const client = () => {
    const c = newClient(silent.target);
    clients.push(c);
    return c;
  };
  const timed = async (fn) => {
    const start = Date.now();
    const err = await fn().then(
      () => assert.fail('a silent tokenvend cannot give a token'),
      (e) => e,
    );
    return { err, ms: Date.now() - start };
  };
  try {
    const direct = client();
    const viaAxiosTimeout = client();
    const viaAxiosSignal = client();
    const viaFetch = client();
    const aborted = client();
    const apiTimeout = axios.create({ timeout: 1000 });
    attachTokenvend(apiTimeout, viaAxiosTimeout.client, 'demo');
    const apiSignal = axios.create();
    attachTokenvend(apiSignal, viaAxiosSignal.client, 'demo');
    const f = tokenvendFetch(viaFetch.client, 'demo');
    const controller = new AbortController();
    setTimeout(() => controller.abort(), 200);

    // All at once, each with a client of its own, so that the suite waits one second.
    const [d, at, as, fe, ab] = await Promise.all([
      timed(() => direct.client.getToken('demo', { timeoutMs: 1000 })),
      timed(() => apiTimeout.get('http://127.0.0.1:9/never-sent')),
      timed(() => apiSignal.get('http://127.0.0.1:9/never-sent', { signal: AbortSignal.timeout(1000) })),
      timed(() => f('http://127.0.0.1:9/never-sent', { signal: AbortSignal.timeout(1000) })),
      timed(() => aborted.client.getToken('demo', { signal: controller.signal })),
    ]);

    for (const [name, r] of Object.entries({ direct: d, axiosTimeout: at, axiosSignal: as, fetch: fe })) {
      assert.ok(r.ms >= 900 && r.ms < 1500, `${name} failed after ${r.ms} ms`);
    }
    assert.ok(d.err instanceof TokenvendError);
    assert.equal(d.err.code, status.DEADLINE_EXCEEDED);
    assert.equal(d.err.retryable, true);
    assert.equal(direct.gets()[0].deadline - direct.gets()[0].at <= 1000, true, 'the gRPC deadline is the caller\'s');

    for (const [name, r] of Object.entries({ axiosTimeout: at, axiosSignal: as })) {
      assert.ok(r.err instanceof axios.AxiosError, `${name}: ${r.err}`);
      assert.ok(axios.isAxiosError(r.err));
      assert.equal(r.err.code, 'ETIMEDOUT', name);
      assert.ok(r.err.config && r.err.config.url === 'http://127.0.0.1:9/never-sent', name);
      assert.ok(r.err.cause instanceof TokenvendError, name);
      assert.equal(r.err.cause.retryable, true, name);
      assert.equal(r.err.response, undefined, name);
    }

    // As fetch itself does when its signal times out.
    assert.equal(fe.err.name, 'TimeoutError');

    // An abort ends the wait at once and cancels the RPC nobody waits for any more.
    assert.ok(ab.ms < 500, `abort took ${ab.ms} ms`);
    assert.equal(ab.err.code, status.CANCELLED);
    assert.equal(ab.err.retryable, false);
    await sleep(50);
    assert.equal(aborted.gets()[0].status, status.CANCELLED);

    // With no deadline from the caller, 10 s applies.
    const dflt = client();
    dflt.client.getToken('demo').catch(() => {});
    await sleep(50);
    const rpc = dflt.gets()[0];
    assert.ok(Math.abs(rpc.deadline - rpc.at - 10_000) < 100, `default deadline ${rpc.deadline - rpc.at} ms`);
  } finally {
    for (const c of clients) c.client.close();
    await silent.close();
  }
});

test('conformance error_categories', async () => {
  const { client } = newClient();
  const port = await freePort(); // closed again: nothing listens there
  const down = new TokenClient(`127.0.0.1:${port}`);
  try {
    await assert.rejects(client.getToken('no-such-profile'), (err) => {
      assert.ok(err instanceof TokenvendError);
      assert.equal(err.code, status.NOT_FOUND);
      assert.equal(err.codeName, 'NOT_FOUND');
      assert.equal(err.retryable, false);
      assert.match(err.message, /no-such-profile/);
      return true;
    });
    await assert.rejects(down.getToken('demo'), (err) => {
      assert.ok(err instanceof TokenvendError);
      assert.equal(err.code, status.UNAVAILABLE);
      assert.equal(err.retryable, true);
      assert.match(err.message, /ECONNREFUSED/, 'the message names the cause');
      return true;
    });

    // The adapters keep the category in the cause of their own error types.
    const api = axios.create();
    attachTokenvend(api, client, 'no-such-profile');
    await assert.rejects(api.get('http://127.0.0.1:9/never-sent'), (err) => {
      assert.ok(err instanceof axios.AxiosError);
      assert.equal(err.code, 'ERR_TOKENVEND_NOT_FOUND');
      assert.equal(err.cause.retryable, false);
      return true;
    });
    const f = tokenvendFetch(down, 'demo');
    await assert.rejects(f('http://127.0.0.1:9/never-sent'), (err) => {
      assert.ok(err instanceof TypeError);
      assert.equal(err.cause.code, status.UNAVAILABLE);
      assert.equal(err.cause.retryable, true);
      return true;
    });
  } finally {
    client.close();
    down.close();
  }
});

test('conformance watch_live_copy', async () => {
  const { client, calls, gets } = newClient();
  const other = new TokenClient(server.target);
  try {
    const watch = client.watch('demo');
    const first = await watch.ready;
    assert.ok(watch.live);
    for (let i = 0; i < 20; i += 1) assert.equal((await client.getToken('demo')).accessToken, first.accessToken);
    assert.equal(gets().length, 0, 'a watched profile makes no GetToken');
    assert.equal(calls.filter((c) => c.method === 'WatchToken').length, 1);

    // Another process reports the token; tokenvend replaces it and the stream brings the
    // replacement here.
    const replacement = await other.reject('demo', first.accessToken);
    const deadline = Date.now() + 5000;
    while ((await client.getToken('demo')).accessToken !== replacement.accessToken) {
      assert.ok(Date.now() < deadline, 'the watched copy did not follow the replacement');
      await sleep(10);
    }
    assert.equal(gets().length, 0);
    watch.close();
    assert.equal(watch.live, false);
  } finally {
    client.close();
    other.close();
  }
});

test('watch reopens its stream after tokenvend restarts', async () => {
  let tv = await startTokenvend();
  const { client, calls, gets } = newClient(tv.target);
  try {
    const watch = client.watch('demo');
    const first = await watch.ready;
    await tv.stop();
    // A restarted dev server has a new issuer, hence a new token.
    tv = await startTokenvend({ port: tv.port });
    const deadline = Date.now() + 10_000;
    while ((await client.getToken('demo')).accessToken === first.accessToken) {
      assert.ok(Date.now() < deadline, 'the watch did not come back');
      await sleep(20);
    }
    assert.ok(watch.live);
    assert.equal(gets().length, 0);
    assert.ok(calls.filter((c) => c.method === 'WatchToken').length >= 2);
    watch.close();
  } finally {
    client.close();
    await tv.stop();
  }
});

test('conformance service_account_token', async () => {
  const dir = tempDir();
  const file = path.join(dir, 'token');
  fs.writeFileSync(file, 'sa-token-one\n');
  const { client, calls, gets } = newClient(server.target, { serviceAccountTokenFile: file });
  try {
    await client.getToken('demo');
    assert.deepEqual(gets()[0].metadata.get('authorization'), ['Bearer sa-token-one']);

    // Kubernetes swaps the file atomically; emulate it with a rename.
    fs.writeFileSync(path.join(dir, 'token.new'), 'sa-token-two');
    fs.renameSync(path.join(dir, 'token.new'), file);
    client.clearCache();
    await client.getToken('demo');
    assert.deepEqual(gets()[1].metadata.get('authorization'), ['Bearer sa-token-two']);

    // The watch stream carries it as well.
    const watch = client.watch('demo');
    await watch.ready;
    assert.deepEqual(calls.find((c) => c.method === 'WatchToken').metadata.get('authorization'), ['Bearer sa-token-two']);
    watch.close();

    fs.rmSync(file);
    client.clearCache();
    await assert.rejects(client.getToken('demo'), (err) => err.code === status.UNAUTHENTICATED && !err.retryable);
  } finally {
    client.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
