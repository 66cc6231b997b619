'use strict';

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const util = require('node:util');
const { TokenClient, TokenvendError, Token, status } = require('../src');
const { startTokenvend, rpcRecorder } = require('./helpers');

const JWT = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/;

let server;
before(async () => {
  server = await startTokenvend();
});
after(async () => {
  await server?.stop();
});

function newClient(options = {}) {
  const rec = rpcRecorder();
  const client = new TokenClient(server.target, { ...options, interceptors: [rec.interceptor] });
  return { client, calls: rec.calls };
}

test('getToken returns a usable demo token', async () => {
  const { client } = newClient();
  try {
    const token = await client.getToken('demo');
    assert.ok(token instanceof Token);
    assert.match(token.accessToken, JWT);
    assert.equal(token.tokenType, 'Bearer');
    assert.equal(token.profile, 'demo');
    assert.ok(token.expiresAt instanceof Date);
    const ttlS = (token.expiresAt.getTime() - Date.now()) / 1000;
    assert.ok(ttlS > 240 && ttlS <= 301, `expires in ${ttlS} s`);
    assert.equal(token.headers.authorization, `Bearer ${token.accessToken}`);
    assert.ok(Array.isArray(token.scopes));
  } finally {
    client.close();
  }
});

test('minTtlMs beyond the cached token sends min_ttl to tokenvend', async () => {
  const { client, calls } = newClient();
  try {
    await client.getToken('demo');
    await client.getToken('demo', { minTtlMs: 200_000 });
    assert.equal(calls.length, 1, '200 s + 60 s margin still fits a fresh 300 s token');
    await assert.rejects(client.getToken('demo', { minTtlMs: 3_600_000 }), (err) => {
      assert.equal(err.code, status.OUT_OF_RANGE);
      return true;
    });
    assert.equal(calls.length, 2);
    assert.deepEqual(calls[1].request.minTtl, { seconds: '3600', nanos: 0 });
  } finally {
    client.close();
  }
});

test('rejecting the current token yields a new one; rejecting an old one does not', async () => {
  const { client, calls } = newClient();
  const other = new TokenClient(server.target);
  try {
    const old = await client.getToken('demo');
    const fresh = await client.getToken('demo', { rejectedToken: old.accessToken });
    assert.equal(calls.length, 2);
    assert.equal(calls[1].request.rejectedToken, old.accessToken);
    assert.notEqual(fresh.accessToken, old.accessToken);
    assert.match(fresh.accessToken, JWT);
    assert.equal((await other.getToken('demo')).accessToken, fresh.accessToken, 'tokenvend now vends the new token');

    // Another caller reporting the old token again is answered from the local cache, also
    // through the deprecated name.
    assert.equal(await client.reject('demo', old.accessToken), fresh);
    assert.equal(await client.invalidate('demo', old.accessToken), fresh);
    assert.equal(calls.length, 2);
  } finally {
    client.close();
    other.close();
  }
});

test('concurrent rejections of one token cause a single replacement', async () => {
  const { client, calls } = newClient();
  try {
    const old = await client.getToken('demo');
    const replacements = await Promise.all(
      Array.from({ length: 5 }, () => client.getToken('demo', { rejectedToken: old.accessToken })),
    );
    assert.equal(calls.length, 2);
    for (const t of replacements) assert.equal(t, replacements[0]);
    assert.notEqual(replacements[0].accessToken, old.accessToken);
  } finally {
    client.close();
  }
});

test('printing a token never shows the secret parts', async () => {
  const { client } = newClient();
  try {
    const token = await client.getToken('demo');
    for (const text of [util.inspect(token, { depth: 5 }), String(token), `${token}`, JSON.stringify(token), util.format('%o', token)]) {
      assert.ok(!text.includes(token.accessToken), `leaked in: ${text}`);
      assert.ok(text.includes('[redacted]'));
    }
    // The data itself stays plainly readable.
    assert.equal(token.headers.authorization, `Bearer ${token.accessToken}`);
  } finally {
    client.close();
  }
});

test('listProfiles shows the demo profile without secrets', async () => {
  const { client } = newClient();
  try {
    await client.getToken('demo');
    const profiles = await client.listProfiles();
    const demo = profiles.find((p) => p.name === 'demo');
    assert.ok(demo, JSON.stringify(profiles));
    assert.equal(demo.cacheState, 'CACHE_STATE_VALID');
    assert.ok(demo.expiresAt instanceof Date);
  } finally {
    client.close();
  }
});

test('options keep their defaults and the deprecated margin name', () => {
  const plain = new TokenClient(server.target);
  const old = new TokenClient(server.target, { refreshMarginMs: 5000 });
  try {
    assert.equal(plain.timeoutMs, 10_000);
    assert.equal(plain.maxRefreshMarginMs, 60_000);
    assert.equal(old.maxRefreshMarginMs, 5000);
    assert.throws(() => new TokenClient(server.target, { maxRefreshMarginMs: -1 }), RangeError);
    assert.throws(() => new TokenClient(server.target, { timeoutMs: 0 }), RangeError);
  } finally {
    plain.close();
    old.close();
  }
});

test('a caller who waits longer than the one who started the RPC is not cut short', async () => {
  // The first caller's 1 ms deadline ends the shared RPC; the second, who joined it with
  // the default deadline, gets a token from an RPC of its own.
  const { client, calls } = newClient();
  try {
    const [short, long] = await Promise.allSettled([client.getToken('demo', { timeoutMs: 1 }), client.getToken('demo')]);
    assert.equal(short.status, 'rejected');
    assert.equal(short.reason.code, status.DEADLINE_EXCEEDED);
    assert.equal(long.status, 'fulfilled', String(long.reason));
    assert.match(long.value.accessToken, JWT);
    assert.equal(calls.length, 2);
  } finally {
    client.close();
  }
});

test('a watch of an unknown profile fails its ready promise and keeps trying', async () => {
  const { client, calls } = newClient();
  try {
    const watch = client.watch('no-such-profile');
    await assert.rejects(watch.ready, (err) => err.code === status.NOT_FOUND);
    assert.equal(watch.live, false);
    await new Promise((r) => setTimeout(r, 600));
    assert.ok(calls.filter((c) => c.method.endsWith('WatchToken')).length >= 2, 'reopened with backoff');
    watch.close();
    const count = calls.length;
    await new Promise((r) => setTimeout(r, 600));
    assert.equal(calls.length, count, 'closed: no more attempts');
  } finally {
    client.close();
  }
});

test('a closed client refuses calls and stops its watches', async () => {
  const { client } = newClient();
  const watch = client.watch('demo');
  await watch.ready;
  client.close();
  assert.equal(watch.live, false);
  await assert.rejects(client.getToken('demo'), (err) => err.code === status.CANCELLED);
});
