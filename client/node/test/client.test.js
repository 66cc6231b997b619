'use strict';

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
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

test('a second getToken is served from the local cache', async () => {
  const { client, calls } = newClient();
  try {
    const first = await client.getToken('demo');
    assert.equal(calls.length, 1);
    const second = await client.getToken('demo');
    assert.equal(second, first);
    assert.equal(calls.length, 1, 'no RPC for a cached token');
  } finally {
    client.close();
  }
});

test('concurrent callers share one RPC', async () => {
  const { client, calls } = newClient();
  try {
    const tokens = await Promise.all(Array.from({ length: 10 }, () => client.getToken('demo')));
    assert.equal(calls.length, 1);
    for (const t of tokens) assert.equal(t, tokens[0]);
  } finally {
    client.close();
  }
});

test('a token inside the refresh margin is fetched again', async () => {
  // The demo tokens live 300 s, so a 310 s margin sends every call to tokenvend.
  const { client, calls } = newClient({ refreshMarginMs: 310_000 });
  try {
    await client.getToken('demo');
    await client.getToken('demo');
    assert.equal(calls.length, 2);
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

test('an unknown profile rejects with NOT_FOUND', async () => {
  const { client } = newClient();
  try {
    await assert.rejects(client.getToken('no-such-profile'), (err) => {
      assert.ok(err instanceof TokenvendError);
      assert.ok(err instanceof Error);
      assert.equal(err.code, status.NOT_FOUND);
      assert.equal(err.codeName, 'NOT_FOUND');
      assert.equal(typeof err.details, 'string');
      assert.equal(err.retryable, false);
      return true;
    });
  } finally {
    client.close();
  }
});

test('an unreachable server rejects with UNAVAILABLE', async () => {
  const client = new TokenClient('127.0.0.1:1', { timeoutMs: 2000 });
  try {
    await assert.rejects(client.getToken('demo'), (err) => {
      assert.equal(err.code, status.UNAVAILABLE);
      assert.equal(err.retryable, true);
      return true;
    });
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

    // Another caller reporting the old token again is answered from the local cache.
    const again = await client.invalidate('demo', old.accessToken);
    assert.equal(again, fresh);
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

test('the ServiceAccount token file is sent and re-read when it rotates', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tokenvend-sa-'));
  const file = path.join(dir, 'token');
  fs.writeFileSync(file, 'sa-token-one\n');
  // A margin longer than the token lifetime makes every getToken an RPC, so each carries metadata.
  const { client, calls } = newClient({ serviceAccountTokenFile: file, refreshMarginMs: 310_000 });
  try {
    await client.getToken('demo');
    assert.deepEqual(calls[0].metadata.get('authorization'), ['Bearer sa-token-one']);

    // Kubernetes swaps the file atomically; emulate it with a rename.
    fs.writeFileSync(path.join(dir, 'token.new'), 'sa-token-two');
    fs.renameSync(path.join(dir, 'token.new'), file);
    await client.getToken('demo');
    assert.deepEqual(calls[1].metadata.get('authorization'), ['Bearer sa-token-two']);

    fs.rmSync(file);
    await assert.rejects(client.getToken('demo'), (err) => err.code === status.UNAUTHENTICATED);
  } finally {
    client.close();
    fs.rmSync(dir, { recursive: true, force: true });
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
