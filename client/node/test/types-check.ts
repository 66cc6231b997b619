// Compiled (not run) by `npm run lint` to keep index.d.ts honest.
import axios from 'axios';
import { TokenClient, TokenvendError, attachTokenvend, tokenvendFetch, status, credentials, Token } from '@tokenvend/client';

async function example(): Promise<void> {
  const client = new TokenClient('127.0.0.1:50051', { refreshMarginMs: 30_000, credentials: credentials.createInsecure() });
  const token: Token = await client.getToken('demo', { minTtlMs: 1000 });
  const when: Date = token.expiresAt;
  const auth: string | undefined = token.headers['authorization'];
  await client.invalidate('demo', token.accessToken);
  const detach: () => void = attachTokenvend(axios.create(), client, 'demo');
  detach();
  const f: typeof fetch = tokenvendFetch(client, 'demo');
  await f('http://example.invalid');
  try {
    await client.getToken('nope');
  } catch (err) {
    if (err instanceof TokenvendError && err.code === status.NOT_FOUND) console.log(err.details, when, auth);
  }
  client.close();
}
void example;
