'use strict';

const fs = require('node:fs');
const path = require('node:path');
const util = require('node:util');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO_DIR = path.join(__dirname, '..', 'proto');
const PROTO_FILE = 'tokenvend/v1/tokenvend.proto';

const DEFAULT_REFRESH_MARGIN_MS = 60_000;
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

/** A failed tokenvend call. `code` is the gRPC status number (see `status`). */
class TokenvendError extends Error {
  constructor(grpcError) {
    const codeName = CODE_NAMES[grpcError.code] || 'UNKNOWN';
    super(`tokenvend: ${codeName}: ${grpcError.details || grpcError.message}`, { cause: grpcError });
    this.name = 'TokenvendError';
    this.code = grpcError.code;
    this.codeName = codeName;
    this.details = grpcError.details || '';
    this.metadata = grpcError.metadata;
  }

  /** True for the codes where trying again later can succeed. */
  get retryable() {
    return (
      this.code === grpc.status.UNAVAILABLE ||
      this.code === grpc.status.DEADLINE_EXCEEDED ||
      this.code === grpc.status.RESOURCE_EXHAUSTED
    );
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
 * A tokenvend client with a local per-profile cache.
 *
 * The cache saves a round trip per outgoing request: a token is served locally while it has
 * more than `refreshMarginMs` (+ the caller's `minTtlMs`) left. Concurrent callers that
 * miss the cache for the same profile share one RPC.
 */
class TokenClient {
  /**
   * @param {string} target host:port of tokenvend, e.g. "127.0.0.1:50051"
   * @param {object} [options]
   * @param {grpc.ChannelCredentials} [options.credentials] default: plaintext
   * @param {string} [options.serviceAccountTokenFile] sent as `authorization: Bearer <content>`
   * @param {number} [options.refreshMarginMs] default 60000
   * @param {number} [options.timeoutMs] per-RPC deadline, default 10000
   * @param {grpc.Channel} [options.channel] use this channel instead of creating one
   * @param {object} [options.channelOptions] grpc-js channel options
   * @param {grpc.Interceptor[]} [options.interceptors] grpc-js client interceptors
   */
  constructor(target, options = {}) {
    const {
      credentials = grpc.credentials.createInsecure(),
      serviceAccountTokenFile,
      refreshMarginMs = DEFAULT_REFRESH_MARGIN_MS,
      timeoutMs = DEFAULT_TIMEOUT_MS,
      channel,
      channelOptions = {},
      interceptors,
    } = options;
    if (!target && !channel) throw new TypeError('TokenClient: a target (host:port) or a channel is required');
    if (!(refreshMarginMs >= 0)) throw new RangeError('TokenClient: refreshMarginMs must be >= 0');

    const { TokenService } = loadProto();
    const clientOptions = { ...channelOptions };
    if (channel) clientOptions.channelOverride = channel;
    if (interceptors) clientOptions.interceptors = interceptors;
    this._stub = new TokenService(target || 'unused', credentials, clientOptions);
    this._tokenFile = serviceAccountTokenFile ? new TokenFile(serviceAccountTokenFile) : null;
    this.refreshMarginMs = refreshMarginMs;
    this.timeoutMs = timeoutMs;
    /** @type {Map<string, Token>} */
    this._cache = new Map();
    /** @type {Map<string, {promise: Promise<Token>, rejected: string, minTtlMs: number}>} */
    this._inflight = new Map();
  }

  /**
   * Returns a token for `profile`, from the local cache when it is fresh enough.
   *
   * @param {string} profile
   * @param {object} [opts]
   * @param {number} [opts.minTtlMs] the token must stay valid at least this long
   * @param {string} [opts.rejectedToken] the access token the resource API just refused
   *   (HTTP 401): it is dropped locally and tokenvend is asked to replace it
   * @param {number} [opts.timeoutMs] deadline for the RPC, if one is needed
   * @returns {Promise<Token>}
   */
  async getToken(profile, opts = {}) {
    const { minTtlMs = 0, rejectedToken = '', timeoutMs = this.timeoutMs } = opts;
    if (typeof profile !== 'string' || profile === '') throw new TypeError('getToken: profile must be a non-empty string');
    if (!(minTtlMs >= 0)) throw new RangeError('getToken: minTtlMs must be >= 0');
    const neededMs = this.refreshMarginMs + minTtlMs;

    // Each turn either returns, joins a matching RPC, or waits for an unrelated one to
    // settle and looks again; the second turn always finds no RPC of its own kind pending
    // or starts one, so this ends.
    for (;;) {
      const cached = this._cache.get(profile);
      if (cached && rejectedToken && cached.accessToken === rejectedToken) {
        this._cache.delete(profile);
      } else if (cached && cached.ttlMs() > neededMs) {
        // Also covers a rejection that another caller already handled: the cache holds a
        // newer token than the rejected one, so tokenvend need not be asked again.
        return cached;
      }

      const pending = this._inflight.get(profile);
      if (!pending) return this._fetch(profile, minTtlMs, rejectedToken, timeoutMs);
      if (pending.rejected === rejectedToken && pending.minTtlMs >= minTtlMs) return pending.promise;
      await pending.promise.catch(() => {});
    }
  }

  /**
   * Reports that the resource API refused `token` (HTTP 401) and returns its replacement.
   * Same as `getToken(profile, {rejectedToken: token})`.
   */
  invalidate(profile, token) {
    return this.getToken(profile, { rejectedToken: token });
  }

  /** Lists the profiles this caller may use. Never returns a secret or a token. */
  async listProfiles({ timeoutMs = this.timeoutMs } = {}) {
    const res = await this._unary('listProfiles', {}, timeoutMs);
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

  /** Drops every locally cached token (the server's cache is untouched). */
  clearCache() {
    this._cache.clear();
  }

  /** Closes the gRPC channel. Pending calls fail with CANCELLED. */
  close() {
    this._stub.close();
  }

  _fetch(profile, minTtlMs, rejectedToken, timeoutMs) {
    const request = { profile, rejectedToken };
    if (minTtlMs > 0) request.minTtl = msToDuration(minTtlMs);
    const promise = this._unary('getToken', request, timeoutMs)
      .then((msg) => {
        const token = new Token(msg);
        this._cache.set(profile, token);
        return token;
      })
      .finally(() => {
        if (this._inflight.get(profile)?.promise === promise) this._inflight.delete(profile);
      });
    this._inflight.set(profile, { promise, rejected: rejectedToken, minTtlMs });
    return promise;
  }

  async _unary(method, request, timeoutMs) {
    const metadata = new grpc.Metadata();
    if (this._tokenFile) {
      let sa;
      try {
        sa = await this._tokenFile.get();
      } catch (err) {
        throw new TokenvendError({
          code: grpc.status.UNAUTHENTICATED,
          details: `cannot read the ServiceAccount token file ${this._tokenFile.path}: ${err.message}`,
        });
      }
      metadata.set('authorization', `Bearer ${sa}`);
    }
    return new Promise((resolve, reject) => {
      this._stub[method](request, metadata, { deadline: Date.now() + timeoutMs }, (err, res) => {
        if (err) reject(new TokenvendError(err));
        else resolve(res);
      });
    });
  }
}

module.exports = { TokenClient, Token, TokenvendError, status: grpc.status, credentials: grpc.credentials, loadProto, PROTO_DIR };
