// Loopback OAuth 2.0 authorization server (panva/oidc-provider) used by the
// tokenvend Rust end-to-end tests. See README.md for the stdout contract.
//
// stdout: exactly one line of JSON once listening; everything else -> stderr.
// Exits when stdin closes or on SIGTERM/SIGINT.
//
// Environment:
//   TV_JWT_JWKS  a JWK Set (JSON) of public keys; when set, client `tv-jwt`
//                (private_key_jwt) is registered with it.
//   TV_TLS_CERT, TV_TLS_KEY  when set, serve HTTPS with this certificate and key (PEM
//                files), asking every client for a certificate (RFC 8705), and register
//                `tv-mtls` (tls_client_auth, subject CN=tv-mtls, its certificate
//                verified against the CA in TV_TLS_CLIENT_CA) and `tv-self-signed`
//                (self_signed_tls_client_auth, the certificate in TV_SELF_SIGNED_CERT).
//                Start node with NODE_EXTRA_CA_CERTS naming the server's CA, so that
//                the discovery fetch below trusts it.
//   TV_INTERACTIVE=1  a person signs in and consents on real pages (see below) instead of
//                the automatic interaction, for the browser tests (tests/browser).
//   TV_CODE_REDIRECT_URIS  extra redirect URIs of `tv-code`, space-separated (tokenvend's
//                admin listener's `/oauth/callback` on the port a test picked).
//   TV_ADMIN_WEB  when set, `tv-code` may also redirect to tokenvend's admin page
//                (http://127.0.0.1:<any port>/oauth/callback), and client `tv-admin`
//                (client_secret_basic, redirect http://127.0.0.1:<any port>/login/callback)
//                is registered for the admin page's OpenID Connect login.

import { createServer as createHttpServer } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import { readFileSync } from 'node:fs';
import { X509Certificate, generateKeyPairSync, randomBytes } from 'node:crypto';

// oidc-provider (and its deps) may log via console.*; keep stdout clean.
console.log = console.info = console.debug = (...args) => console.error(...args);

const { default: Provider } = await import('oidc-provider');

const CLIENT_SECRET = 's3cr+t/=:%&?-interop-secret';
const SCOPE = 'api:read';
// The client that the authorization-code tests drive through /auth, and whose
// refresh tokens rotate on every use.
const CODE_CLIENT = 'tv-code';
// The one end user; the interaction handler below logs them in and consents
// on their behalf without any page.
const ACCOUNT_ID = 'interop-user';
// Its password on the interactive login page (TV_INTERACTIVE).
const PASSWORD = 'interop-password';
const interactive = process.env.TV_INTERACTIVE === '1';

function log(...args) {
  process.stderr.write(`[oidc-provider] ${args.join(' ')}\n`);
}

// Fresh RS256 signing key per run (RS256 is oidc-provider's default client
// signing alg), so no "development-only keys" are used.
const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const jwk = { ...privateKey.export({ format: 'jwk' }), kid: 'interop-rs256', use: 'sig', alg: 'RS256' };

const tls = process.env.TV_TLS_CERT !== undefined;
// The certificate is asked for but not required by the TLS layer: oidc-provider decides,
// per client authentication method, what a certificate must be.
const server = tls
  ? createHttpsServer({
    cert: readFileSync(process.env.TV_TLS_CERT),
    key: readFileSync(process.env.TV_TLS_KEY),
    ca: readFileSync(process.env.TV_TLS_CLIENT_CA),
    requestCert: true,
    rejectUnauthorized: false,
  })
  : createHttpServer();
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(0, '127.0.0.1', resolve);
});
const { port } = server.address();
const issuer = `${tls ? 'https' : 'http'}://127.0.0.1:${port}`;

const client = (clientId, method) => ({
  client_id: clientId,
  client_secret: CLIENT_SECRET,
  token_endpoint_auth_method: method,
  grant_types: ['client_credentials'],
  response_types: [],
  redirect_uris: [],
  scope: SCOPE,
});

const clients = [
  client('tv-basic', 'client_secret_basic'),
  client('tv-post', 'client_secret_post'),
  {
    client_id: CODE_CLIENT,
    client_secret: CLIENT_SECRET,
    token_endpoint_auth_method: 'client_secret_post',
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    // A native client with a loopback redirect URI may use any port
    // (RFC 8252 §7.3; oidc-provider ignores the port for these), so the Rust
    // test picks a free one for tokenvend's redirect listener.
    application_type: 'native',
    redirect_uris: [
      'http://127.0.0.1/cb',
      ...(process.env.TV_CODE_REDIRECT_URIS ?? '').split(' ').filter(Boolean),
    ],
    scope: `openid offline_access ${SCOPE}`,
  },
];
if (process.env.TV_ADMIN_WEB) {
  clients.find((c) => c.client_id === CODE_CLIENT).redirect_uris.push('http://127.0.0.1/oauth/callback');
  clients.push({
    client_id: 'tv-admin',
    client_secret: CLIENT_SECRET,
    token_endpoint_auth_method: 'client_secret_basic',
    grant_types: ['authorization_code'],
    response_types: ['code'],
    application_type: 'native',
    redirect_uris: ['http://127.0.0.1/login/callback'],
    scope: 'openid',
  });
}
if (process.env.TV_JWT_JWKS) {
  clients.push({
    ...client('tv-jwt', 'private_key_jwt'),
    client_secret: undefined,
    token_endpoint_auth_signing_alg: 'ES256',
    jwks: JSON.parse(process.env.TV_JWT_JWKS),
  });
}

if (tls) {
  const mtls = { ...client('tv-mtls', 'tls_client_auth'), client_secret: undefined };
  clients.push({ ...mtls, tls_client_auth_subject_dn: 'CN=tv-mtls' });
  const der = new X509Certificate(readFileSync(process.env.TV_SELF_SIGNED_CERT)).raw;
  const { publicKey } = new X509Certificate(der);
  clients.push({
    ...client('tv-self-signed', 'self_signed_tls_client_auth'),
    client_secret: undefined,
    jwks: { keys: [{ ...publicKey.export({ format: 'jwk' }), x5c: [der.toString('base64')] }] },
  });
}

const provider = new Provider(issuer, {
  clients,
  clientAuthMethods: [
    'client_secret_basic', 'client_secret_jwt', 'client_secret_post', 'private_key_jwt', 'none',
    ...(tls ? ['tls_client_auth', 'self_signed_tls_client_auth'] : []),
  ],
  scopes: ['openid', 'offline_access', SCOPE],
  features: {
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    devInteractions: { enabled: false },
    mTLS: {
      enabled: tls,
      tlsClientAuth: tls,
      selfSignedTlsClientAuth: tls,
      getCertificate(ctx) {
        const peer = ctx.socket.getPeerCertificate?.();
        return peer?.raw ? new X509Certificate(peer.raw) : undefined;
      },
      // Verified by the TLS layer against TV_TLS_CLIENT_CA.
      certificateAuthorized(ctx) {
        return ctx.socket.authorized === true;
      },
      certificateSubjectMatches(ctx, property, expected) {
        if (property !== 'tls_client_auth_subject_dn') return false;
        return expected === `CN=${ctx.socket.getPeerCertificate().subject?.CN}`;
      },
    },
  },
  // Refresh tokens are issued by the stock rule: the client may use the
  // refresh_token grant and was granted offline_access, which oidc-provider
  // keeps only when the authorization request says prompt=consent (OpenID
  // Connect Core §11). tv-code gets a new refresh token on every use, so each
  // refresh consumes the previous one.
  rotateRefreshToken(ctx) {
    return ctx.oidc.client.clientId === CODE_CLIENT;
  },
  ttl: { ClientCredentials: 300, AccessToken: 300 },
  jwks: { keys: [jwk] },
  cookies: { keys: [randomBytes(32).toString('base64url')] },
});

provider.on('server_error', (ctx, err) => log('server_error:', err?.stack ?? err));
provider.on('grant.error', (ctx, err) => log('grant.error:', err?.message, err?.error_description ?? ''));
provider.on('grant.success', (ctx) => log('grant.success: client', ctx.oidc.client?.clientId));

// Client metadata is validated lazily; load every client now so a bad config
// fails at startup (non-zero exit, no stdout line) instead of per request.
for (const { client_id: id } of clients) {
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

// Login and consent without pages (devInteractions is off): the first visit
// to /interaction/:uid logs the one account in and grants every requested
// scope, and oidc-provider redirects back to /auth/:uid, which then redirects
// to the client's redirect_uri with the code. A test's "browser" only has to
// follow redirects and carry cookies.
async function interaction(req, res) {
  const details = await provider.interactionDetails(req, res);
  const { params, prompt, grantId } = details;
  const accountId = details.session?.accountId ?? ACCOUNT_ID;
  const grant = grantId
    ? await provider.Grant.find(grantId)
    : new provider.Grant({ accountId, clientId: params.client_id });
  if (params.scope) grant.addOIDCScope(params.scope);
  const missing = prompt.details.missingResourceScopes ?? {};
  for (const [indicator, scopes] of Object.entries(missing)) {
    grant.addResourceScope(indicator, scopes.join(' '));
  }
  const result = {
    login: { accountId },
    consent: { grantId: await grant.save() },
  };
  log(`interaction ${prompt.name}: ${params.client_id} as ${accountId}, scope "${params.scope ?? ''}"`);
  await provider.interactionFinished(req, res, result, { mergeWithLastSubmission: false });
}

// Real pages for a real browser (TV_INTERACTIVE): a login form that checks the password,
// then a consent page listing what the client asks for, with Approve and Deny buttons.
// oidc-provider's own devInteractions pages would do, but they accept any password and
// load a web font from the internet, which a test machine may not reach.
function escape(text) {
  return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function page(res, status, title, body) {
  res.writeHead(status, {
    'content-type': 'text/html; charset=utf-8',
    'cache-control': 'no-store',
  });
  res.end(`<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>${escape(title)} - interop provider</title>
<style>body{font-family:sans-serif;max-width:28em;margin:3em auto}
label,input,button{display:block;margin:.4em 0}input{width:100%}</style></head>
<body><h1>${escape(title)}</h1>${body}</body></html>`);
}

// A form body of at most 4 KiB.
async function formBody(req) {
  let body = '';
  for await (const chunk of req) {
    body += chunk;
    if (body.length > 4096) throw new Error('form body too large');
  }
  return new URLSearchParams(body);
}

async function interactivePage(req, res, uid, action) {
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) throw new Error('interaction does not match the cookie');
  const { params, prompt, grantId } = details;
  const loginForm = (error) => page(res, error ? 401 : 200, 'Sign in', `
<p>Sign in to continue to <strong>${escape(params.client_id)}</strong>.</p>
${error ? `<p id="login-error" role="alert">${escape(error)}</p>` : ''}
<form method="post" action="/interaction/${escape(uid)}/login">
<label for="username">Username</label><input id="username" name="username" autocomplete="username" required>
<label for="password">Password</label><input id="password" name="password" type="password" autocomplete="current-password" required>
<button id="sign-in" type="submit">Sign in</button>
</form>`);

  if (action === undefined && prompt.name === 'login') return loginForm();
  if (action === undefined && prompt.name === 'consent') {
    const scopes = (params.scope ?? '').split(' ').filter(Boolean);
    return page(res, 200, 'Allow access', `
<p><strong>${escape(params.client_id)}</strong> asks for access to your account
<strong>${escape(details.session?.accountId ?? '')}</strong>:</p>
<ul id="scopes">${scopes.map((scope) => `<li>${escape(scope)}</li>`).join('')}</ul>
<form method="post" action="/interaction/${escape(uid)}/consent"><button id="approve" type="submit">Approve</button></form>
<form method="post" action="/interaction/${escape(uid)}/abort"><button id="deny" type="submit">Deny</button></form>`);
  }
  if (action === 'login' && prompt.name === 'login') {
    const form = await formBody(req);
    if (form.get('username') !== ACCOUNT_ID || form.get('password') !== PASSWORD) {
      log(`interaction login: wrong username or password for ${params.client_id}`);
      return loginForm('Wrong username or password.');
    }
    log(`interaction login: ${params.client_id} as ${ACCOUNT_ID}`);
    return provider.interactionFinished(req, res, { login: { accountId: ACCOUNT_ID } }, {
      mergeWithLastSubmission: false,
    });
  }
  if (action === 'consent' && prompt.name === 'consent') {
    const grant = grantId
      ? await provider.Grant.find(grantId)
      : new provider.Grant({ accountId: details.session.accountId, clientId: params.client_id });
    if (params.scope) grant.addOIDCScope(params.scope);
    for (const [indicator, scopes] of Object.entries(prompt.details.missingResourceScopes ?? {})) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
    log(`interaction consent: ${params.client_id}, scope "${params.scope ?? ''}"`);
    return provider.interactionFinished(req, res, { consent: { grantId: await grant.save() } }, {
      mergeWithLastSubmission: true,
    });
  }
  if (action === 'abort') {
    log(`interaction denied: ${params.client_id}`);
    return provider.interactionFinished(req, res, {
      error: 'access_denied',
      error_description: 'the person denied access',
    }, { mergeWithLastSubmission: false });
  }
  return page(res, 400, 'Unexpected step', `<p>This page does not fit step ${escape(prompt.name)}.</p>`);
}

const callback = provider.callback();
server.on('request', (req, res) => {
  const step = interactive
    && /^\/interaction\/([^/?]+)(?:\/(login|consent|abort))?(?:\?|$)/.exec(req.url);
  if (step && (req.method === 'POST') === (step[2] !== undefined)) {
    interactivePage(req, res, step[1], step[2]).catch((err) => {
      log('interaction failed:', err?.stack ?? err);
      if (!res.headersSent) res.writeHead(500, { 'content-type': 'text/plain' });
      res.end(`interaction failed: ${err?.message ?? err}\n`);
    });
    return;
  }
  if (!interactive && req.method === 'GET' && /^\/interaction\/[^/?]+(\?|$)/.test(req.url)) {
    interaction(req, res).catch((err) => {
      log('interaction failed:', err?.stack ?? err);
      if (!res.headersSent) res.writeHead(500, { 'content-type': 'text/plain' });
      res.end(`interaction failed: ${err?.message ?? err}\n`);
    });
    return;
  }
  callback(req, res);
});

// The endpoints as discovery publishes them; a failure here is a broken
// configuration: exit non-zero without a stdout line.
const metadata = await (await fetch(`${issuer}/.well-known/openid-configuration`)).json();
const line = JSON.stringify({
  issuer,
  token_endpoint: metadata.token_endpoint,
  authorization_endpoint: metadata.authorization_endpoint,
  introspection_endpoint: metadata.introspection_endpoint,
}) + '\n';

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
