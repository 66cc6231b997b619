#!/usr/bin/env bash
# Installs the Go client from the module zip package.sh built (not from this source tree)
# into a scratch module, as a user would with `go get`, and gets a token with it from
# `$TOKENVEND_BIN serve --dev` on free loopback ports. Exits non-zero if any step fails.
#
#   client/go/install-test.sh OUTDIR      (OUTDIR: what package.sh OUTDIR wrote)
#
# The go command resolves the client from GOPROXY=file://OUTDIR into an empty module
# cache of its own, so that no copy extracted earlier can stand in for the artifact;
# the client's dependencies come from the machine's module cache, else the Go proxy.
set -euo pipefail
[[ $# -eq 1 ]] || { echo "usage: $0 OUTDIR" >&2; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)
out=$(cd "$1" && pwd)
module=github.com/tokenvend/tokenvend/client/go
version=v0.1.0
zip="$out/$module/@v/$version.zip"
[[ -f "$zip" ]] || { echo "install-test.sh: no $zip; run package.sh $1 first" >&2; exit 1; }
bin=${TOKENVEND_BIN:-$here/../../target/debug/tokenvend}
[[ -x "$bin" ]] || { echo "install-test.sh: no tokenvend binary at $bin (set TOKENVEND_BIN)" >&2; exit 1; }

shared_cache=$(go env GOMODCACHE)
work=$(mktemp -d)
server=""
cleanup() {
  if [[ -n "$server" ]]; then kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi
  chmod -R u+w "$work" 2>/dev/null || true # the module cache is read-only
  rm -rf "$work"
}
trap cleanup EXIT

export GOMODCACHE="$work/modcache"
export GOPROXY="file://$out,file://$shared_cache/cache/download,https://proxy.golang.org"
# The artifact is not in the public checksum database (it is not published yet); every
# dependency is checked against the go.sum lines the client ships.
export GONOSUMDB=$module
export GOFLAGS="${GOFLAGS:+$GOFLAGS }-mod=mod"
export GOTOOLCHAIN=local

mkdir "$work/hello"
cd "$work/hello"
go mod init example.com/hello >/dev/null 2>&1
python3 -c 'import sys, zipfile; sys.stdout.buffer.write(zipfile.ZipFile(sys.argv[1]).read(sys.argv[2]))' "$zip" "$module@$version/go.sum" >go.sum
cat >main.go <<'GO'
// hello gets a token for the demo profile and prints it, redacted.
package main

import (
	"context"
	"fmt"
	"os"
	"time"

	tokenvend "github.com/tokenvend/tokenvend/client/go"
)

func main() {
	tv, err := tokenvend.NewClient(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer tv.Close()
	// The server may still be starting: retry what Retryable says is worth retrying.
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		tok, err := tv.GetToken(ctx, "demo")
		cancel()
		if err == nil {
			fmt.Println(tok)
			return
		}
		if !tokenvend.Retryable(err) || time.Now().After(deadline) {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
GO
go get "$module@$version"
# -trimpath keeps the build cache's entries for the dependencies usable from a fresh
# module cache path, so that they are not compiled again on every run.
go build -trimpath -o hello .

# The client compiled is the artifact's: extracted from OUTDIR into the fresh cache.
dir=$(go list -m -f '{{.Dir}}' "$module")
[[ "$dir" == "$GOMODCACHE/"* && -f "$dir/LICENSE" ]] ||
  { echo "install-test.sh: $module came from $dir, not from the artifact" >&2; exit 1; }
grep -q "^$module $version h1:" go.sum || { echo "install-test.sh: no go.sum line for $module" >&2; exit 1; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
grpc=127.0.0.1:$(free_port)
admin=127.0.0.1:$(free_port)
"$bin" serve --dev --listen "$grpc" --admin-listen "$admin" >"$work/server.log" 2>&1 &
server=$!
if ! got=$(./hello "$grpc"); then
  echo "install-test.sh: hello failed; server log:" >&2
  cat "$work/server.log" >&2
  exit 1
fi
[[ "$got" == *"Profile: demo"* && "$got" == *"<redacted>"* ]] ||
  { echo "install-test.sh: unexpected output: $got" >&2; exit 1; }
echo "go install test: ok ($got)"
