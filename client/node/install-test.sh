#!/usr/bin/env bash
# Installs the npm tarball from OUTDIR (client/node/package.sh) into a scratch project, as a
# user would, with its dependencies from the npm registry and without axios, then:
#   - type-checks a TypeScript hello-world against the package's declarations (tsc --noEmit);
#   - runs a hello-world (an ES module, the harder case for a CommonJS package) that gets a
#     token from `$TOKENVEND_BIN serve --dev`, started here on free loopback ports.
# Exits non-zero if any step fails.
#
#   client/node/install-test.sh OUTDIR
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
outdir=$(cd "${1:?usage: client/node/install-test.sh OUTDIR}" && pwd)
shopt -s nullglob
tarballs=("$outdir"/tokenvend-client-*.tgz)
shopt -u nullglob
((${#tarballs[@]} == 1)) || { echo "install-test: expected one tokenvend-client-*.tgz in $outdir, found ${#tarballs[@]}" >&2; exit 1; }
tgz=${tarballs[0]}
bin=${TOKENVEND_BIN:-$here/../../target/debug/tokenvend}
[[ -x "$bin" ]] || { echo "install-test: no tokenvend binary at $bin (set TOKENVEND_BIN)" >&2; exit 1; }

work=$(mktemp -d)
server_pid=""
cleanup() {
  if [[ -n "$server_pid" ]]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
cd "$work"

cat >package.json <<'JSON'
{ "name": "tokenvend-install-test", "version": "1.0.0", "private": true }
JSON
npm install --no-audit --no-fund --loglevel=error "$tgz" typescript@~5.9 @types/node@~20.19
if [[ -e node_modules/axios ]]; then
  echo "install-test: installing the client pulled in axios; it must stay an optional peer" >&2
  exit 1
fi

cat >hello.ts <<'TS'
import { TokenClient, TokenvendError, Token, attachTokenvend, tokenvendFetch, status } from '@tokenvend/client';

async function main(target: string): Promise<void> {
  const client = new TokenClient(target, { maxRefreshMarginMs: 30_000 });
  const token: Token = await client.getToken('demo', { signal: AbortSignal.timeout(5000) });
  const again: Token = await client.reject('demo', token);
  const f: typeof fetch = tokenvendFetch(client, 'demo');
  const attach: typeof attachTokenvend = attachTokenvend;
  client.watch('demo').close();
  try {
    await client.getToken('missing');
  } catch (err) {
    if (err instanceof TokenvendError && err.code === status.NOT_FOUND) console.log(again.expiresAt, f, attach);
  }
  client.close();
}
void main;
TS
cat >tsconfig.json <<'JSON'
{
  "compilerOptions": {
    "strict": true, "noEmit": true, "skipLibCheck": false,
    "module": "node16", "moduleResolution": "node16", "target": "es2022", "types": ["node"]
  },
  "files": ["hello.ts"]
}
JSON
npx --no-install tsc -p tsconfig.json
echo "install-test: hello.ts type-checks without axios"

cat >hello.mjs <<'JS'
import { TokenClient } from '@tokenvend/client';

const client = new TokenClient(process.argv[2], { timeoutMs: 2000 });
const deadline = Date.now() + 30_000;
for (;;) {
  try {
    const token = await client.getToken('demo');
    if (!token.headers.authorization?.startsWith('Bearer ')) throw new Error('no authorization header');
    console.log(`hello: a ${token.tokenType} token for ${token.profile}, valid until ${token.expiresAt.toISOString()}`);
    break;
  } catch (err) {
    // tokenvend is still starting: ask again until the deadline.
    if (Date.now() > deadline) {
      console.error(`hello: no token: ${err.message}`);
      process.exit(1);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}
client.close();
JS

free_port() {
  node -e "const s=require('net').createServer().listen(0,'127.0.0.1',()=>{console.log(s.address().port);s.close()})"
}
port=$(free_port)
admin_port=$(free_port)
"$bin" serve --dev --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin_port" >"$work/tokenvend.log" 2>&1 &
server_pid=$!
if ! node hello.mjs "127.0.0.1:$port"; then
  echo "install-test: tokenvend's log:" >&2
  cat "$work/tokenvend.log" >&2
  exit 1
fi
echo "install-test: node client from $(basename "$tgz") works"
