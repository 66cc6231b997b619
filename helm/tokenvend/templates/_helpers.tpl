{{/* The chart name. */}}
{{- define "tokenvend.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The full name: the release name, with the chart name unless it already holds it. */}}
{{- define "tokenvend.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "tokenvend.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "tokenvend.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "tokenvend.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tokenvend.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "tokenvend.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tokenvend.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "tokenvend.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Where the chart mounts things in the pod. */}}
{{- define "tokenvend.configDir" -}}/etc/tokenvend{{- end }}
{{- define "tokenvend.tlsDir" -}}/etc/tokenvend-tls/server{{- end }}
{{- define "tokenvend.clientCADir" -}}/etc/tokenvend-tls/client-ca{{- end }}
{{- define "tokenvend.secretsDir" -}}/var/run/secrets/tokenvend{{- end }}
{{- define "tokenvend.metricsTokenDir" -}}/var/run/secrets/tokenvend-metrics{{- end }}

{{/* The Secret holding the /metrics bearer token. */}}
{{- define "tokenvend.metricsTokenSecret" -}}
{{- default (printf "%s-metrics" (include "tokenvend.fullname" .)) .Values.metrics.tokenSecret.name }}
{{- end }}

{{/*
The configuration file: `server` from the values (with the listen addresses, and the TLS
and caller-authentication keys built from `tls` and `auth`) and `profiles` as given.
With `forwardAuth.enabled`, server.forward_auth.listen from `forwardAuth.port`.
The keys are those of docs/configuration.md: server.admin.{metrics_token,
unauthenticated_metrics}, server.tls.{cert,key,client_ca,reload_interval} and server.auth.{allow_unauthenticated,service_account.{issuer,audience,
jwks_url|jwks_file,jwks_ca,jwks_token_file,leeway,refetch_interval}}.
*/}}
{{- define "tokenvend.config" -}}
{{- $server := deepCopy (.Values.server | default dict) }}
{{- $_ := set $server "listen" (printf "0.0.0.0:%d" (int .Values.ports.grpc)) }}
{{- $_ := set $server "admin_listen" (printf "0.0.0.0:%d" (int .Values.ports.admin)) }}
{{- /* Other server.admin keys given in the values (the admin page's public_url,
session_key, login, admins) are kept; the metrics keys come from `metrics`. */}}
{{- $admin := deepCopy (get $server "admin" | default dict) }}
{{- if .Values.metrics.unauthenticated }}
{{- $_ := set $admin "unauthenticated_metrics" true }}
{{- else }}
{{- $_ := set $admin "metrics_token" (dict "file" (printf "%s/token" (include "tokenvend.metricsTokenDir" .))) }}
{{- end }}
{{- if and .Values.adminIngress.enabled (not (hasKey $admin "public_url")) }}
{{- $_ := set $admin "public_url" (printf "https://%s" (required "adminIngress.host is required with adminIngress.enabled" .Values.adminIngress.host)) }}
{{- end }}
{{- $_ := set $server "admin" $admin }}
{{- if .Values.forwardAuth.enabled }}
{{- $forward := deepCopy (get $server "forward_auth" | default dict) }}
{{- $_ := set $forward "listen" (printf "0.0.0.0:%d" (int .Values.forwardAuth.port)) }}
{{- $_ := set $server "forward_auth" $forward }}
{{- end }}
{{- if .Values.tls.enabled }}
{{- $tls := dict "cert" (printf "%s/tls.crt" (include "tokenvend.tlsDir" .)) "key" (printf "%s/tls.key" (include "tokenvend.tlsDir" .)) }}
{{- if .Values.tls.clientCA.enabled }}
{{- $_ := set $tls "client_ca" (printf "%s/%s" (include "tokenvend.clientCADir" .) .Values.tls.clientCA.key) }}
{{- end }}
{{- with .Values.tls.reloadInterval }}
{{- $_ := set $tls "reload_interval" . }}
{{- end }}
{{- $_ := set $server "tls" $tls }}
{{- end }}
{{- $auth := dict }}
{{- with .Values.auth.serviceAccountTokens }}
{{- if .enabled }}
{{- $sa := dict "issuer" .issuer "audience" .audience }}
{{- if .jwksFile }}
{{- /* A JWKS file replaces fetching: no URL, CA or token is needed. */}}
{{- $_ := set $sa "jwks_file" .jwksFile }}
{{- else }}
{{- /* No jwksUrl: discovery at <issuer>/.well-known/openid-configuration. */}}
{{- with .jwksUrl }}{{ $_ := set $sa "jwks_url" . }}{{ end }}
{{- with .jwksCA }}{{ $_ := set $sa "jwks_ca" . }}{{ end }}
{{- with .jwksTokenFile }}{{ $_ := set $sa "jwks_token_file" . }}{{ end }}
{{- end }}
{{- with .leeway }}{{ $_ := set $sa "leeway" . }}{{ end }}
{{- with .refetchInterval }}{{ $_ := set $sa "refetch_interval" . }}{{ end }}
{{- $_ := set $auth "service_account" $sa }}
{{- end }}
{{- end }}
{{- if .Values.auth.allowUnauthenticated }}
{{- $_ := set $auth "allow_unauthenticated" true }}
{{- end }}
{{- if $auth }}
{{- $_ := set $server "auth" $auth }}
{{- end }}
{{- with .Values.store.redis }}
{{- if .enabled }}
{{- $redis := dict "url" (required "store.redis.url is required when store.redis.enabled" .url) "key_prefix" .keyPrefix "tls" .tls "encryption_keys" .encryptionKeys }}
{{- if .password }}
{{- $_ := set $redis "password" .password }}
{{- end }}
{{- $_ := set $server "store" (dict "redis" $redis) }}
{{- end }}
{{- end }}
{{- toYaml (dict "server" $server "profiles" (include "tokenvend.profiles" . | fromYaml)) }}
{{- end }}

{{/*
The profiles: as given, or with none given an example that shows the shape. It is
rendered here rather than written in values.yaml, because Helm merges maps: a default
profile in values.yaml would stay beside the user's own.
*/}}
{{- define "tokenvend.profiles" -}}
{{- if .Values.profiles }}
{{- toYaml .Values.profiles }}
{{- else }}
example:
  token_url: https://idp.example.com/oauth2/token
  client_id: tokenvend-example
  client_secret: { env: TOKENVEND_EXAMPLE_CLIENT_SECRET }
  scopes: [api.read]
  # Only ServiceAccounts of the release's namespace may use it.
  allow: ["system:serviceaccount:{{ .Release.Namespace }}:*"]
{{- end }}
{{- end }}

{{/* A duration such as 20s, 5m or 500ms in whole seconds (rounded up); empty if the form is not one of those. */}}
{{- define "tokenvend.seconds" -}}
{{- $d := toString . }}
{{- if regexMatch "^[0-9]+s$" $d }}{{ trimSuffix "s" $d }}
{{- else if regexMatch "^[0-9]+m$" $d }}{{ mul (atoi (trimSuffix "m" $d)) 60 }}
{{- else if regexMatch "^[0-9]+ms$" $d }}{{ div (add (atoi (trimSuffix "ms" $d)) 999) 1000 }}
{{- end }}
{{- end }}

{{/* Refuses a termination grace period that would cut the drain short. */}}
{{- define "tokenvend.checkGracePeriod" -}}
{{- $delay := include "tokenvend.seconds" (.Values.server.shutdown_delay | default "5s") }}
{{- $grace := include "tokenvend.seconds" (.Values.server.shutdown_grace | default "20s") }}
{{- if and $delay $grace }}
{{- $needed := add (atoi $delay) (atoi $grace) }}
{{- if le (int .Values.terminationGracePeriodSeconds) (int $needed) }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must exceed server.shutdown_delay + server.shutdown_grace (%ds), or the kubelet kills calls still draining" (int .Values.terminationGracePeriodSeconds) $needed) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Whether tokenvend fetches the ServiceAccount issuer's keys from the API server: then its
pod mounts its own ServiceAccount token (sent with the fetch) and the cluster CA, and its
ServiceAccount may read /openid/v1/jwks. Not with a JWKS file.
*/}}
{{- define "tokenvend.fetchesIssuerKeys" -}}
{{- with .Values.auth.serviceAccountTokens }}{{ if and .enabled (not .jwksFile) }}true{{ end }}{{ end }}
{{- end }}

{{/*
Refuses values with which tokenvend would refuse to start: a pod address with no caller
authentication (ServiceAccount tokens or mutual TLS) and no explicit opt-out.
*/}}
{{- define "tokenvend.checkAuth" -}}
{{- $mtls := and .Values.tls.enabled .Values.tls.clientCA.enabled }}
{{- if not (or .Values.auth.serviceAccountTokens.enabled $mtls .Values.auth.allowUnauthenticated) }}
{{- fail "no caller authentication: tokenvend refuses to serve a pod address without it. Keep auth.serviceAccountTokens.enabled, or enable tls.clientCA (mutual TLS), or set auth.allowUnauthenticated=true with a networkPolicy guarding the port" }}
{{- end }}
{{- end }}

{{/*
Refuses several replicas with a refresh-token profile and no shared store: replicas
rotating one chain on their own spend each other's refresh tokens (docs/scaling.md).
*/}}
{{- define "tokenvend.checkSharedState" -}}
{{- $several := or (gt (int .Values.replicaCount) 1) (and .Values.autoscaling.enabled (gt (int .Values.autoscaling.maxReplicas) 1)) }}
{{- if and $several (not .Values.store.redis.enabled) }}
{{- range $name, $profile := .Values.profiles }}
{{- if eq (toString $profile.grant) "refresh_token" }}
{{- fail (printf "profile %s has grant: refresh_token, which needs store.redis when several replicas run: replicas rotating one refresh-token chain on their own invalidate each other (see docs/scaling.md)" $name) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
