#!/usr/bin/env bash
# Installs the Keycloak server distribution that tests/keycloak.rs runs, once: Maven
# fetches it from Maven Central (checking its checksum) and it is unpacked into the cache
# directory, where the tests look for it. Keycloak needs Java 21 or later to run; the
# tests find one under /usr/lib/jvm or in TOKENVEND_KEYCLOAK_JAVA_HOME.
set -euo pipefail
version="${TOKENVEND_KEYCLOAK_VERSION:-26.5.6}"
cache="${TOKENVEND_KEYCLOAK_CACHE:-$HOME/.cache/tokenvend}"
home="$cache/keycloak-$version"
# The build below is the last step; its marker says the install is whole.
[[ -e "$home/.tokenvend-built" ]] && exit 0

java_home="${TOKENVEND_KEYCLOAK_JAVA_HOME:-}"
if [[ -z $java_home ]]; then
  for jdk in /usr/lib/jvm/*/; do
    major="$(sed -n 's/^JAVA_VERSION="\([0-9]*\).*/\1/p' "$jdk/release" 2>/dev/null || true)"
    if [[ -n $major ]] && ((major >= 21)); then java_home="${jdk%/}"; fi
  done
fi
[[ -n $java_home ]] || { echo "Keycloak needs Java 21 or later: set TOKENVEND_KEYCLOAK_JAVA_HOME" >&2; exit 1; }

mkdir -p "$cache"
rm -rf "$home"
tmp="$(mktemp -d "$cache/.keycloak-$version.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
mvn -q -B org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy \
  -Dartifact="org.keycloak:keycloak-quarkus-dist:$version:tar.gz" \
  -DoutputDirectory="$tmp" >"$tmp/mvn.log" 2>&1 || { cat "$tmp/mvn.log" >&2; exit 1; }
tar -xzf "$tmp/keycloak-quarkus-dist-$version.tar.gz" -C "$tmp"
# Moved into place only when whole, so that an interrupted install is not mistaken for one.
mv "$tmp/keycloak-$version" "$home"
# Built once for what the tests use (an in-memory database, a local cache rather than a
# cluster, federated client authentication, token exchange), so that each start skips Quarkus' build step (25 s).
JAVA_HOME="$java_home" "$home/bin/kc.sh" build --db=dev-mem --cache=local \
  --features=client-auth-federated,token-exchange >"$home/build.log" 2>&1 ||
  { cat "$home/build.log" >&2; exit 1; }
# The marker names the Java that runs it, for the tests.
echo "$java_home" >"$home/.tokenvend-built"
echo "Keycloak $version installed in $home"
