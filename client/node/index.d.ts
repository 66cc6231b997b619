// Type declarations for @tokenvend/client (hand-written; the runtime is plain CommonJS).

import type { ChannelCredentials, Channel, ChannelOptions, Interceptor, Metadata, status as grpcStatus, credentials as grpcCredentials } from '@grpc/grpc-js';
import type { AxiosInstance } from 'axios';

export interface TokenClientOptions {
  /** Channel credentials; plaintext when omitted. Use `credentials.createSsl()` for TLS. */
  credentials?: ChannelCredentials;
  /**
   * A file whose content is sent as `authorization: Bearer <content>` on every call
   * (e.g. a Kubernetes projected ServiceAccount token). Re-read when it changes, and at
   * least once a minute.
   */
  serviceAccountTokenFile?: string;
  /** A cached token is used only while it has more than this left (plus minTtlMs). Default 60000. */
  refreshMarginMs?: number;
  /** Deadline for each RPC. Default 10000. */
  timeoutMs?: number;
  /** Use this channel instead of creating one for `target`. */
  channel?: Channel;
  channelOptions?: ChannelOptions;
  interceptors?: Interceptor[];
}

export interface GetTokenOptions {
  /** The token must stay valid at least this long. */
  minTtlMs?: number;
  /** The access token the resource API just refused with HTTP 401. */
  rejectedToken?: string;
  /** Deadline for the RPC, if one is needed. */
  timeoutMs?: number;
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
  | 'CACHE_STATE_FAILED';

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
  /** True for UNAVAILABLE, DEADLINE_EXCEEDED and RESOURCE_EXHAUSTED. */
  readonly retryable: boolean;
}

export declare class TokenClient {
  constructor(target: string, options?: TokenClientOptions);
  readonly refreshMarginMs: number;
  readonly timeoutMs: number;
  getToken(profile: string, options?: GetTokenOptions): Promise<Token>;
  /** Same as `getToken(profile, { rejectedToken: token })`. */
  invalidate(profile: string, token: string): Promise<Token>;
  listProfiles(options?: { timeoutMs?: number }): Promise<ProfileInfo[]>;
  clearCache(): void;
  close(): void;
}

/** Adds tokenvend to an axios instance; returns a function that removes it again. */
export declare function attachTokenvend(axiosInstance: AxiosInstance, client: TokenClient, profile: string): () => void;

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
