'use strict';

// Starts the real tokenvend binary for a test file and a tiny upstream API to call.

const { spawn } = require('node:child_process');
const http = require('node:http');
const net = require('node:net');
const path = require('node:path');
const fs = require('node:fs');
const crypto = require('node:crypto');
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

/**
 * Spawns `tokenvend serve` (`--dev` unless a `config` file is given) and resolves once
 * GetToken(`probeProfile`) succeeds. `port` reuses a listen port, to restart a server.
 */
async function startTokenvend(options = {}) {
  // Test files run in parallel, and a port found free may be taken by another file's
  // server before this one binds it: on an early exit, try fresh ports.
  for (let attempt = 1; ; attempt += 1) {
    try {
      return await startTokenvendOnce(options);
    } catch (err) {
      if (!err.exitedEarly || options.port || attempt >= 3) throw err;
    }
  }
}

async function startTokenvendOnce({ config, port, probeProfile = 'demo' }) {
  const bin = process.env.TOKENVEND_BIN || DEFAULT_BIN;
  if (!fs.existsSync(bin)) {
    throw new Error(`tokenvend binary not found at ${bin}: build it (cargo build -p tokenvend-server --bin tokenvend) or set TOKENVEND_BIN`);
  }
  port = port || (await freePort());
  const adminPort = await freePort();
  const target = `127.0.0.1:${port}`;
  const mode = config ? ['--config', config] : ['--dev'];
  const child = spawn(bin, ['serve', ...mode, '--listen', target, '--admin-listen', `127.0.0.1:${adminPort}`], {
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
      if (exited) {
        throw Object.assign(new Error(`tokenvend exited early (${JSON.stringify(exited)}):\n${stderr}`), {
          exitedEarly: true,
        });
      }
      try {
        await probe.getToken(probeProfile);
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
    port,
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
 * A small OAuth 2.0 token endpoint whose tokens live `lifetimes[client_id]` seconds; it
 * answers 503 for the client ids in `failing`. tokenvend's dev issuer gives every token
 * 300 s, too long for a test to watch a copy age.
 */
async function startIdp(lifetimes) {
  const failing = new Set();
  const issued = [];
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const form = new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
      const clientId = form.get('client_id');
      if (req.url !== '/token' || !(clientId in lifetimes)) {
        res.writeHead(401, { 'content-type': 'application/json' });
        res.end('{"error":"invalid_client"}');
        return;
      }
      if (failing.has(clientId)) {
        res.writeHead(503, { 'content-type': 'application/json' });
        res.end('{"error":"temporarily_unavailable"}');
        return;
      }
      const accessToken = `${clientId}-${issued.length + 1}-${crypto.randomBytes(6).toString('hex')}`;
      issued.push({ clientId, accessToken, at: Date.now() });
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ access_token: accessToken, token_type: 'Bearer', expires_in: lifetimes[clientId] }));
    });
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return {
    tokenUrl: `http://127.0.0.1:${server.address().port}/token`,
    failing,
    issued,
    close: () =>
      new Promise((r) => {
        server.close(r);
        server.closeAllConnections();
      }),
  };
}

/**
 * Writes a tokenvend configuration with one client-credentials profile per entry of
 * `lifetimes` (profile name = client id), all using `idp`. Returns its path.
 */
function writeConfig(dir, idp, lifetimes) {
  const profiles = Object.keys(lifetimes)
    .map(
      (name) => `  ${name}:
    token_url: ${idp.tokenUrl}
    client_id: ${name}
    client_secret: { value: not-a-real-secret }
    retry: { initial: 200ms, max: 1s }
    idp_requests_per_minute: 600
`,
    )
    .join('');
  const file = path.join(dir, 'tokenvend.yaml');
  fs.writeFileSync(file, `server:\n  shutdown_delay: 0s\n  reload_interval: 0s\nprofiles:\n${profiles}`);
  return file;
}

/** A loopback TCP listener that accepts connections and never says a word. */
async function startSilentServer() {
  const sockets = new Set();
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => {});
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return {
    target: `127.0.0.1:${server.address().port}`,
    close: () =>
      new Promise((r) => {
        for (const s of sockets) s.destroy();
        server.close(r);
      }),
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
    const record = {
      method: options.method_definition.path.split('/').pop(),
      at: Date.now(),
      deadline: options.deadline,
      metadata: null,
      request: null,
      status: null,
    };
    return new grpc.InterceptingCall(nextCall(options), {
      start(metadata, listener, next) {
        record.metadata = metadata.clone();
        calls.push(record);
        next(metadata, {
          onReceiveStatus(st, nextStatus) {
            record.status = st.code;
            nextStatus(st);
          },
        });
      },
      sendMessage(message, next) {
        record.request = message;
        next(message);
      },
    });
  };
  return { calls, interceptor };
}

module.exports = { startTokenvend, startIdp, writeConfig, startSilentServer, startUpstream, rpcRecorder, freePort, sleep };
