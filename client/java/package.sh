#!/usr/bin/env bash
# Builds the Maven Central artifacts of io.tokenvend:tokenvend-client into OUTDIR: the jar,
# the sources jar, the javadoc jar and the pom, named as in a Maven repository
# (tokenvend-client-<version>[-sources|-javadoc].jar, tokenvend-client-<version>.pom).
# Unsigned: `mvn -Prelease deploy` signs and publishes (see README.md).
# Needs JDK 17+ and Maven 3.8+; downloads go to ~/.m2 (or MAVEN_REPO_LOCAL).
set -euo pipefail
if [[ $# -ne 1 ]]; then
  echo "usage: $0 OUTDIR" >&2
  exit 2
fi
mkdir -p "$1"
out="$(cd "$1" && pwd)"
cd "$(dirname "$0")"

args=(-B -q)
if [[ -n "${MAVEN_REPO_LOCAL:-}" ]]; then
  args+=("-Dmaven.repo.local=$MAVEN_REPO_LOCAL")
fi
# The tests are run-tests.sh's job; this builds what is published.
mvn "${args[@]}" clean package -DskipTests 2>&1 | sed $'s/\x1b\\[0m//g'

version="$(sed -n 's:^  <version>\(.*\)</version>$:\1:p' pom.xml | head -n 1)"
name="tokenvend-client-$version"
for f in "$name.jar" "$name-sources.jar" "$name-javadoc.jar"; do
  cp "target/$f" "$out/$f"
done
cp pom.xml "$out/$name.pom"
echo "java: $name.jar, -sources.jar, -javadoc.jar and .pom in $out"
