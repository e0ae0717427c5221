{{- define "pgward.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "pgward.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "pgward.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pgward.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "pgward.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "pgward.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "pgward.serviceAccountName" -}}
{{- default (include "pgward.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{/*
pgward.toml. Strings and arrays go through toJson: a JSON string or array of strings is
also a valid TOML value, so no value can break out of its line.
*/}}
{{- define "pgward.config" -}}
{{- $c := .Values.config -}}
# Rendered by the pgward Helm chart; keys: docs/configuration.md.
[listen]
addr = {{ printf "0.0.0.0:%d" (int $c.listen.port) | toJson }}
tls_cert = "/etc/pgward/tls/tls.crt"
tls_key = "/etc/pgward/tls/tls.key"
max_connections = {{ int $c.listen.maxConnections }}
drain_timeout_secs = {{ int $c.listen.drainTimeoutSecs }}

[admin]
# All interfaces so the kubelet can probe it; only the metrics Service exposes it.
addr = {{ printf "0.0.0.0:%d" (int $c.admin.port) | toJson }}

[log]
format = {{ $c.log.format | toJson }}
level = {{ $c.log.level | toJson }}

[entra]
tenant_id = {{ required "config.entra.tenantId is required" $c.entra.tenantId | toJson }}
audiences = {{ $c.entra.audiences | toJson }}
clock_skew_secs = {{ int $c.entra.clockSkewSecs }}

[[upstreams]]
name = "main"
host = {{ required "config.upstream.host is required" $c.upstream.host | toJson }}
port = {{ int $c.upstream.port }}
tls = {{ $c.upstream.tls | toJson }}
[upstreams.credential]
type = "workload-identity"
user = {{ $c.upstream.user | toJson }}
client_id = {{ required "workloadIdentity.clientId is required" .Values.workloadIdentity.clientId | toJson }}
{{- range $c.routes }}

[[routes]]
database = {{ .database | toJson }}
upstream = "main"
upstream_database = {{ default .database .upstreamDatabase | toJson }}
{{- end }}

[policy]
file = "/etc/pgward/policy/policy.toml"
watch_secs = {{ int $c.policy.watchSecs }}

[audit]
file = "/var/lib/pgward/audit/pgward.jsonl"
stdout = {{ $c.audit.stdout }}
rotate_bytes = {{ int64 $c.audit.rotateBytes }}
rotate_secs = {{ int64 $c.audit.rotateSecs }}
fsync = {{ $c.audit.fsync | toJson }}
redaction = {{ $c.audit.redaction | toJson }}
failure_mode = {{ $c.audit.failureMode | toJson }}
{{- if $c.audit.hmacKeySecret }}
hmac_key_file = "/etc/pgward/audit-key/audit.key"
{{- end }}
{{- with $c.cluster }}
{{- if .backend }}

[cluster]
backend = {{ .backend | toJson }}
on_store_error = {{ .onStoreError | toJson }}
timeout_ms = {{ int .timeoutMs }}
lease_secs = {{ int .leaseSecs }}
replicas = {{ int $.Values.replicaCount }}
{{- if eq .backend "postgres" }}

[cluster.postgres]
host = {{ default $c.upstream.host .postgres.host | toJson }}
port = {{ int .postgres.port }}
database = {{ .postgres.database | toJson }}
tls = {{ .postgres.tls | toJson }}
[cluster.postgres.credential]
type = "workload-identity"
user = {{ default $c.upstream.user .postgres.user | toJson }}
client_id = {{ $.Values.workloadIdentity.clientId | toJson }}
{{- else }}

[cluster.redis]
host = {{ required "config.cluster.redis.host is required with backend redis" .redis.host | toJson }}
port = {{ int .redis.port }}
tls = true
[cluster.redis.credential]
type = "workload-identity"
user = {{ required "config.cluster.redis.user (the identity's object id) is required with backend redis" .redis.user | toJson }}
client_id = {{ $.Values.workloadIdentity.clientId | toJson }}
{{- end }}
{{- end }}
{{- end }}
{{- with $c.extra }}

{{ . }}
{{- end }}
{{- end -}}
