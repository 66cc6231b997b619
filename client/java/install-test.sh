#!/usr/bin/env bash
# Installs io.tokenvend:tokenvend-client from the artifacts package.sh put in OUTDIR (not
# from this source tree) into the local Maven repository, builds a scratch project that
# depends on it, and runs a hello-world against `$TOKENVEND_BIN serve --dev` on free
# loopback ports. Exits non-zero if any step fails.
# The local repository is ~/.m2/repository (or MAVEN_REPO_LOCAL), so that grpc-java and the
# Maven plugins come from its cache; the client's own entry there is overwritten from OUTDIR.
set -euo pipefail
if [[ $# -ne 1 ]]; then
  echo "usage: $0 OUTDIR" >&2
  exit 2
fi
out="$(cd "$1" && pwd)"
: "${TOKENVEND_BIN:?set TOKENVEND_BIN to the tokenvend binary}"
bin="$(cd "$(dirname "$TOKENVEND_BIN")" && pwd)/$(basename "$TOKENVEND_BIN")"

pom="$(ls "$out"/tokenvend-client-*.pom | head -n 1)"
version="$(basename "$pom" .pom)"
version="${version#tokenvend-client-}"

args=(-B -q)
if [[ -n "${MAVEN_REPO_LOCAL:-}" ]]; then
  args+=("-Dmaven.repo.local=$MAVEN_REPO_LOCAL")
fi

work="$(mktemp -d)"
server_pid=""
cleanup() {
  if [[ -n "$server_pid" ]]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

mvn "${args[@]}" org.apache.maven.plugins:maven-install-plugin:3.1.3:install-file \
  -Dfile="$out/tokenvend-client-$version.jar" \
  -Dsources="$out/tokenvend-client-$version-sources.jar" \
  -Djavadoc="$out/tokenvend-client-$version-javadoc.jar" \
  -DpomFile="$pom" 2>&1 | sed $'s/\x1b\\[0m//g'

mkdir -p "$work/hello/src/main/java"
cat >"$work/hello/pom.xml" <<POM
<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>example</groupId>
  <artifactId>hello-tokenvend</artifactId>
  <version>1</version>
  <properties>
    <maven.compiler.release>17</maven.compiler.release>
    <project.build.sourceEncoding>UTF-8</project.build.sourceEncoding>
  </properties>
  <dependencies>
    <dependency>
      <groupId>io.tokenvend</groupId>
      <artifactId>tokenvend-client</artifactId>
      <version>$version</version>
    </dependency>
  </dependencies>
  <build>
    <plugins>
      <plugin>
        <groupId>org.apache.maven.plugins</groupId>
        <artifactId>maven-compiler-plugin</artifactId>
        <version>3.13.0</version>
      </plugin>
      <plugin>
        <groupId>org.apache.maven.plugins</groupId>
        <artifactId>maven-resources-plugin</artifactId>
        <version>3.3.1</version>
      </plugin>
    </plugins>
  </build>
</project>
POM
cat >"$work/hello/src/main/java/Hello.java" <<'JAVA'
import io.tokenvend.client.Token;
import io.tokenvend.client.TokenClient;
import io.tokenvend.client.TokenvendException;

public class Hello {
  public static void main(String[] args) throws TokenvendException {
    try (TokenClient tokens = TokenClient.create(args[0])) {
      Token token = tokens.getToken("demo");
      if (!token.headers().get("authorization").startsWith("Bearer ")) {
        throw new IllegalStateException("no bearer header");
      }
      System.out.println("hello-world: a token for " + token.profile() + ", valid until "
          + token.expiresAt());
    }
  }
}
JAVA

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
grpc_port="$(free_port)"
admin_port="$(free_port)"
"$bin" serve --dev --listen "127.0.0.1:$grpc_port" --admin-listen "127.0.0.1:$admin_port" \
  >"$work/tokenvend.log" 2>&1 </dev/null &
server_pid=$!

cd "$work/hello"
mvn "${args[@]}" compile org.apache.maven.plugins:maven-dependency-plugin:3.8.1:build-classpath -Dmdep.outputFile=classpath.txt 2>&1 |
  sed $'s/\x1b\\[0m//g'
# The classpath must hold the jar installed from OUTDIR.
grep -q "io/tokenvend/tokenvend-client/$version/tokenvend-client-$version.jar" classpath.txt
# The HTTP-library adapters' dependencies are optional: a plain user gets none of them.
if grep -Eq "okhttp|springframework|projectreactor" classpath.txt; then
  echo "java install test: optional dependencies leaked into a user's classpath" >&2
  exit 1
fi

for _ in $(seq 1 100); do
  if curl -fsS "http://127.0.0.1:$admin_port/readyz" >/dev/null 2>&1; then
    break
  fi
  if ! kill -0 "$server_pid" 2>/dev/null; then
    cat "$work/tokenvend.log" >&2
    echo "java install test: tokenvend exited" >&2
    exit 1
  fi
  sleep 0.1
done

java -cp "target/classes:$(cat classpath.txt)" Hello "127.0.0.1:$grpc_port"
echo "java install test: ok ($version from $out)"
