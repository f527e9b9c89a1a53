{{/* Names and labels. */}}
{{- define "vigil.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "vigil.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{/* 40 characters: KubeRay derives its cluster, pod and service names from the RayService's. */}}

{{- define "vigil.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "vigil.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: vigil
{{- end -}}

{{/* Ray pods: KubeRay sets ray.io/* (and its own app.kubernetes.io/name) on them; the selectors
of the chart's Service and monitors use the release label and KubeRay's node type. */}}
{{- define "vigil.podLabels" -}}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: vigil
{{- end -}}

{{/* Where things are, as the applications see them. */}}
{{- define "vigil.repositoryPath" -}}
{{- printf "%s/%s" (trimSuffix "/" .Values.modelRepository.mountPath) .Values.modelRepository.path -}}
{{- end -}}

{{- define "vigil.tokensFile" -}}
{{- printf "%s/%s" (trimSuffix "/" .Values.auth.mountPath) .Values.auth.tokensKey -}}
{{- end -}}

{{- define "vigil.outboxPath" -}}
{{- printf "%s/%s" (trimSuffix "/" .Values.outbox.mountPath) .Values.outbox.fileName -}}
{{- end -}}

{{- define "vigil.repositoryClaim" -}}
{{- .Values.modelRepository.existingClaim | default (printf "%s-models" (include "vigil.fullname" .)) -}}
{{- end -}}

{{- define "vigil.outboxClaim" -}}
{{- .Values.outbox.existingClaim | default (printf "%s-outbox" (include "vigil.fullname" .)) -}}
{{- end -}}

{{- define "vigil.serveServiceName" -}}
{{- printf "%s-serve" (include "vigil.fullname" .) -}}
{{- end -}}

{{- define "vigil.publicUrl" -}}
{{- if .Values.monitor.publicUrl -}}
{{- .Values.monitor.publicUrl -}}
{{- else if .Values.ingress.enabled -}}
{{- printf "%s://%s/monitor" (ternary "https" "http" (ne .Values.ingress.tlsSecret "")) .Values.ingress.host -}}
{{- else -}}
{{- printf "http://%s.%s.svc:%v/monitor" (include "vigil.serveServiceName" .) .Release.Namespace (int .Values.serve.http_options.port) -}}
{{- end -}}
{{- end -}}

{{/* The Ray custom resources of the head, as rayStartParams' `resources` wants them: a quoted
JSON object, e.g. '"{\"vigil_monitor\":1}"'. */}}
{{- define "vigil.headRayResources" -}}
{{- $resources := merge (dict .Values.head.monitorResource 1) (deepCopy .Values.head.extraRayResources) -}}
{{- toJson $resources | printf "%q" -}}
{{- end -}}

{{/* serveConfigV2: .Values.serve with applications and deployments turned into Serve's lists
and the chart-owned fields filled in. */}}
{{- define "vigil.serveConfig" -}}
{{- $root := . -}}
{{- $serve := deepCopy .Values.serve -}}
{{- $httpOptions := merge (dict "host" "0.0.0.0") (omit $serve.http_options "host") -}}
{{- $applications := list -}}
{{- range $name := list "vigil" "monitor" -}}
{{- $app := index $serve.applications $name -}}
{{- $args := deepCopy ($app.args | default dict) -}}
{{- $_ := set $args "model_repository" (include "vigil.repositoryPath" $root) -}}
{{- $_ := set $args "auth" $root.Values.auth.mode -}}
{{- if eq $root.Values.auth.mode "tokens" -}}
{{- $_ := set $args "tokens_file" (include "vigil.tokensFile" $root) -}}
{{- end -}}
{{- if eq $name "monitor" -}}
{{- $_ := set $args "outbox_path" (include "vigil.outboxPath" $root) -}}
{{- if not (hasKey $args "public_url") -}}
{{- $_ := set $args "public_url" (include "vigil.publicUrl" $root) -}}
{{- end -}}
{{- end -}}
{{- $deployments := list -}}
{{- range $deploymentName, $deployment := $app.deployments -}}
{{- $d := merge (dict "name" $deploymentName) $deployment -}}
{{- if eq $name "monitor" -}}
{{- $actor := $d.ray_actor_options | default dict -}}
{{- $pin := merge (dict $root.Values.head.monitorResource 1) ($actor.resources | default dict) -}}
{{- $_ := set $actor "resources" $pin -}}
{{- $_ := set $d "ray_actor_options" $actor -}}
{{- end -}}
{{- $deployments = append $deployments $d -}}
{{- end -}}
{{- $a := merge (dict "name" $name "args" $args "deployments" $deployments) (omit $app "args" "deployments") -}}
{{- $applications = append $applications $a -}}
{{- end -}}
{{- $config := merge (dict "http_options" $httpOptions "applications" $applications) (omit $serve "http_options" "applications") -}}
{{- toYaml $config -}}
{{- end -}}

{{/* Refuse a webhook whose signing secret the Monitor's environment would not have. */}}
{{- define "vigil.checkWebhookSecrets" -}}
{{- $names := list -}}
{{- range .Values.monitor.secretEnv -}}
{{- $names = append $names .name -}}
{{- end -}}
{{- if not .Values.monitor.secretEnvFrom -}}
{{- range $deployment := .Values.serve.applications.monitor.deployments -}}
{{- $userConfig := $deployment.user_config | default dict -}}
{{- range $target := $userConfig.webhooks | default list -}}
{{- $envs := kindIs "string" $target.secret_env | ternary (list $target.secret_env) $target.secret_env -}}
{{- range $env := $envs -}}
{{- if not (has $env $names) -}}
{{- fail (printf "webhook target %q signs with $%s, but monitor.secretEnv has no such variable (add {name: %s, secretName: ..., key: ...}, or name a Secret in monitor.secretEnvFrom)" $target.name $env $env) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Security contexts. */}}
{{- define "vigil.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
fsGroup: {{ .Values.securityContext.fsGroup }}
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "vigil.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: {{ .Values.securityContext.readOnlyRootFilesystem }}
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Environment of every Ray container. */}}
{{- define "vigil.rayEnv" -}}
- name: RAY_SERVE_ENABLE_HA_PROXY
  value: {{ ternary "1" "0" .Values.ray.haProxy | quote }}
# Ray's per-request ingress metrics cost a parsed log line per request; Vigil counts requests.
- name: RAY_SERVE_HAPROXY_METRICS_ENABLED
  value: "0"
# HAProxy's connection limits (docs/security.md, "Connection and body limits").
- name: RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S
  value: {{ .Values.ray.haProxyLimits.timeoutClientS | quote }}
- name: RAY_SERVE_HAPROXY_MAXCONN
  value: {{ .Values.ray.haProxyLimits.maxconn | quote }}
# HAProxy's buffers and largest HTTP/2 frame (large gRPC messages: docs/performance.md#grpc).
- name: RAY_SERVE_HAPROXY_TUNE_BUFSIZE
  value: {{ .Values.ray.haProxyLimits.bufferBytes | quote }}
- name: RAY_SERVE_HAPROXY_H2_MAX_FRAME_SIZE
  value: {{ .Values.ray.haProxyLimits.bufferBytes | quote }}
{{- with .Values.ray.haProxyLimits.headerTimeoutWrapper }}
# Ray runs Vigil's wrapper as HAProxy: it adds `timeout http-request` to Ray's config.
- name: RAY_SERVE_HAPROXY_BINARY_PATH
  value: {{ . | quote }}
- name: VIGIL_HAPROXY_TIMEOUT_HTTP_REQUEST_S
  value: {{ $.Values.ray.haProxyLimits.timeoutHttpRequestS | quote }}
{{- end }}
# A node's proxy gets this long to start before Serve kills it (Ray's 5 s failed busy deploys).
- name: RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S
  value: {{ .Values.ray.proxyReadyTimeoutS | quote }}
- name: RAY_USAGE_STATS_ENABLED
  value: "0"
- name: PYTHONUNBUFFERED
  value: "1"
- name: XDG_CACHE_HOME
  value: /tmp/.cache
{{- if eq .Values.auth.mode "tokens" }}
- name: VIGIL_TOKENS_FILE
  value: {{ include "vigil.tokensFile" . | quote }}
{{- end }}
{{- with .Values.ray.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Volumes every Ray pod has: /tmp, /dev/shm, the repository and the tokens file. */}}
{{- define "vigil.commonVolumes" -}}
{{- $group := index . 1 -}}
{{- with index . 0 -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ $group.tmpSize }}
- name: dshm
  emptyDir:
    medium: Memory
    sizeLimit: {{ $group.shmSize }}
- name: model-repository
  persistentVolumeClaim:
    claimName: {{ include "vigil.repositoryClaim" . }}
{{- if eq .Values.auth.mode "tokens" }}
- name: tokens
  secret:
    secretName: {{ .Values.auth.tokensSecret }}
    defaultMode: 0440
    items:
      - key: {{ .Values.auth.tokensKey }}
        path: {{ .Values.auth.tokensKey }}
{{- end }}
{{- end -}}
{{- end -}}

{{- define "vigil.commonVolumeMounts" -}}
- name: tmp
  mountPath: /tmp
- name: dshm
  mountPath: /dev/shm
- name: model-repository
  mountPath: {{ .Values.modelRepository.mountPath }}
{{- if eq .Values.auth.mode "tokens" }}
- name: tokens
  mountPath: {{ .Values.auth.mountPath }}
  readOnly: true
{{- end }}
{{- end -}}
