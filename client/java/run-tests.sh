#!/usr/bin/env bash
# Builds the Java client (stubs generated from ../../proto, javac lint with -Werror) and runs
# its tests against the real tokenvend binary: $TOKENVEND_BIN, else ../../target/debug/tokenvend.
# They include the conformance scenarios (ConformanceTest, one test per id) and the Spring
# adapters with real RestClient and WebClient; several tokenvend processes are started on
# free loopback ports, the longest test waits out an 8 s token (about 45 s in all).
# Needs JDK 17+ and Maven 3.8+; everything else comes from Maven Central into ~/.m2
# (override with MAVEN_REPO_LOCAL=/some/dir).
set -euo pipefail
cd "$(dirname "$0")"

if [[ -z "${TOKENVEND_BIN:-}" ]]; then
  TOKENVEND_BIN="$(cd ../.. && pwd)/target/debug/tokenvend"
  if [[ ! -x "$TOKENVEND_BIN" ]]; then
    (cd ../.. && cargo build -p tokenvend-server --bin tokenvend)
  fi
fi
export TOKENVEND_BIN

args=(-B -q)
if [[ -n "${MAVEN_REPO_LOCAL:-}" ]]; then
  args+=("-Dmaven.repo.local=$MAVEN_REPO_LOCAL")
fi

start=$SECONDS
# Debian's Maven 3.8 prints stray colour resets even in batch mode; drop them.
mvn "${args[@]}" clean test 2>&1 | sed $'s/\x1b\\[0m//g'
# -q hides Surefire's summary; print the counts from its reports.
python3 - <<'PY'
import glob, xml.etree.ElementTree as ET
t = f = e = s = 0
for path in glob.glob("target/surefire-reports/TEST-*.xml"):
    r = ET.parse(path).getroot()
    t += int(r.get("tests")); f += int(r.get("failures")); e += int(r.get("errors")); s += int(r.get("skipped"))
print(f"java: {t - f - e - s} passed, {f + e} failed, {s} skipped")
PY
echo "java client: done in $((SECONDS - start)) s"
