#!/usr/bin/env bash
# The Helm chart's checks, offline: `helm lint` and `helm template` with the default values
# and with ci/full-values.yaml (every optional feature on), the rendered manifests checked
# against the Kubernetes JSON schemas (kubernetes-validate, which ships them), and the
# configuration the default values render checked by `tokenvend check`.
#
# Installs its tools under target/tools: helm with `go install` at a pinned version, and
# kubernetes-validate from PyPI in a venv. Usage: helm/test.sh  (TOKENVEND_BIN to choose
# the binary; default target/debug/tokenvend, built if missing).
set -euo pipefail
cd "$(dirname "$0")/.."

HELM_VERSION=v3.21.4
KUBERNETES_VALIDATE_VERSION=1.37.0
# The Kubernetes version the manifests are validated against.
KUBERNETES_VERSION=1.33.0

tools="$PWD/target/tools"
chart=helm/tokenvend
out=target/helm
mkdir -p "$tools" "$out"

echo "--- helm $HELM_VERSION"
if ! "$tools/helm" version --short 2>/dev/null | grep -q "^$HELM_VERSION+"; then
  GOBIN="$tools" go install "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
fi
helm="$tools/helm"
# Keep helm away from the user's repositories, plugins and cache.
export HELM_CACHE_HOME="$PWD/$out/home/cache" HELM_CONFIG_HOME="$PWD/$out/home/config" \
  HELM_DATA_HOME="$PWD/$out/home/data"

echo "--- kubernetes-validate $KUBERNETES_VALIDATE_VERSION"
venv="$tools/venv-kubernetes-validate"
if ! "$venv/bin/pip" show kubernetes-validate 2>/dev/null | grep -qx "Version: $KUBERNETES_VALIDATE_VERSION"; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
fi

render() { # name, extra helm args...
  local name=$1
  shift
  echo "--- $name values: lint, template, validate"
  "$helm" lint --strict --kube-version "$KUBERNETES_VERSION" "$chart" "$@"
  "$helm" template tokenvend "$chart" --namespace tokenvend --kube-version "$KUBERNETES_VERSION" "$@" >"$out/$name.yaml"
  # Custom resources (ServiceMonitor) have no schema in the Kubernetes set: they get a
  # warning and are skipped. Everything else must validate, unknown fields included.
  "$venv/bin/kubernetes-validate" --strict --quiet --kubernetes-version "$KUBERNETES_VERSION" \
    "$out/$name.yaml"
}
render default
render full -f "$chart/ci/full-values.yaml"

echo "--- a grace period shorter than the drain is refused"
if "$helm" template tokenvend "$chart" --kube-version "$KUBERNETES_VERSION" --set terminationGracePeriodSeconds=20 >/dev/null 2>"$out/grace.err"; then
  echo "helm template accepted terminationGracePeriodSeconds=20 with a 25s drain" >&2
  exit 1
fi
grep -q "must exceed server.shutdown_delay" "$out/grace.err"

echo "--- an inline secret is refused"
if "$helm" template tokenvend "$chart" --kube-version "$KUBERNETES_VERSION" --set 'profiles.p.token_url=https://idp.example.com/t' --set 'profiles.p.client_id=a' --set 'profiles.p.client_secret.value=oops' >/dev/null 2>"$out/inline.err"; then
  echo "helm template accepted an inline secret" >&2
  exit 1
fi
grep -qi "value" "$out/inline.err"

echo "--- several replicas with a refresh-token profile and no Redis are refused"
if "$helm" template tokenvend "$chart" --kube-version "$KUBERNETES_VERSION" --set 'profiles.jadu.token_url=https://idp.example.com/t' --set 'profiles.jadu.client_id=a' --set 'profiles.jadu.client_secret.env=S' --set 'profiles.jadu.grant=refresh_token' >/dev/null 2>"$out/chain.err"; then
  echo "helm template accepted 2 replicas rotating one refresh-token chain without Redis" >&2
  exit 1
fi
grep -q "needs store.redis" "$out/chain.err"

echo "--- tokenvend check on the rendered configurations"
bin=${TOKENVEND_BIN:-target/debug/tokenvend}
if [[ ! -x "$bin" ]]; then
  cargo build --quiet -p tokenvend-server --bin tokenvend
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
check() { # rendered manifests
  local dir
  dir=$(mktemp -d "$work/check.XXXX")
  # The ConfigMap's config.yaml, with every secret it references made to exist: files
  # are created under $dir (their paths rewritten to match), environment variables set.
  "$venv/bin/python" - "$1" "$dir" <<'PY'
import os, sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
config_map = next(d for d in docs if d["kind"] == "ConfigMap")
config = yaml.safe_load(config_map["data"]["config.yaml"])
work = sys.argv[2]
env = []
def provide(source):
    if "file" in source:
        path = work + source["file"]
        os.makedirs(os.path.dirname(path), exist_ok=True)
        open(path, "w").write("placeholder\n")
        source["file"] = path
    if "env" in source:
        env.append(source["env"])
def provide_key(source):
    # Store encryption keys must be 32 bytes of base64.
    provide(source)
    if "file" in source:
        open(source["file"], "w").write("BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=\n")
    if "env" in source:
        env.pop()
        keys.append(source["env"])
keys = []
redis = config["server"].get("store", {}).get("redis")
if redis:
    if "password" in redis:
        provide(redis["password"])
    for key in redis.get("encryption_keys", []):
        provide_key(key["key"])
for profile in config["profiles"].values():
    for key in ("client_secret", "refresh_token"):
        if key in profile:
            provide(profile[key])
    for source in profile.get("headers", {}).values():
        provide(source)
yaml.safe_dump(config, open(work + "/config.yaml", "w"))
open(work + "/env", "w").write("".join(f"{name}=placeholder\n" for name in env)
    + "".join(f"{name}=BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=\n" for name in keys))
PY
  # shellcheck disable=SC2046 # one NAME=placeholder word per line, by construction
  env $(cat "$dir/env") "$bin" check --config "$dir/config.yaml"
}
check "$out/default.yaml"
# The full values' profiles too; their TLS and authentication keys wait for a tokenvend
# version that knows them, so they are left out here.
"$helm" template tokenvend "$chart" --kube-version "$KUBERNETES_VERSION" \
  -f "$chart/ci/full-values.yaml" --set tls.enabled=false \
  --set auth.serviceAccountTokens.enabled=false >"$out/full-without-tls.yaml"
check "$out/full-without-tls.yaml"
echo "helm chart: all checks passed"
