#!/usr/bin/env bash
# The Helm chart's checks, offline: `helm lint` and `helm template` with the default values
# and with ci/full-values.yaml (every optional feature on), the rendered manifests checked
# against the Kubernetes JSON schemas (kubernetes-validate, which ships them), and the
# configurations both render checked by `tokenvend check` and started with the real
# `tokenvend serve` on a non-loopback address: the secure default must start (caller
# authentication on), not be refused, and answer /readyz.
#
# Installs its tools under target/tools: helm with `go install` at a pinned version, and
# kubernetes-validate from PyPI in a venv; needs openssl for throwaway certificates. Usage:
# helm/test.sh  (TOKENVEND_BIN to choose the binary; default target/debug/tokenvend, built
# if missing).
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
# `go install` leaves `helm version` without the patch version (it comes from linker flags
# in release builds); the module version recorded in the binary is exact.
installed=$(go version -m "$tools/helm" 2>/dev/null | awk '$1 == "mod" && $2 == "helm.sh/helm/v3" { print $3 }' || true)
if [[ "$installed" != "$HELM_VERSION" ]]; then
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
"$venv/bin/python" - "$out/full.yaml" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
monitor = next(d for d in docs if d["kind"] == "ServiceMonitor")
assert monitor["spec"]["endpoints"][0]["authorization"] == {
    "type": "Bearer", "credentials": {"name": "tokenvend-scrape", "key": "bearer"}}, monitor
# forwardAuth: the port in the configuration (other server.forward_auth keys kept), on
# the container and the Service, and let through the NetworkPolicy from its own peers.
kind = lambda k, name=None: next(d for d in docs if d["kind"] == k and (name is None or d["metadata"]["name"] == name))
config = yaml.safe_load(kind("ConfigMap")["data"]["config.yaml"])
assert config["server"]["forward_auth"] == {"listen": "0.0.0.0:8443", "max_age": "15s"}, config["server"]
container = kind("Deployment")["spec"]["template"]["spec"]["containers"][0]
assert {"name": "forward-auth", "containerPort": 8443, "protocol": "TCP"} in container["ports"], container["ports"]
service = kind("Service", "tokenvend")
assert any(p["name"] == "forward-auth" and p["port"] == 8443 and p["targetPort"] == "forward-auth" for p in service["spec"]["ports"]), service
rules = kind("NetworkPolicy")["spec"]["ingress"]
rule = next(r for r in rules if r["ports"][0]["port"] == "forward-auth")
assert rule["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}], rule
# adminIngress: the admin page behind an Ingress, its public_url derived from the host,
# the page's own keys passed through beside the metrics token, and the ingress
# controller let through to the admin port.
ingress = kind("Ingress")
assert ingress["spec"]["rules"][0]["host"] == "tokenvend.example.com", ingress
assert ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["port"] == {"name": "admin"}, ingress
admin = config["server"]["admin"]
assert admin["public_url"] == "https://tokenvend.example.com", admin
assert set(admin) == {"public_url", "session_key", "login", "admins", "metrics_token"}, admin
assert any(r["ports"][0]["port"] == "admin" and r["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] == "ingress-nginx" for r in rules), rules
PY
"$venv/bin/python" - "$out/default.yaml" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
config = yaml.safe_load(next(d for d in docs if d["kind"] == "ConfigMap")["data"]["config.yaml"])
assert "forward_auth" not in config["server"], "off by default"
assert "forward-auth" not in str(docs)
assert not any(d["kind"] == "Ingress" for d in docs), "no Ingress by default"
PY

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

echo "--- values without caller authentication are refused"
if "$helm" template tokenvend "$chart" --kube-version "$KUBERNETES_VERSION" --set auth.serviceAccountTokens.enabled=false >/dev/null 2>"$out/noauth.err"; then
  echo "helm template accepted values that tokenvend would refuse to start with" >&2
  exit 1
fi
grep -q "no caller authentication" "$out/noauth.err"

echo "--- several replicas with a refresh-token profile and no Redis are refused"
if "$helm" template tokenvend "$chart" --kube-version "$KUBERNETES_VERSION" --set 'profiles.jadu.token_url=https://idp.example.com/t' --set 'profiles.jadu.client_id=a' --set 'profiles.jadu.client_secret.env=S' --set 'profiles.jadu.grant=refresh_token' >/dev/null 2>"$out/chain.err"; then
  echo "helm template accepted 2 replicas rotating one refresh-token chain without Redis" >&2
  exit 1
fi
grep -q "needs store.redis" "$out/chain.err"

echo "--- tokenvend check and serve on the rendered configurations"
bin=${TOKENVEND_BIN:-target/debug/tokenvend}
if [[ ! -x "$bin" ]]; then
  cargo build --quiet -p tokenvend-server --bin tokenvend
fi
work=$(mktemp -d)
pid=
trap '[[ -n "$pid" ]] && kill "$pid" 2>/dev/null; rm -rf "$work"' EXIT

# Throwaway PKI for the files the configurations name: a CA (client_ca, jwks_ca) and a
# server certificate it signs (tls.cert, tls.key). tokenvend loads these at start.
pki="$work/pki"
mkdir -p "$pki"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
  -subj /CN=helm-test-ca -keyout "$pki/ca.key" -out "$pki/ca.crt" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=tokenvend \
  -keyout "$pki/tls.key" -out "$pki/tls.csr" 2>/dev/null
openssl x509 -req -in "$pki/tls.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -days 1 \
  -extfile <(printf 'subjectAltName=DNS:tokenvend\n') -out "$pki/tls.crt" 2>/dev/null

prepare() { # rendered manifests, python edits to the config (optional); prints the dir
  local dir
  dir=$(mktemp -d "$work/config.XXXX")
  # The ConfigMap's config.yaml, with every file it names made to exist under $dir (its
  # path rewritten to match) and every environment variable set. Only paths change: the
  # issuer, the audience and jwks_url stay as rendered. tokenvend fetches the issuer's
  # keys lazily, at the first token it verifies, never at start, so the in-cluster
  # jwks_url needs no stand-in here.
  "$venv/bin/python" - "$1" "$dir" "$pki" "${2:-}" <<'PY'
import os, shutil, sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
config_map = next(d for d in docs if d["kind"] == "ConfigMap")
config = yaml.safe_load(config_map["data"]["config.yaml"])
work, pki, edit = sys.argv[2], sys.argv[3], sys.argv[4]
env = []
def place(path, content_from=None):
    target = work + path
    os.makedirs(os.path.dirname(target), exist_ok=True)
    if content_from:
        shutil.copy(content_from, target)
    else:
        open(target, "w").write("placeholder\n")
    return target
def provide(source):
    if "file" in source:
        source["file"] = place(source["file"])
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
server = config["server"]
admin = server.get("admin", {})
if "metrics_token" in admin:
    provide(admin["metrics_token"])
if "session_key" in admin:
    provide_key(admin["session_key"])
if "token" in admin.get("login", {}):
    provide(admin["login"]["token"])
tls = server.get("tls", {})
for key, pem in (("cert", "tls.crt"), ("key", "tls.key"), ("client_ca", "ca.crt")):
    if key in tls:
        tls[key] = place(tls[key], f"{pki}/{pem}")
sa = server.get("auth", {}).get("service_account", {})
if "jwks_ca" in sa:
    sa["jwks_ca"] = place(sa["jwks_ca"], f"{pki}/ca.crt")
if "jwks_token_file" in sa:
    sa["jwks_token_file"] = place(sa["jwks_token_file"])
exec(edit)
yaml.safe_dump(config, open(work + "/config.yaml", "w"))
open(work + "/env", "w").write("".join(f"{name}=placeholder\n" for name in env)
    + "".join(f"{name}=BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=\n" for name in keys))
PY
  echo "$dir"
}
check() { # dir from prepare
  # shellcheck disable=SC2046 # one NAME=placeholder word per line, by construction
  env $(cat "$1/env") "$bin" check --config "$1/config.yaml"
}
free_port() { "$venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
serves() { # dir from prepare: `tokenvend serve` starts on a non-loopback address and is ready
  local dir=$1 admin ready=
  admin=127.0.0.1:$(free_port)
  # gRPC on 0.0.0.0, as in the pod, so the server's refusal of unauthenticated
  # non-loopback addresses applies; the admin port on loopback for the probe below.
  # shellcheck disable=SC2046
  env $(cat "$dir/env") RUST_LOG=info "$bin" serve --config "$dir/config.yaml" \
    --listen 0.0.0.0:0 --admin-listen "$admin" >"$dir/serve.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 50); do
    kill -0 "$pid" 2>/dev/null || break
    if curl -fsS "http://$admin/readyz" >/dev/null 2>&1; then ready=1; break; fi
    sleep 0.1
  done
  # Still running two seconds on: nothing refused it after the first readiness.
  [[ -n "$ready" ]] && sleep 2
  if [[ -z "$ready" ]] || ! kill -0 "$pid" 2>/dev/null; then
    echo "tokenvend serve did not start and stay ready with $dir/config.yaml:" >&2
    cat "$dir/serve.log" >&2
    return 1
  fi
  kill -TERM "$pid"
  wait "$pid" || { echo "tokenvend serve did not exit cleanly on SIGTERM" >&2; cat "$dir/serve.log" >&2; return 1; }
  pid=
  echo "serve: started on 0.0.0.0, /readyz 200, exited on SIGTERM"
}

dir=$(prepare "$out/default.yaml")
check "$dir"
serves "$dir"

echo "--- the same configuration without server.auth is refused by tokenvend serve"
# Shows that the start above proves something: the server refuses a pod address with no
# caller authentication, so it started because the chart's default turned it on.
dir=$(prepare "$out/default.yaml" 'del server["auth"]')
# shellcheck disable=SC2046
if env $(cat "$dir/env") timeout 10 "$bin" serve --config "$dir/config.yaml" \
  --listen 0.0.0.0:0 --admin-listen 127.0.0.1:0 >"$dir/serve.log" 2>&1; then
  echo "tokenvend serve accepted a non-loopback address without caller authentication" >&2
  exit 1
fi
grep -q "without caller authentication" "$dir/serve.log" || { cat "$dir/serve.log" >&2; exit 1; }

echo "--- the same configuration without server.admin is refused by tokenvend check"
# The chart's admin port is on the pod address: /metrics there needs the chart's token.
dir=$(prepare "$out/default.yaml" 'del server["admin"]')
if check "$dir" 2>"$dir/check.err"; then
  echo "tokenvend check accepted /metrics open on 0.0.0.0 without a token" >&2
  exit 1
fi
grep -q "server.admin.metrics_token" "$dir/check.err" || { cat "$dir/check.err" >&2; exit 1; }

echo "--- metrics.unauthenticated opens /metrics on purpose, with no token to mount or send"
"$helm" template tokenvend "$chart" --namespace tokenvend --kube-version "$KUBERNETES_VERSION" \
  --set metrics.unauthenticated=true --set serviceMonitor.enabled=true >"$out/open-metrics.yaml"
"$venv/bin/python" - "$out/open-metrics.yaml" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
config = yaml.safe_load(next(d for d in docs if d["kind"] == "ConfigMap")["data"]["config.yaml"])
assert config["server"]["admin"] == {"unauthenticated_metrics": True}, config["server"]
monitor = next(d for d in docs if d["kind"] == "ServiceMonitor")
assert "authorization" not in monitor["spec"]["endpoints"][0], monitor
deployment = next(d for d in docs if d["kind"] == "Deployment")
assert "metrics-token" not in str(deployment), "no token Secret is mounted"
PY
dir=$(prepare "$out/open-metrics.yaml")
check "$dir"

echo "--- full values (TLS, mutual TLS, ServiceAccount tokens, limits, allow lists, forward-auth, admin page)"
dir=$(prepare "$out/full.yaml")
check "$dir"
# Readiness waits for `warm_up` profiles to hold a token, and their real providers cannot
# be reached from here: the start check runs them without warm-up. The forward-auth port
# is bound on 0.0.0.0 as in the pod, on a port of the system's choosing.
dir=$(prepare "$out/full.yaml" 'for p in config["profiles"].values(): p.pop("warm_up", None)
config["server"]["forward_auth"]["listen"] = "0.0.0.0:0"')
serves "$dir"

echo "--- the forward-auth port without caller authentication is refused by tokenvend check"
dir=$(prepare "$out/full.yaml" 'del config["server"]["auth"]; del config["server"]["tls"]["client_ca"]')
if check "$dir" 2>"$dir/check.err"; then
  echo "tokenvend check accepted a forward-auth port on 0.0.0.0 without caller authentication" >&2
  exit 1
fi
grep -q "server.forward_auth.listen" "$dir/check.err" || { cat "$dir/check.err" >&2; exit 1; }
echo "--- the admin page behind the Ingress without a login is refused by tokenvend check"
dir=$(prepare "$out/full.yaml" 'del config["server"]["admin"]["login"]')
if check "$dir" 2>"$dir/check.err"; then
  echo "tokenvend check accepted the admin page on 0.0.0.0 without a login" >&2
  exit 1
fi
grep -q "server.admin.login" "$dir/check.err" || { cat "$dir/check.err" >&2; exit 1; }
echo "helm chart: all checks passed"
