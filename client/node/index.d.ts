// Type declarations for @tokenvend/client (hand-written; the runtime is plain CommonJS).
// axios is an optional peer dependency, so nothing here imports its types: the axios
// integration is typed by the shape it uses, which every axios instance has.

import type { ChannelCredentials, Channel, ChannelOptions, Interceptor, Metadata, status as grpcStatus, credentials as grpcCredentials } from '@grpc/grpc-js';

export interface TokenClientOptions {
  /** Channel credentials; plaintext when omitted. Use `credentials.createSsl()` for TLS. */
  credentials?: ChannelCredentials;
  /**
   * A file whose content is sent as `authorization: Bearer <content>` on every call
   * (e.g. a Kubernetes projected ServiceAccount token). Re-read when it changes, and at
   * least once a minute.
   */
  serviceAccountTokenFile?: string;
  /**
   * Cap on the refresh margin. A local copy is served without an RPC while it has more
   * than its margin left: 10 % of its lifetime, at most this. Default 60000.
   */
  maxRefreshMarginMs?: number;
  /** @deprecated the old name of `maxRefreshMarginMs` */
  refreshMarginMs?: number;
  /** Deadline of an RPC whose caller gives none. Default 10000. */
  timeoutMs?: number;
  /** Use this channel instead of creating one for `target`. */
  channel?: Channel;
  channelOptions?: ChannelOptions;
  interceptors?: Interceptor[];
}

export interface CallOptions {
  /** Aborts the wait for the token (and the RPC, once no other caller waits for it). */
  signal?: AbortSignal;
  /** How long to wait for a token, if an RPC is needed. Default: the client's `timeoutMs`. */
  timeoutMs?: number;
}

export interface GetTokenOptions extends CallOptions {
  /** The token must stay valid at least this long. */
  minTtlMs?: number;
  /** The access token the resource API just refused with HTTP 401; prefer `reject()`. */
  rejectedToken?: string;
}

/** A live copy of a profile's token, kept current by a `WatchToken` stream. */
export interface TokenWatch {
  readonly profile: string;
  /** Settles with the first token; fails if the first attempts meet a lasting error. */
  readonly ready: Promise<Token>;
  /** True while the stream is open and has delivered a token. */
  readonly live: boolean;
  /** Ends this handle; the stream closes once every handle of the profile has. */
  close(): void;
}

/** An access token. Printing, inspecting or JSON-encoding it redacts the secret parts. */
export declare class Token {
  private constructor();
  readonly accessToken: string;
  readonly tokenType: string;
  readonly expiresAt: Date;
  readonly scopes: readonly string[];
  /** All headers to put on the upstream request, names in lower case. */
  readonly headers: Readonly<Record<string, string>>;
  readonly profile: string;
  /** Milliseconds until expiry (negative once expired). */
  ttlMs(now?: number): number;
  toJSON(): object;
  toString(): string;
}

export type CacheState =
  | 'CACHE_STATE_UNSPECIFIED'
  | 'CACHE_STATE_EMPTY'
  | 'CACHE_STATE_VALID'
  | 'CACHE_STATE_STALE'
  | 'CACHE_STATE_FAILED'
  /** No valid token, and only a person can fix it: authorize the profile again. */
  | 'CACHE_STATE_NEEDS_AUTHORIZATION';

export interface ProfileInfo {
  name: string;
  grant: string;
  tokenEndpointHost: string;
  scopes: string[];
  cacheState: CacheState;
  expiresAt: Date | null;
  lastRefresh: Date | null;
  lastError: string;
}

/** A failed tokenvend call. */
export declare class TokenvendError extends Error {
  /** The gRPC status code, one of `status`. */
  readonly code: number;
  /** The gRPC status name, e.g. "NOT_FOUND". */
  readonly codeName: string;
  /** The server's message. */
  readonly details: string;
  readonly metadata?: Metadata;
  /** True for UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED and ABORTED. */
  readonly retryable: boolean;
}

export declare class TokenClient {
  constructor(target: string, options?: TokenClientOptions);
  readonly maxRefreshMarginMs: number;
  /** @deprecated use `maxRefreshMarginMs` */
  readonly refreshMarginMs: number;
  readonly timeoutMs: number;
  getToken(profile: string, options?: GetTokenOptions): Promise<Token>;
  /**
   * Reports that the resource API refused `token` (HTTP 401) and returns its replacement.
   * Concurrent reports of one token make one RPC; a token that is no longer the local copy
   * makes none.
   */
  reject(profile: string, token: string | Token, options?: CallOptions): Promise<Token>;
  /** @deprecated use `reject(profile, token)` */
  invalidate(profile: string, token: string | Token): Promise<Token>;
  /** Keeps the local copy of `profile` current through a `WatchToken` stream. */
  watch(profile: string): TokenWatch;
  listProfiles(options?: { timeoutMs?: number }): Promise<ProfileInfo[]>;
  clearCache(): void;
  close(): void;
}

/** The part of an axios instance that `attachTokenvend` uses. */
export interface AxiosInstanceLike {
  interceptors: {
    request: { use(onFulfilled?: ((config: any) => any) | null, onRejected?: ((error: any) => any) | null, options?: any): number; eject(id: number): void };
    response: { use(onFulfilled?: ((response: any) => any) | null, onRejected?: ((error: any) => any) | null, options?: any): number; eject(id: number): void };
  };
  request(config: any): Promise<any>;
}

export interface AttachOptions {
  /**
   * The classes to reject with, when the application's axios is not the one
   * `require('axios')` finds from this package (an ES module import of axios has classes
   * of its own: pass `{ AxiosError, CanceledError }` from it for `instanceof` to hold).
   */
  AxiosError?: new (message?: string, code?: string, config?: any, request?: any, response?: any) => Error;
  CanceledError?: new (message?: string, config?: any, request?: any) => Error;
}

/**
 * Adds tokenvend to an axios instance; returns a function that removes it again. A failed
 * token fetch rejects with an `AxiosError` (`code` `ETIMEDOUT`, `ERR_CANCELED` or
 * `ERR_TOKENVEND_<gRPC code>`) whose `cause` is the `TokenvendError`.
 */
export declare function attachTokenvend(
  axiosInstance: AxiosInstanceLike,
  client: TokenClient,
  profile: string,
  options?: AttachOptions,
): () => void;

/** A fetch-compatible function that authenticates with a tokenvend profile. */
export declare function tokenvendFetch(
  client: TokenClient,
  profile: string,
  options?: { fetch?: typeof fetch },
): typeof fetch;

export declare const status: typeof grpcStatus;
export declare const credentials: typeof grpcCredentials;
/** The loaded `tokenvend.v1` package, for direct use of the generated service. */
export declare function loadProto(): any;
/** The directory holding the bundled tokenvend/v1/tokenvend.proto. */
export declare const PROTO_DIR: string;
