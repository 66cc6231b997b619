// Loopback OAuth 2.0 authorization server (panva/oidc-provider) used by the
// tokenvend Rust end-to-end tests. See README.md for the stdout contract.
//
// stdout: exactly one line of JSON once listening; everything else -> stderr.
// Exits when stdin closes or on SIGTERM/SIGINT.

import { createServer } from 'node:http';
import { generateKeyPairSync, randomBytes } from 'node:crypto';

// oidc-provider (and its deps) may log via console.*; keep stdout clean.
console.log = console.info = console.debug = (...args) => console.error(...args);

const { default: Provider } = await import('oidc-provider');

const CLIENT_SECRET = 's3cr+t/=:%&?-interop-secret';
const SCOPE = 'api:read';

function log(...args) {
  process.stderr.write(`[oidc-provider] ${args.join(' ')}\n`);
}

// Fresh RS256 signing key per run (RS256 is oidc-provider's default client
// signing alg), so no "development-only keys" are used.
const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const jwk = { ...privateKey.export({ format: 'jwk' }), kid: 'interop-rs256', use: 'sig', alg: 'RS256' };

const server = createServer();
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(0, '127.0.0.1', resolve);
});
const { port } = server.address();
const issuer = `http://127.0.0.1:${port}`;

const client = (clientId, method) => ({
  client_id: clientId,
  client_secret: CLIENT_SECRET,
  token_endpoint_auth_method: method,
  grant_types: ['client_credentials'],
  response_types: [],
  redirect_uris: [],
  scope: SCOPE,
});

const provider = new Provider(issuer, {
  clients: [
    client('tv-basic', 'client_secret_basic'),
    client('tv-post', 'client_secret_post'),
  ],
  scopes: [SCOPE],
  features: {
    clientCredentials: { enabled: true },
    devInteractions: { enabled: false },
  },
  ttl: { ClientCredentials: 300 },
  jwks: { keys: [jwk] },
  cookies: { keys: [randomBytes(32).toString('base64url')] },
});

provider.on('server_error', (ctx, err) => log('server_error:', err?.stack ?? err));
provider.on('grant.error', (ctx, err) => log('grant.error:', err?.message, err?.error_description ?? ''));
provider.on('grant.success', (ctx) => log('grant.success: client', ctx.oidc.client?.clientId));

// Client metadata is validated lazily; load both clients now so a bad config
// fails at startup (non-zero exit, no stdout line) instead of per request.
for (const id of ['tv-basic', 'tv-post']) {
  if (!(await provider.Client.find(id))) throw new Error(`client ${id} failed to load`);
}

// oidc-provider treats client_secret_basic and client_secret_post as
// interchangeable (either is accepted for a client registered with one of
// them). Make the registered token_endpoint_auth_method binding so the Rust
// tests notice a client that uses the wrong mechanism. The check runs after
// the token endpoint succeeded; the issued token is simply never disclosed.
provider.use(async (ctx, next) => {
  await next();
  if (ctx.oidc?.route !== 'token' || ctx.status !== 200 || !ctx.oidc.client) return;
  const registered = ctx.oidc.client.clientAuthMethod;
  const used = ctx.headers.authorization !== undefined ? 'client_secret_basic'
    : ctx.oidc.params?.client_secret ? 'client_secret_post' : undefined;
  if (!['client_secret_basic', 'client_secret_post'].includes(registered) || used === registered) return;
  log(`rejecting ${ctx.oidc.client.clientId}: used ${used}, registered ${registered}`);
  ctx.status = 401;
  if (used === 'client_secret_basic') {
    ctx.set('WWW-Authenticate', `Basic realm="${issuer}", error="invalid_client"`);
  }
  ctx.body = {
    error: 'invalid_client',
    error_description: 'the provided authentication mechanism does not match the registered client authentication method',
  };
});

server.on('request', provider.callback());

const tokenEndpoint = new URL(provider.pathFor ? provider.pathFor('token') : '/token', issuer).href;
const discovered = await (async () => {
  try {
    const res = await fetch(`${issuer}/.well-known/openid-configuration`);
    return (await res.json()).token_endpoint;
  } catch (err) {
    log('discovery self-check failed:', err?.message ?? err);
    return undefined;
  }
})();
const line = JSON.stringify({ issuer, token_endpoint: discovered ?? tokenEndpoint }) + '\n';

let shuttingDown = false;
function shutdown(reason) {
  if (shuttingDown) return;
  shuttingDown = true;
  log(`shutting down (${reason})`);
  server.closeAllConnections?.();
  server.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 1000).unref();
}

process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));
process.stdin.on('end', () => shutdown('stdin closed'));
process.stdin.on('close', () => shutdown('stdin closed'));
process.stdin.on('error', () => shutdown('stdin error'));
process.stdin.resume();

process.stdout.write(line, () => log(`listening: ${line.trim()}`));
