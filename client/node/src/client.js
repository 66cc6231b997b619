'use strict';

const fs = require('node:fs');
const path = require('node:path');
const util = require('node:util');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO_DIR = path.join(__dirname, '..', 'proto');
const PROTO_FILE = 'tokenvend/v1/tokenvend.proto';

// The refresh margin of a local copy is 10 % of its lifetime, capped. tokenvend replaces a
// token at about 80 % of its lifetime, so at 90 % the next RPC is a hit in its cache.
const MARGIN_FRACTION = 0.1;
const DEFAULT_MAX_REFRESH_MARGIN_MS = 60_000;
// When tokenvend hands back a copy that is already inside its margin (it could not refresh
// it), the client asks again for that profile at most this often.
const REASK_INTERVAL_MS = 1_000;
// Backoff of a watch stream that ended or failed: doubled per failure up to the maximum.
const WATCH_BACKOFF_INITIAL_MS = 250;
const WATCH_BACKOFF_MAX_MS = 30_000;
const DEFAULT_TIMEOUT_MS = 10_000;
// Kubernetes rotates projected ServiceAccount tokens in place; re-reading at least this
// often bounds how long a rotated token can go unnoticed if the file's stat did not change.
const TOKEN_FILE_MAX_AGE_MS = 60_000;

let packageDefinition;
/** Loads the bundled proto once. protobufjs resolves google/protobuf/*.proto from its own copies. */
function loadProto() {
  if (!packageDefinition) {
    packageDefinition = protoLoader.loadSync(PROTO_FILE, {
      includeDirs: [PROTO_DIR],
      keepCase: false,
      longs: String,
      enums: String,
      defaults: true,
      oneofs: true,
    });
  }
  return grpc.loadPackageDefinition(packageDefinition).tokenvend.v1;
}

const CODE_NAMES = Object.fromEntries(
  Object.entries(grpc.status).map(([name, code]) => [code, name]),
);

const RETRYABLE = new Set([
  grpc.status.UNAVAILABLE,
  grpc.status.DEADLINE_EXCEEDED,
  grpc.status.RESOURCE_EXHAUSTED,
  grpc.status.ABORTED,
]);

/**
 * A failed tokenvend call. `code` is the gRPC status number (see `status`), `retryable`
 * says whether trying again later can succeed. The message names the cause and never
 * holds a token.
 */
class TokenvendError extends Error {
  /**
   * @param {{code: number, details?: string, message?: string, metadata?: grpc.Metadata}} grpcError
   * @param {unknown} [cause] what went wrong underneath; the gRPC error itself by default
   */
  constructor(grpcError, cause = grpcError) {
    const codeName = CODE_NAMES[grpcError.code] || 'UNKNOWN';
    super(`tokenvend: ${codeName}: ${grpcError.details || grpcError.message}`, { cause });
    this.name = 'TokenvendError';
    this.code = grpcError.code;
    this.codeName = codeName;
    this.details = grpcError.details || '';
    this.metadata = grpcError.metadata;
  }

  /** True for UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED and ABORTED. */
  get retryable() {
    return RETRYABLE.has(this.code);
  }
}

const REDACTED = '[redacted]';

/**
 * An access token with everything needed to call the resource API. The fields are plain
 * data; printing, inspecting or JSON-encoding the object redacts the token and the header
 * values, so a stray `console.log(token)` does not leak a credential.
 */
class Token {
  constructor(msg) {
    /** @type {string} */
    this.accessToken = msg.accessToken;
    /** @type {string} */
    this.tokenType = msg.tokenType;
    /** @type {Date} */
    this.expiresAt = timestampToDate(msg.expiresAt);
    /** @type {string[]} */
    this.scopes = [...(msg.scopes || [])];
    /** @type {Record<string, string>} */
    this.headers = { ...(msg.headers || {}) };
    /** @type {string} */
    this.profile = msg.profile;
    Object.freeze(this.scopes);
    Object.freeze(this.headers);
    Object.freeze(this);
  }

  /** Milliseconds until the token expires (negative once it has). */
  ttlMs(now = Date.now()) {
    return this.expiresAt.getTime() - now;
  }

  toJSON() {
    return {
      accessToken: REDACTED,
      tokenType: this.tokenType,
      expiresAt: this.expiresAt.toISOString(),
      scopes: this.scopes,
      headers: Object.fromEntries(Object.keys(this.headers).map((k) => [k, REDACTED])),
      profile: this.profile,
    };
  }

  toString() {
    return `Token(profile=${this.profile}, type=${this.tokenType}, expiresAt=${this.expiresAt.toISOString()}, accessToken=${REDACTED})`;
  }

  [util.inspect.custom](depth, options, inspect) {
    return `Token ${inspect(this.toJSON(), options)}`;
  }
}

function timestampToDate(ts) {
  if (!ts) return new Date(0);
  return new Date(Number(ts.seconds) * 1000 + Math.floor((ts.nanos || 0) / 1e6));
}

function msToDuration(ms) {
  const seconds = Math.floor(ms / 1000);
  return { seconds: String(seconds), nanos: Math.round((ms - seconds * 1000) * 1e6) };
}

/**
 * Reads a bearer token for tokenvend itself (e.g. a Kubernetes projected ServiceAccount
 * token) and notices when it rotates.
 */
class TokenFile {
  constructor(filePath) {
    this.path = filePath;
    this.value = null;
    this.stamp = null;
    this.readAt = 0;
  }

  async get() {
    const st = await fs.promises.stat(this.path);
    // A projected volume swaps a symlink, so the inode changes even if size and mtime match.
    const stamp = `${st.ino}:${st.size}:${st.mtimeMs}`;
    if (this.value === null || stamp !== this.stamp || Date.now() - this.readAt >= TOKEN_FILE_MAX_AGE_MS) {
      const value = (await fs.promises.readFile(this.path, 'utf8')).trim();
      this.value = value;
      this.stamp = stamp;
      this.readAt = Date.now();
    }
    return this.value;
  }
}

/**
 * A tokenvend client with a local copy of each profile's token.
 *
 * A copy is served without an RPC while its time left is more than its refresh margin:
 * 10 % of its lifetime, at most `maxRefreshMarginMs`. Inside the margin the copy is still
 * served, and tokenvend is asked for a newer token in the background, at most once a second
 * per profile; so a tokenvend that is briefly unreachable costs nothing until the copy
 * expires. Concurrent callers that need a token share one RPC.
 */
class TokenClient {
  /**
   * @param {string} target host:port of tokenvend, e.g. "127.0.0.1:50051"
   * @param {object} [options]
   * @param {grpc.ChannelCredentials} [options.credentials] default: plaintext
   * @param {string} [options.serviceAccountTokenFile] sent as `authorization: Bearer <content>`
   * @param {number} [options.maxRefreshMarginMs] cap on the refresh margin, default 60000
   * @param {number} [options.refreshMarginMs] deprecated name of maxRefreshMarginMs
   * @param {number} [options.timeoutMs] deadline of an RPC whose caller gives none, default 10000
   * @param {grpc.Channel} [options.channel] use this channel instead of creating one
   * @param {object} [options.channelOptions] grpc-js channel options
   * @param {grpc.Interceptor[]} [options.interceptors] grpc-js client interceptors
   */
  constructor(target, options = {}) {
    const {
      credentials = grpc.credentials.createInsecure(),
      serviceAccountTokenFile,
      refreshMarginMs,
      maxRefreshMarginMs = refreshMarginMs ?? DEFAULT_MAX_REFRESH_MARGIN_MS,
      timeoutMs = DEFAULT_TIMEOUT_MS,
      channel,
      channelOptions = {},
      interceptors,
    } = options;
    if (!target && !channel) throw new TypeError('TokenClient: a target (host:port) or a channel is required');
    if (!(maxRefreshMarginMs >= 0)) throw new RangeError('TokenClient: maxRefreshMarginMs must be >= 0');
    if (!(timeoutMs > 0)) throw new RangeError('TokenClient: timeoutMs must be > 0');

    const { TokenService } = loadProto();
    const clientOptions = { ...channelOptions };
    if (channel) clientOptions.channelOverride = channel;
    if (interceptors) clientOptions.interceptors = interceptors;
    this._stub = new TokenService(target || 'unused', credentials, clientOptions);
    this._tokenFile = serviceAccountTokenFile ? new TokenFile(serviceAccountTokenFile) : null;
    this.maxRefreshMarginMs = maxRefreshMarginMs;
    this.timeoutMs = timeoutMs;
    /** @type {Map<string, {token: Token, marginMs: number}>} the local copies */
    this._copies = new Map();
    /** @type {Map<string, number>} when each profile's last GetToken started */
    this._lastAsk = new Map();
    /** @type {Map<string, Flight>} the GetToken RPC under way for each profile */
    this._inflight = new Map();
    /** @type {Map<string, Watcher>} */
    this._watchers = new Map();
    this._closed = false;
  }

  /** @deprecated use maxRefreshMarginMs */
  get refreshMarginMs() {
    return this.maxRefreshMarginMs;
  }

  /**
   * Returns a token for `profile`: the local copy while it is fresh enough, else one from
   * tokenvend.
   *
   * @param {string} profile
   * @param {object} [opts]
   * @param {number} [opts.minTtlMs] the token must stay valid at least this long
   * @param {AbortSignal} [opts.signal] aborts the wait (and the RPC, if no one else waits for it)
   * @param {number} [opts.timeoutMs] deadline for getting the token, default the client's
   * @param {string} [opts.rejectedToken] the access token the resource API just refused;
   *   prefer `reject(profile, token)`
   * @returns {Promise<Token>}
   */
  async getToken(profile, opts = {}) {
    const { minTtlMs = 0, rejectedToken = '', signal, timeoutMs = this.timeoutMs } = opts;
    if (typeof profile !== 'string' || profile === '') throw new TypeError('getToken: profile must be a non-empty string');
    if (!(minTtlMs >= 0)) throw new RangeError('getToken: minTtlMs must be >= 0');
    if (!(timeoutMs > 0)) throw new RangeError('getToken: timeoutMs must be > 0');
    if (typeof rejectedToken !== 'string') throw new TypeError('getToken: rejectedToken must be a string');
    if (this._closed) throw new TokenvendError({ code: grpc.status.CANCELLED, details: 'the client is closed' });
    if (signal?.aborted) throw abortError(signal);
    const wait = { deadline: Date.now() + timeoutMs, timeoutMs, signal };

    // Each turn returns, joins a matching RPC, or waits for an unrelated one to settle and
    // looks again; after an unrelated RPC there is a new copy or none pending, so this ends.
    for (;;) {
      let copy = this._copies.get(profile);
      if (copy && rejectedToken && copy.token.accessToken === rejectedToken) {
        this._copies.delete(profile);
        copy = undefined;
      }
      if (copy) {
        const ttl = copy.token.ttlMs();
        // A live watch stream delivers every replacement as tokenvend makes it, so its
        // copy needs no margin of its own.
        const margin = this._watchers.get(profile)?.live ? 0 : copy.marginMs;
        if (ttl > minTtlMs + margin) return copy.token;
        if (ttl > minTtlMs) {
          // Inside the margin but still good enough: serve it, and ask for a newer one
          // without making this caller wait (and without failing it if tokenvend is down).
          this._refreshInBackground(profile, minTtlMs);
          return copy.token;
        }
      }

      let flight = this._inflight.get(profile);
      if (!flight) flight = this._startFlight(profile, minTtlMs, rejectedToken, wait.deadline);
      else if (flight.rejected !== rejectedToken || flight.minTtlMs < minTtlMs) {
        // Another kind of RPC is under way; its answer may well satisfy this call too.
        await this._join(flight, wait).catch((err) => {
          if (err.ownWait) throw err;
        });
        continue;
      }
      try {
        return await this._join(flight, wait);
      } catch (err) {
        // The RPC ran out of the deadline of the caller that started it; this caller has
        // time left, so it starts another.
        if (!err.ownWait && err.code === grpc.status.DEADLINE_EXCEEDED && wait.deadline - Date.now() > 10) continue;
        throw err;
      }
    }
  }

  /**
   * Reports that the resource API refused `token` (HTTP 401) and returns its replacement.
   * Concurrent reports of one token make a single RPC, and a report of a token that is no
   * longer the local copy makes none: the newer copy is returned.
   *
   * @param {string} profile
   * @param {string | Token} token the refused access token (or the Token it came in)
   * @param {{signal?: AbortSignal, timeoutMs?: number}} [opts]
   * @returns {Promise<Token>}
   */
  reject(profile, token, opts = {}) {
    const rejectedToken = typeof token === 'string' ? token : token?.accessToken;
    if (typeof rejectedToken !== 'string' || rejectedToken === '') {
      return Promise.reject(new TypeError('reject: token must be a non-empty string or a Token'));
    }
    return this.getToken(profile, { signal: opts.signal, timeoutMs: opts.timeoutMs, rejectedToken });
  }

  /** @deprecated use `reject(profile, token)` */
  invalidate(profile, token) {
    return this.reject(profile, token);
  }

  /**
   * Keeps the local copy of `profile` current through a `WatchToken` stream, so that
   * `getToken` never waits for tokenvend. The stream is reopened with backoff when it ends
   * or fails. Watching a profile twice shares one stream; it closes when every handle has.
   *
   * @param {string} profile
   * @returns {TokenWatch}
   */
  watch(profile) {
    if (typeof profile !== 'string' || profile === '') throw new TypeError('watch: profile must be a non-empty string');
    if (this._closed) throw new Error('watch: the client is closed');
    let watcher = this._watchers.get(profile);
    if (!watcher) {
      watcher = new Watcher(this, profile);
      this._watchers.set(profile, watcher);
    }
    return watcher.handle();
  }

  /** Lists the profiles this caller may use. Never returns a secret or a token. */
  async listProfiles({ timeoutMs = this.timeoutMs } = {}) {
    const res = await this._unary('listProfiles', {}, Date.now() + timeoutMs, {});
    return res.profiles.map((p) => ({
      name: p.name,
      grant: p.grant,
      tokenEndpointHost: p.tokenEndpointHost,
      scopes: p.scopes,
      cacheState: p.cacheState,
      expiresAt: p.expiresAt ? timestampToDate(p.expiresAt) : null,
      lastRefresh: p.lastRefresh ? timestampToDate(p.lastRefresh) : null,
      lastError: p.lastError,
    }));
  }

  /** Drops every local copy (tokenvend's cache is untouched). */
  clearCache() {
    this._copies.clear();
  }

  /** Stops every watch and closes the gRPC channel; calls still waiting for it fail. */
  close() {
    this._closed = true;
    for (const watcher of this._watchers.values()) watcher.stop();
    this._watchers.clear();
    this._stub.close();
  }

  /** Keeps `token` as the local copy of its profile, received now. */
  _keep(profile, token) {
    const lifetime = token.ttlMs();
    const marginMs = Math.max(0, Math.min(lifetime * MARGIN_FRACTION, this.maxRefreshMarginMs));
    this._copies.set(profile, { token, marginMs });
  }

  _refreshInBackground(profile, minTtlMs) {
    if (this._inflight.has(profile) || this._closed) return;
    if (Date.now() - (this._lastAsk.get(profile) ?? 0) < REASK_INTERVAL_MS) return;
    // The copy stays in use whatever happens here; the next caller sees the outcome. A
    // caller who joins and gives up does not cancel it: it was started for everyone.
    this._startFlight(profile, minTtlMs, '', Date.now() + this.timeoutMs).background = true;
  }

  /**
   * Starts a GetToken RPC that callers then join. Its gRPC deadline is that of the caller
   * that starts it; it is cancelled once every caller that joined it has given up.
   */
  _startFlight(profile, minTtlMs, rejectedToken, deadline) {
    const request = { profile, rejectedToken };
    // Only a caller's own minimum goes to tokenvend: one made up here from the margin would
    // make tokenvend replace tokens it just replaced.
    if (minTtlMs > 0) request.minTtl = msToDuration(minTtlMs);
    /** @type {Flight} */
    const flight = {
      rejected: rejectedToken,
      minTtlMs,
      waiters: 0,
      settled: false,
      background: false,
      ctl: { call: null, cancelled: false },
    };
    this._lastAsk.set(profile, Date.now());
    flight.promise = this._unary('getToken', request, deadline, flight.ctl)
      .then((msg) => {
        const token = new Token(msg);
        this._keep(profile, token);
        return token;
      })
      .finally(() => {
        flight.settled = true;
        if (this._inflight.get(profile) === flight) this._inflight.delete(profile);
      });
    // Whoever joins sees the outcome; a background refresh has no one to see it.
    flight.promise.catch(() => {});
    this._inflight.set(profile, flight);
    return flight;
  }

  /** Waits for `flight` within the caller's deadline and signal. */
  _join(flight, { deadline, timeoutMs, signal }) {
    flight.waiters += 1;
    return new Promise((resolve, reject) => {
      let done = false;
      const finish = (settle, value, gaveUp) => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
        flight.waiters -= 1;
        if (gaveUp && flight.waiters === 0 && !flight.settled && !flight.background) {
          flight.ctl.cancelled = true;
          flight.ctl.call?.cancel();
        }
        settle(value);
      };
      const onAbort = () => finish(reject, abortError(signal), true);
      const timer = setTimeout(() => {
        const err = new TokenvendError({
          code: grpc.status.DEADLINE_EXCEEDED,
          details: `no token from tokenvend within ${timeoutMs} ms`,
        });
        err.ownWait = true;
        finish(reject, err, true);
      }, Math.max(0, deadline - Date.now()));
      signal?.addEventListener('abort', onAbort, { once: true });
      flight.promise.then(
        (token) => finish(resolve, token, false),
        (err) => finish(reject, err, false),
      );
    });
  }

  async _metadata() {
    const metadata = new grpc.Metadata();
    if (this._tokenFile) {
      let sa;
      try {
        sa = await this._tokenFile.get();
      } catch (err) {
        throw new TokenvendError(
          {
            code: grpc.status.UNAUTHENTICATED,
            details: `cannot read the ServiceAccount token file ${this._tokenFile.path}: ${err.message}`,
          },
          err,
        );
      }
      metadata.set('authorization', `Bearer ${sa}`);
    }
    return metadata;
  }

  async _unary(method, request, deadline, ctl) {
    const metadata = await this._metadata();
    return new Promise((resolve, reject) => {
      if (ctl.cancelled) {
        reject(new TokenvendError({ code: grpc.status.CANCELLED, details: 'every caller gave up' }));
        return;
      }
      ctl.call = this._stub[method](request, metadata, { deadline }, (err, res) => {
        if (err) reject(new TokenvendError(err));
        else resolve(res);
      });
    });
  }
}

/**
 * @typedef {object} Flight
 * @property {Promise<Token>} promise
 * @property {string} rejected the rejected token it reports ('' for none)
 * @property {number} minTtlMs
 * @property {number} waiters callers waiting for it
 * @property {boolean} settled
 * @property {boolean} background started by a copy entering its margin, not by a caller
 * @property {{call: grpc.ClientUnaryCall | null, cancelled: boolean}} ctl
 */

function abortError(signal) {
  const reason = signal.reason;
  // AbortSignal.timeout() aborts with a TimeoutError: a deadline, not a change of mind.
  const timedOut = reason instanceof Error && reason.name === 'TimeoutError';
  const err = new TokenvendError(
    {
      code: timedOut ? grpc.status.DEADLINE_EXCEEDED : grpc.status.CANCELLED,
      details: timedOut ? 'the caller\'s signal timed out before a token came' : 'the caller aborted',
    },
    reason,
  );
  err.ownWait = true;
  return err;
}

/**
 * A WatchToken stream for one profile, shared by every handle `watch` returned for it.
 */
class Watcher {
  constructor(client, profile) {
    this.client = client;
    this.profile = profile;
    /** True while the stream is open and has delivered a token. */
    this.live = false;
    this.refs = 0;
    this.failures = 0;
    this.stopped = false;
    this.call = null;
    this.timer = null;
    this.ready = new Promise((resolve, reject) => {
      this._resolveReady = resolve;
      this._rejectReady = reject;
    });
    // A handle's owner may never look at `ready`; its failure must not crash the process.
    this.ready.catch(() => {});
    this._start();
  }

  _start() {
    this._open().catch((err) => this._ended(err));
  }

  handle() {
    this.refs += 1;
    let open = true;
    const watcher = this;
    return {
      profile: this.profile,
      ready: this.ready,
      get live() {
        return open && watcher.live;
      },
      close() {
        if (!open) return;
        open = false;
        watcher.refs -= 1;
        if (watcher.refs === 0) watcher.stop();
      },
    };
  }

  stop() {
    if (this.stopped) return;
    this.stopped = true;
    this.live = false;
    clearTimeout(this.timer);
    this.call?.cancel();
    if (this.client._watchers.get(this.profile) === this) this.client._watchers.delete(this.profile);
    this._rejectReady(new TokenvendError({ code: grpc.status.CANCELLED, details: 'the watch was closed' }));
  }

  async _open() {
    let metadata;
    try {
      metadata = await this.client._metadata();
    } catch (err) {
      this._ended(err);
      return;
    }
    if (this.stopped) return;
    const call = this.client._stub.watchToken({ profile: this.profile }, metadata);
    this.call = call;
    let ended = false;
    const end = (err) => {
      if (ended) return;
      ended = true;
      this._ended(err);
    };
    call.on('data', (msg) => {
      const token = new Token(msg);
      this.client._keep(this.profile, token);
      this.live = true;
      this.failures = 0;
      this._resolveReady(token);
    });
    // grpc-js emits 'error' for a non-OK status and always 'status' at the end.
    call.on('error', (err) => end(new TokenvendError(err)));
    call.on('status', (st) => {
      if (st.code !== grpc.status.OK) end(new TokenvendError(st));
      else end(null);
    });
  }

  _ended(err) {
    this.live = false;
    this.call = null;
    if (this.stopped) return;
    // Before the first token, a lasting refusal is the caller's to see; the watch goes on
    // trying, since a configuration reload may add the profile.
    if (err && !err.retryable) this._rejectReady(err);
    const backoff = Math.min(WATCH_BACKOFF_MAX_MS, WATCH_BACKOFF_INITIAL_MS * 2 ** this.failures);
    this.failures += 1;
    // Jitter (50-100 %) so that many clients cut off together do not come back together.
    this.timer = setTimeout(() => this._start(), backoff * (0.5 + Math.random() / 2));
    this.timer.unref?.();
  }
}

/**
 * @typedef {object} TokenWatch
 * @property {string} profile
 * @property {Promise<Token>} ready settles with the first token, or fails on a lasting error
 * @property {boolean} live true while the stream is open and has delivered a token
 * @property {() => void} close
 */

module.exports = { TokenClient, Token, TokenvendError, status: grpc.status, credentials: grpc.credentials, loadProto, PROTO_DIR };
