{{/*
Names, labels and small pieces shared by the templates.
*/}}

{{- define "ces.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's prefix for every object: the release name, or release-chart when it does not contain the
chart's name. Kept at 50 characters so "-edge-internal" still fits 63. */}}
{{- define "ces.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Labels of every object; `component` (edge, ingest) when the object belongs to one service. */}}
{{- define "ces.labels" -}}
{{- $root := .root -}}
helm.sh/chart: {{ printf "%s-%s" $root.Chart.Name $root.Chart.Version | replace "+" "_" }}
{{ include "ces.selectorLabels" . }}
app.kubernetes.io/version: {{ $root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ $root.Release.Service }}
app.kubernetes.io/part-of: ces
{{- end }}

{{- define "ces.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ces.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end }}

{{- define "ces.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "ces.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "ces.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The Secret the pods read: the existing one, or the chart's own. */}}
{{- define "ces.secretName" -}}
{{- default (include "ces.fullname" .) .Values.secrets.existingSecret }}
{{- end }}

{{/* A value as an environment variable's text: numbers without exponent (YAML numbers arrive as float64). */}}
{{- define "ces.envValue" -}}
{{- if kindIs "float64" . }}{{ int64 . }}{{ else }}{{ . }}{{ end }}
{{- end }}

{{/* An env entry read from the Secret: dict "root" $ "name" VAR "key" KEY, and "optional" true for a key the
Secret may lack. */}}
{{- define "ces.secretEnv" -}}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ include "ces.secretName" .root }}
      key: {{ .key }}
      {{- if .optional }}
      optional: true
      {{- end }}
{{- end }}

{{/* A volume source for a CA certificate given as a Secret or a ConfigMap key ({caSecret, caConfigMap, caKey}). */}}
{{- define "ces.caVolumeSource" -}}
{{- if .caSecret -}}
secret:
  secretName: {{ .caSecret }}
  items:
    - key: {{ .caKey }}
      path: ca.crt
{{- else -}}
configMap:
  name: {{ .caConfigMap }}
  items:
    - key: {{ .caKey }}
      path: ca.crt
{{- end }}
{{- end }}

{{/* The restrictive security context of both containers; the image runs as 65532 and needs no shell. */}}
{{- define "ces.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "ces.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop: ["ALL"]
{{- end }}

{{/* Spread over zones and nodes: dict "root" $ "component" NAME. */}}
{{- define "ces.topologySpread" -}}
{{- $root := .root -}}
{{- if $root.Values.topologySpread.enabled -}}
topologySpreadConstraints:
  - maxSkew: 1
    topologyKey: topology.kubernetes.io/zone
    whenUnsatisfiable: {{ $root.Values.topologySpread.zone }}
    labelSelector:
      matchLabels:
        {{- include "ces.selectorLabels" . | nindent 8 }}
    matchLabelKeys:
      - pod-template-hash
  - maxSkew: 1
    topologyKey: kubernetes.io/hostname
    whenUnsatisfiable: {{ $root.Values.topologySpread.hostname }}
    labelSelector:
      matchLabels:
        {{- include "ces.selectorLabels" . | nindent 8 }}
    matchLabelKeys:
      - pod-template-hash
{{- end }}
{{- end }}

{{/* NetworkPolicy peers allowed to scrape: Prometheus's namespace, and its pods when monitoringPodSelector is given. */}}
{{- define "ces.monitoringPeer" -}}
- namespaceSelector:
    {{- toYaml .monitoringNamespaceSelector | nindent 4 }}
  {{- with .monitoringPodSelector }}
  podSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}

{{/* One NetworkPolicy egress rule for a list of TCP ports. */}}
{{- define "ces.egressPorts" -}}
- ports:
    {{- range . }}
    - port: {{ . }}
      protocol: TCP
    {{- end }}
{{- end }}
