'use strict';

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

/**
 * Makes an axios instance authenticate every request with a tokenvend profile.
 *
 * Each request gets all of the token's headers. A 401 from the upstream API reports that
 * exact token to tokenvend as rejected and retries the request once with the replacement,
 * unless the body is a stream (it cannot be sent twice); a second 401 goes to the caller.
 *
 * @param {import('axios').AxiosInstance} axiosInstance
 * @param {import('./client').TokenClient} client
 * @param {string} profile
 * @returns {() => void} detaches both interceptors
 */
function attachTokenvend(axiosInstance, client, profile) {
  const requestId = axiosInstance.interceptors.request.use(async (config) => {
    const token = await client.getToken(profile);
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
      await client.getToken(profile, { rejectedToken: sent });
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
 * @param {import('./client').TokenClient} client
 * @param {string} profile
 * @param {{fetch?: typeof fetch}} [options] the underlying fetch (default: globalThis.fetch)
 * @returns {typeof fetch}
 */
function tokenvendFetch(client, profile, options = {}) {
  const baseFetch = options.fetch || globalThis.fetch;
  if (typeof baseFetch !== 'function') throw new TypeError('tokenvendFetch: no fetch implementation available');

  async function send(request) {
    const token = await client.getToken(profile);
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

    const first = await send(request);
    if (first.response.status !== 401) {
      if (spare && spare.body) spare.body.cancel().catch(() => {});
      return first.response;
    }

    try {
      await client.getToken(profile, { rejectedToken: first.token.accessToken });
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
