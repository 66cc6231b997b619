// Compiled (not run) by `npm run lint` to keep index.d.ts honest, against the real axios
// types: an AxiosInstance must fit attachTokenvend's structural parameter.
import axios, { AxiosError, CanceledError } from 'axios';
import { TokenClient, TokenvendError, attachTokenvend, tokenvendFetch, status, credentials, Token, TokenWatch } from '@tokenvend/client';

async function example(): Promise<void> {
  const client = new TokenClient('127.0.0.1:50051', { maxRefreshMarginMs: 30_000, credentials: credentials.createInsecure() });
  const token: Token = await client.getToken('demo', { minTtlMs: 1000, signal: AbortSignal.timeout(1000), timeoutMs: 500 });
  const when: Date = token.expiresAt;
  const auth: string | undefined = token.headers['authorization'];
  const replacement: Token = await client.reject('demo', token.accessToken);
  await client.reject('demo', replacement, { timeoutMs: 1000 });
  await client.invalidate('demo', token.accessToken);
  const watch: TokenWatch = client.watch('demo');
  const first: Token = await watch.ready;
  const live: boolean = watch.live;
  watch.close();
  const detach: () => void = attachTokenvend(axios.create(), client, 'demo');
  detach();
  attachTokenvend(axios, client, 'demo', { AxiosError, CanceledError })();
  const f: typeof fetch = tokenvendFetch(client, 'demo');
  await f('http://example.invalid', { signal: AbortSignal.timeout(1000) });
  try {
    await client.getToken('nope');
  } catch (err) {
    if (err instanceof TokenvendError && err.code === status.NOT_FOUND && !err.retryable) console.log(err.details, when, auth, first, live);
  }
  client.close();
}
void example;
