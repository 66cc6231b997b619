#!/usr/bin/env bash
# Installs Tokenvend.Client from the .nupkg that package.sh built (a local package source, not
# this source tree) into a scratch console project, and gets a token with it from
# `$TOKENVEND_BIN serve --dev` on free loopback ports. Exits non-zero if any step fails.
#
#   client/csharp/install-test.sh OUTDIR      (OUTDIR: what package.sh OUTDIR wrote)
#
# Needs a .NET 8 SDK and nuget.org for the client's dependencies. Without an SDK it prints a
# SKIP line and exits 0.
set -euo pipefail
[[ $# -eq 1 ]] || { echo "usage: $0 OUTDIR" >&2; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)
if ! command -v dotnet >/dev/null 2>&1 || [[ -z "$(dotnet --list-sdks 2>/dev/null)" ]]; then
  echo "SKIP csharp install test: no .NET SDK on PATH; nothing is installed or run"
  exit 0
fi
out=$(cd "$1" && pwd)
[[ -f "$out/Tokenvend.Client.0.1.0.nupkg" ]] || { echo "install-test.sh: no Tokenvend.Client.0.1.0.nupkg in $out; run package.sh first" >&2; exit 1; }
bin=${TOKENVEND_BIN:-$here/../../target/debug/tokenvend}
[[ -x "$bin" ]] || { echo "install-test.sh: no tokenvend binary at $bin (set TOKENVEND_BIN)" >&2; exit 1; }

work=$(mktemp -d)
server=""
cleanup() {
  if [[ -n "$server" ]]; then kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

cd "$work"
dotnet new console --nologo -o hello >/dev/null
cd hello
# A packages folder of its own, so that a Tokenvend.Client 0.1.0 cached earlier cannot stand
# in for the artifact.
export NUGET_PACKAGES="$work/packages"
dotnet add package Tokenvend.Client --version 0.1.0 --source "$out" --source https://api.nuget.org/v3/index.json
cat >Program.cs <<'CS'
using Tokenvend.Client;

using var tokens = new TokenClient(args[0]);
// The server may still be starting: retry what is retryable, for up to 30 s.
var giveUp = DateTime.UtcNow.AddSeconds(30);
while (true)
{
    try
    {
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(2));
        Token token = await tokens.GetTokenAsync("demo", timeout.Token);
        Console.WriteLine(token);
        return 0;
    }
    catch (Exception e) when (TokenvendException.IsRetryable(e) || e is OperationCanceledException)
    {
        if (DateTime.UtcNow > giveUp)
        {
            Console.Error.WriteLine(e.Message);
            return 1;
        }
        await Task.Delay(200);
    }
}
CS
dotnet build --nologo -c Release -o "$work/bin" >/dev/null
[[ -d "$NUGET_PACKAGES/tokenvend.client/0.1.0" ]] ||
  { echo "install-test.sh: Tokenvend.Client did not come from $out" >&2; exit 1; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
grpc=127.0.0.1:$(free_port)
admin=127.0.0.1:$(free_port)
"$bin" serve --dev --listen "$grpc" --admin-listen "$admin" >"$work/server.log" 2>&1 &
server=$!
if ! got=$(dotnet "$work/bin/hello.dll" "$grpc"); then
  echo "install-test.sh: hello failed; server log:" >&2
  cat "$work/server.log" >&2
  exit 1
fi
[[ "$got" == *"profile=demo"* && "$got" == *"<redacted>"* ]] ||
  { echo "install-test.sh: unexpected output: $got" >&2; exit 1; }
echo "csharp install test: ok ($got)"
