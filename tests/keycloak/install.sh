#!/usr/bin/env bash
# Installs the Keycloak server distribution that tests/keycloak.rs runs, once: Maven
# fetches it from Maven Central (checking its checksum) and it is unpacked into the cache
# directory, where the tests look for it. Keycloak needs Java 21 or later to run; the
# tests use the one found here (or TOKENVEND_KEYCLOAK_JAVA_HOME).
set -euo pipefail
version="${TOKENVEND_KEYCLOAK_VERSION:-26.5.6}"
cache="${TOKENVEND_KEYCLOAK_CACHE:-$HOME/.cache/tokenvend}"
home="$cache/keycloak-$version"
# What the tests use beyond the defaults: federated client authentication, token
# exchange, the JWT authorization grant.
features=client-auth-federated,token-exchange,jwt-authorization-grant
# The build below is the last step; its marker names the Java it was built for and the
# features, so that a change of either builds again.
marker="$home/.tokenvend-built"
[[ -e $marker && "$(sed -n 2p "$marker")" == "$features" ]] && exit 0

java_home="${TOKENVEND_KEYCLOAK_JAVA_HOME:-}"
if [[ -z $java_home ]]; then
  for jdk in /usr/lib/jvm/*/; do
    major="$(sed -n 's/^JAVA_VERSION="\([0-9]*\).*/\1/p' "$jdk/release" 2>/dev/null || true)"
    if [[ -n $major ]] && ((major >= 21)); then java_home="${jdk%/}"; fi
  done
fi
[[ -n $java_home ]] || { echo "Keycloak needs Java 21 or later: set TOKENVEND_KEYCLOAK_JAVA_HOME" >&2; exit 1; }

if [[ ! -x "$home/bin/kc.sh" ]]; then
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
fi
# Built once for an in-memory database and a local cache rather than a cluster, so that
# each start skips Quarkus' build step (25 s).
rm -f "$marker"
JAVA_HOME="$java_home" "$home/bin/kc.sh" build --db=dev-mem --cache=local \
  --features="$features" >"$home/build.log" 2>&1 ||
  { cat "$home/build.log" >&2; exit 1; }
printf '%s\n%s\n' "$java_home" "$features" >"$marker"
echo "Keycloak $version installed in $home"
