'use strict';

// The conformance scenarios that let short-lived tokens age (client/README.md). They wait
// on the clock rather than the CPU, so they sit in a file of their own that the runner
// runs beside the others.

const { describe, test } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { TokenClient, status } = require('../src');
const { startTokenvend, startIdp, writeConfig, rpcRecorder, sleep } = require('./helpers');

function newClient(target, options = {}) {
  const rec = rpcRecorder();
  const client = new TokenClient(target, { ...options, interceptors: [rec.interceptor] });
  const gets = () => rec.calls.filter((c) => c.method === 'GetToken');
  return { client, calls: rec.calls, gets };
}

function tempDir() {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'tokenvend-node-'));
}

// Both only wait, so they wait together.
describe('short-lived tokens', { concurrency: true }, () => {
  test('conformance refresh_margin_fraction', async () => {
    // `short` tokens live 10 s (margin 1 s); `stuck` tokens 15 s (margin 1.5 s), and the
    // provider fails after the first, so tokenvend cannot replace it.
    const lifetimes = { short: 10, stuck: 15 };
    const dir = tempDir();
    const clients = [];
    let idp;
    let tv;
    try {
      idp = await startIdp(lifetimes);
      tv = await startTokenvend({ config: writeConfig(dir, idp, lifetimes), probeProfile: 'short' });
      const a = newClient(tv.target);
      const capped = newClient(tv.target, { maxRefreshMarginMs: 300 });
      const b = newClient(tv.target);
      clients.push(a, capped, b);
      // Both share tokenvend's one `short` token; the probe already fetched it.
      const firstA = await a.client.getToken('short');
      const firstCapped = await capped.client.getToken('short');
      const firstB = await b.client.getToken('stuck');
      idp.failing.add('stuck');
      const expA = firstA.expiresAt.getTime();
      const expB = firstB.expiresAt.getTime();

      const loop = async (c, profile, until) => {
        const seen = new Set();
        while (Date.now() < until) {
          seen.add((await c.client.getToken(profile)).accessToken);
          await sleep(5);
        }
        return seen;
      };
      const [seenA, seenCapped, seenB] = await Promise.all([
        loop(a, 'short', expB - 300),
        loop(capped, 'short', expB - 300),
        loop(b, 'stuck', expB - 300),
      ]);

      // Nobody sends a min_ttl of their own.
      for (const c of [a, capped, b]) for (const rpc of c.gets()) assert.equal(rpc.request.minTtl, undefined);

      // 10 % of 10 s: the copy is renewed once, at 90 % of its lifetime, and tokenvend (which
      // replaced it at about 80 %) has a new one ready.
      const lifeA = expA - a.gets()[0].at;
      assert.equal(a.gets().length, 2, `RPCs at ${a.gets().map((c) => c.at - a.gets()[0].at)}`);
      const askA = a.gets()[1].at;
      assert.ok(askA >= expA - 0.1 * lifeA - 50, `asked ${expA - askA} ms before expiry`);
      assert.ok(askA <= expA - 0.1 * lifeA + 500, `asked only ${expA - askA} ms before expiry`);
      assert.equal(seenA.size, 2);

      // The cap shortens the margin.
      assert.equal(firstCapped.accessToken, firstA.accessToken);
      assert.equal(capped.gets().length, 2);
      assert.equal(seenCapped.size, 2);
      const askCapped = capped.gets()[1].at;
      assert.ok(askCapped >= expA - 300 - 50 && askCapped <= expA, `capped: asked ${expA - askCapped} ms before expiry`);

      // tokenvend could not replace `stuck`: it hands the same copy back, still inside its
      // margin; the loop keeps being served, and asks again at most once a second.
      assert.deepEqual([...seenB], [firstB.accessToken]);
      const asksB = b.gets().slice(1).map((c) => c.at);
      assert.ok(asksB.length >= 1 && asksB.length <= 2, `${asksB.length} RPCs inside the margin`);
      assert.ok(asksB[0] >= expB - 1500 - 50, `asked ${expB - asksB[0]} ms before expiry`);
      for (let i = 1; i < asksB.length; i += 1) assert.ok(asksB[i] - asksB[i - 1] >= 1000);
    } finally {
      for (const c of clients) c.client.close();
      await tv?.stop();
      await idp?.close();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  test('conformance stale_copy_while_unreachable', async () => {
    // 5 s tokens: a margin of 0.5 s to step into.
    const lifetimes = { brief: 5 };
    const dir = tempDir();
    let idp;
    let tv;
    let client;
    try {
      idp = await startIdp(lifetimes);
      tv = await startTokenvend({ config: writeConfig(dir, idp, lifetimes), probeProfile: 'brief' });
      const c = newClient(tv.target);
      client = c.client;
      const gets = c.gets;
      const copy = await client.getToken('brief');
      await tv.stop();
      const exp = copy.expiresAt.getTime();
      await sleep(exp - 250 - Date.now());
      // Inside its margin, tokenvend gone: the copy is still good for 250 ms, so it is served.
      const start = Date.now();
      assert.equal(await client.getToken('brief'), copy);
      assert.equal(await client.getToken('brief'), copy);
      assert.ok(Date.now() - start < 200, 'served without waiting for tokenvend');
      await sleep(50);
      assert.ok(gets().length >= 2, 'a refresh was tried');
      assert.equal(gets()[1].status, status.UNAVAILABLE);

      // Once it has expired there is nothing to serve.
      await sleep(exp + 50 - Date.now());
      await assert.rejects(client.getToken('brief'), (err) => err.code === status.UNAVAILABLE && err.retryable);
    } finally {
      client?.close();
      await tv?.stop();
      await idp?.close();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
