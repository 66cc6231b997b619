'use strict';

// Starts the real tokenvend binary for a test file and a tiny upstream API to call.

const { spawn } = require('node:child_process');
const http = require('node:http');
const net = require('node:net');
const path = require('node:path');
const fs = require('node:fs');
const { TokenClient } = require('../src');

const DEFAULT_BIN = path.resolve(__dirname, '../../../target/debug/tokenvend');

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Spawns `tokenvend serve --dev` and resolves once GetToken("demo") succeeds. */
async function startTokenvend() {
  const bin = process.env.TOKENVEND_BIN || DEFAULT_BIN;
  if (!fs.existsSync(bin)) {
    throw new Error(`tokenvend binary not found at ${bin}: build it (cargo build -p tokenvend-server --bin tokenvend) or set TOKENVEND_BIN`);
  }
  const port = await freePort();
  const adminPort = await freePort();
  const target = `127.0.0.1:${port}`;
  const child = spawn(bin, ['serve', '--dev', '--listen', target, '--admin-listen', `127.0.0.1:${adminPort}`], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr.on('data', (d) => {
    stderr = (stderr + d).slice(-4000);
  });
  let exited = null;
  child.on('exit', (code, signal) => {
    exited = { code, signal };
  });

  const probe = new TokenClient(target, { timeoutMs: 2000 });
  try {
    const deadline = Date.now() + 30_000;
    for (;;) {
      if (exited) throw new Error(`tokenvend exited early (${JSON.stringify(exited)}):\n${stderr}`);
      try {
        await probe.getToken('demo');
        break;
      } catch (err) {
        if (Date.now() > deadline) throw new Error(`tokenvend not ready after 30 s: ${err.message}\n${stderr}`);
        await sleep(100);
      }
    }
  } catch (err) {
    child.kill('SIGTERM');
    throw err;
  } finally {
    probe.close();
  }

  return {
    target,
    async stop() {
      if (exited) return;
      const done = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
      await done;
      clearTimeout(timer);
    },
  };
}

/**
 * An upstream API that answers each request with the next status of `statuses` (the last
 * one repeats) and records the headers and body it got.
 */
async function startUpstream(statuses) {
  const requests = [];
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      requests.push({
        method: req.method,
        url: req.url,
        authorization: req.headers.authorization,
        headers: req.headers,
        body: Buffer.concat(chunks).toString('utf8'),
      });
      const status = statuses[Math.min(requests.length - 1, statuses.length - 1)];
      res.writeHead(status, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ status }));
    });
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    requests,
    close: () => new Promise((r) => server.close(r)),
  };
}

/** A grpc-js interceptor that counts RPCs and records the metadata each one sent. */
function rpcRecorder() {
  const grpc = require('@grpc/grpc-js');
  const calls = [];
  const interceptor = (options, nextCall) => {
    const record = { method: options.method_definition.path, metadata: null, request: null };
    return new grpc.InterceptingCall(nextCall(options), {
      start(metadata, listener, next) {
        record.metadata = metadata.clone();
        calls.push(record);
        next(metadata, listener);
      },
      sendMessage(message, next) {
        record.request = message;
        next(message);
      },
    });
  };
  return { calls, interceptor };
}

module.exports = { startTokenvend, startUpstream, rpcRecorder, sleep };
