'use strict';

const { TokenvendError, status } = require('./client');

// The token a request was sent with, kept off the enumerable config so it neither shows in
// logged errors nor gets copied into a retry (which picks its own token).
const SENT_TOKEN = Symbol('tokenvend.sentToken');
// Must survive axios' mergeConfig on the retry, hence a plain string key.
const RETRIED = '_tokenvendRetried';

function isNodeStream(body) {
  return body !== null && typeof body === 'object' && typeof body.pipe === 'function';
}

function isWebStream(body) {
  return body !== null && typeof body === 'object' && typeof body.getReader === 'function';
}

/** An AbortSignal that `getToken` can listen to, or undefined (axios also takes look-alikes). */
function usableSignal(signal) {
  return signal && typeof signal.addEventListener === 'function' ? signal : undefined;
}

/**
 * The axios error classes to reject with. An axios instance made by `axios.create()` does
 * not carry them, so they come from the options, the default instance, or the `axios`
 * package this one resolves to (a peer dependency: the application's).
 */
function axiosClasses(axiosInstance, options) {
  let AxiosError = options.AxiosError || axiosInstance.AxiosError;
  let CanceledError = options.CanceledError || axiosInstance.CanceledError;
  if (!AxiosError || !CanceledError) {
    // eslint-disable-next-line global-require
    const axios = require('axios');
    AxiosError = AxiosError || axios.AxiosError;
    CanceledError = CanceledError || axios.CanceledError;
  }
  return { AxiosError, CanceledError };
}

/**
 * The axios error for a token that could not be had: `ETIMEDOUT` when the request's
 * deadline passed, a `CanceledError` when its signal aborted it, else
 * `ERR_TOKENVEND_<gRPC code>` (e.g. `ERR_TOKENVEND_UNAVAILABLE`). The tokenvend error is
 * the `cause`; `config` is the request's.
 */
function toAxiosError(err, config, { AxiosError, CanceledError }) {
  if (err instanceof TokenvendError && err.code === status.CANCELLED && err.ownWait) {
    const canceled = new CanceledError(err.message, config);
    Object.defineProperty(canceled, 'cause', { value: err, writable: true, configurable: true });
    return canceled;
  }
  let code = 'ERR_TOKENVEND';
  if (err instanceof TokenvendError) {
    code = err.code === status.DEADLINE_EXCEEDED ? AxiosError.ETIMEDOUT || 'ETIMEDOUT' : `ERR_TOKENVEND_${err.codeName}`;
  }
  const axiosError = new AxiosError(err.message, code, config);
  // Non-enumerable like axios' own causes, so that structured loggers do not walk it.
  Object.defineProperty(axiosError, 'cause', { value: err, writable: true, configurable: true });
  return axiosError;
}

/**
 * Makes an axios instance authenticate every request with a tokenvend profile.
 *
 * Each request gets all of the token's headers. The request's `timeout` and `signal` bound
 * the wait for the token; a failure rejects with an `AxiosError` whose `cause` is the
 * `TokenvendError`. A 401 from the upstream API reports that exact token to tokenvend as
 * rejected and retries the request once with the replacement, unless the body is a stream
 * (it cannot be sent twice); a second 401 goes to the caller.
 *
 * @param {import('axios').AxiosInstance} axiosInstance
 * @param {import('./client').TokenClient} client
 * @param {string} profile
 * @param {{AxiosError?: Function, CanceledError?: Function}} [options] the classes to
 *   reject with, for an application whose axios is not the one `require('axios')` finds
 *   (an ES module import of axios has classes of its own)
 * @returns {() => void} detaches both interceptors
 */
function attachTokenvend(axiosInstance, client, profile, options = {}) {
  const classes = axiosClasses(axiosInstance, options);

  const requestId = axiosInstance.interceptors.request.use(async (config) => {
    let token;
    try {
      token = await client.getToken(profile, {
        signal: usableSignal(config.signal),
        timeoutMs: config.timeout > 0 ? config.timeout : undefined,
      });
    } catch (err) {
      throw toAxiosError(err, config, classes);
    }
    for (const [name, value] of Object.entries(token.headers)) config.headers.set(name, value);
    Object.defineProperty(config, SENT_TOKEN, { value: token.accessToken, configurable: true });
    return config;
  });

  const responseId = axiosInstance.interceptors.response.use(undefined, async (error) => {
    const config = error && error.config;
    const sent = config && config[SENT_TOKEN];
    // A 401 on the retry is not reported: a fresh token that is refused too points at
    // something a new token will not fix (permissions, audience), and reporting it would
    // make every request cost the identity provider a token.
    if (!error.response || error.response.status !== 401 || !sent || config[RETRIED]) throw error;

    // Report even when we cannot retry, so the next request gets a fresh token. If tokenvend
    // cannot be reached, the caller is better served by the upstream's 401 than by our error.
    try {
      await client.reject(profile, sent, {
        signal: usableSignal(config.signal),
        timeoutMs: config.timeout > 0 ? config.timeout : undefined,
      });
    } catch {
      throw error;
    }
    if (isNodeStream(config.data) || isWebStream(config.data)) throw error;
    config[RETRIED] = true;
    return axiosInstance.request(config);
  });

  return () => {
    axiosInstance.interceptors.request.eject(requestId);
    axiosInstance.interceptors.response.eject(responseId);
  };
}

/**
 * Returns a fetch-compatible function that authenticates with a tokenvend profile, with the
 * same 401 handling as `attachTokenvend`: report the token, retry once if the body can be
 * replayed, and hand a second 401 back as is.
 *
 * The request's `signal` bounds the wait for the token too (e.g. `AbortSignal.timeout(1000)`);
 * without one the client's `timeoutMs` applies. Failures reject as fetch's own do: with the
 * signal's reason when it aborted, else a `TypeError` whose `cause` is the `TokenvendError`.
 *
 * @param {import('./client').TokenClient} client
 * @param {string} profile
 * @param {{fetch?: typeof fetch}} [options] the underlying fetch (default: globalThis.fetch)
 * @returns {typeof fetch}
 */
function tokenvendFetch(client, profile, options = {}) {
  const baseFetch = options.fetch || globalThis.fetch;
  if (typeof baseFetch !== 'function') throw new TypeError('tokenvendFetch: no fetch implementation available');

  async function tokenFor(request, rejected) {
    const signal = request.signal;
    try {
      return rejected
        ? await client.reject(profile, rejected, { signal })
        : await client.getToken(profile, { signal });
    } catch (err) {
      if (signal.aborted) throw signal.reason;
      throw new TypeError(`fetch failed: no token from tokenvend (${err.message})`, { cause: err });
    }
  }

  async function send(request) {
    const token = await tokenFor(request);
    const headers = new Headers(request.headers);
    for (const [name, value] of Object.entries(token.headers)) headers.set(name, value);
    const response = await baseFetch(new Request(request, { headers }));
    return { token, response };
  }

  return async function fetchWithTokenvend(input, init) {
    const request = new Request(input, init);
    // A caller-supplied stream is consumed by the first send; anything else (string,
    // buffer, form, blob, a Request built from those) can be cloned up front.
    const replayable = !(init && (isWebStream(init.body) || isNodeStream(init.body)));
    const spare = replayable ? request.clone() : null;

    let first;
    try {
      first = await send(request);
    } catch (err) {
      if (spare && spare.body) spare.body.cancel().catch(() => {});
      throw err;
    }
    if (first.response.status !== 401) {
      if (spare && spare.body) spare.body.cancel().catch(() => {});
      return first.response;
    }

    try {
      await tokenFor(request, first.token.accessToken);
    } catch {
      return first.response;
    }
    if (!spare) return first.response;
    // Free the connection held by the unread 401 body before sending again.
    if (first.response.body) await first.response.body.cancel().catch(() => {});
    return (await send(spare)).response;
  };
}

module.exports = { attachTokenvend, tokenvendFetch };
