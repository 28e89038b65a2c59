{{/*
The CES_* variables of each service, from the values. Settings that are not secret go into the service's
ConfigMap (these dicts); secrets are env entries read from the Secret (ces.edgeSecretEnv, ces.ingestSecretEnv).
Each service gets only variables it reads (docs/configuration.md), so each binary's own check accepts its
environment as it is.
*/}}

{{/* Both services: Redis, logging, the session state's lifetime. */}}
{{- define "ces.commonEnv" -}}
{{- $v := .Values -}}
{{- $env := dict -}}
{{- if not $v.redis.urlFromSecret }}
{{- $_ := set $env "CES_REDIS_URL" $v.redis.url }}
{{- end }}
{{- if or $v.redis.tls.caSecret $v.redis.tls.caConfigMap }}
{{- $_ := set $env "CES_REDIS_TLS_CA_FILE" "/etc/ces/redis-ca/ca.crt" }}
{{- end }}
{{- $_ := set $env "CES_REDIS_DURABLE_RESTARTS" (toString $v.redis.durableRestarts) }}
{{- $_ := set $env "CES_REDIS_EVICTION" $v.redis.eviction }}
{{- $_ := set $env "CES_LOG" $v.log.level }}
{{- $_ := set $env "CES_LOG_FORMAT" $v.log.format }}
{{- $_ := set $env "CES_SESSION_STATE_TTL_SECS" (include "ces.envValue" $v.sessionStateTtlSecs) }}
{{- toYaml $env }}
{{- end }}

{{/* The variables ces.secretEnv entries set, per service, so extraEnv cannot set them a second time. */}}
{{- define "ces.edgeSecretVars" -}}
{{- $v := .Values -}}
{{- $vars := list "CES_TOKEN_KEYS" "CES_ADMIN_TOKENS" -}}
{{- if $v.redis.urlFromSecret }}{{ $vars = append $vars "CES_REDIS_URL" }}{{ end }}
{{- if eq $v.registration.mode "apiKeys" }}{{ $vars = append $vars "CES_REGISTER_API_KEYS" }}{{ end }}
{{- if and (eq $v.registration.mode "jwt") (eq $v.registration.jwt.algorithm "HS256") }}
{{- $vars = append $vars "CES_REGISTER_JWT_HS256_SECRET" }}
{{- end }}
{{- toJson $vars }}
{{- end }}

{{- define "ces.ingestSecretVars" -}}
{{- $v := .Values -}}
{{- $vars := list -}}
{{- if $v.redis.urlFromSecret }}{{ $vars = append $vars "CES_REDIS_URL" }}{{ end }}
{{- if hasPrefix "sasl_" $v.kafka.securityProtocol }}
{{- $vars = concat $vars (list "CES_KAFKA_PROP_SASL_USERNAME" "CES_KAFKA_PROP_SASL_PASSWORD") }}
{{- end }}
{{- toJson $vars }}
{{- end }}

{{/* extraEnv on top of the chart's own variables: dict "env" DICT "extra" MAP "secretVars" LIST "where" NAME. */}}
{{- define "ces.mergeExtraEnv" -}}
{{- $env := .env -}}
{{- range $name, $value := .extra }}
{{- if or (hasKey $env $name) (has $name $.secretVars) (hasPrefix "CES_REGISTER_" $name) (eq $name "CES_TOKEN_SECRET") }}
{{- fail (printf "%s.extraEnv.%s: the chart sets this variable from its own values (values.yaml says which); change that value instead" $.where $name) }}
{{- end }}
{{- $_ := set $env $name (include "ces.envValue" $value) }}
{{- end }}
{{- toYaml $env }}
{{- end }}

{{- define "ces.edgeEnv" -}}
{{- $v := .Values -}}
{{- $e := $v.edge -}}
{{- $env := include "ces.commonEnv" . | fromYaml -}}
{{- /* Both listeners on every address of the pod: the internal one for kubelet and Prometheus (docs/security.md). */}}
{{- $_ := set $env "CES_EDGE_LISTEN" "0.0.0.0:8080" }}
{{- $_ := set $env "CES_EDGE_INTERNAL_LISTEN" "0.0.0.0:9090" }}
{{- $_ := set $env "CES_DRAIN_DELAY_MS" (include "ces.envValue" $e.drain.delayMs) }}
{{- $_ := set $env "CES_DRAIN_WINDOW_MS" (include "ces.envValue" $e.drain.windowMs) }}
{{- $_ := set $env "CES_SHUTDOWN_GRACE_MS" (include "ces.envValue" $e.drain.shutdownGraceMs) }}
{{- $_ := set $env "CES_MAX_CONNECTIONS" (include "ces.envValue" $e.limits.maxConnections) }}
{{- $_ := set $env "CES_EDGE_QUEUE_BUDGET_BYTES" (include "ces.envValue" $e.limits.queueBudgetBytes) }}
{{- $_ := set $env "CES_PUBSUB_BUFFER_BYTES" (include "ces.envValue" $e.limits.pubsubBufferBytes) }}
{{- $_ := set $env "CES_HTTP_MAX_CONNECTIONS" (include "ces.envValue" $e.limits.httpMaxConnections) }}
{{- with $e.trustedProxies }}
{{- $_ := set $env "CES_TRUSTED_PROXIES" (join "," .) }}
{{- end }}
{{- $_ := set $env "CES_PROXY_PROTOCOL" (toString $e.proxyProtocol) }}
{{- with $e.allowedOrigins }}
{{- $_ := set $env "CES_ALLOWED_ORIGINS" (join "," .) }}
{{- end }}
{{- if $e.tls.secretName }}
{{- $_ := set $env "CES_TLS_CERT_FILE" "/etc/ces/tls/tls.crt" }}
{{- $_ := set $env "CES_TLS_KEY_FILE" "/etc/ces/tls/tls.key" }}
{{- end }}
{{- if eq $v.registration.mode "open" }}
{{- $_ := set $env "CES_REGISTER_OPEN" "true" }}
{{- else if eq $v.registration.mode "jwt" }}
{{- $_ := set $env "CES_REGISTER_JWT_ISSUER" $v.registration.jwt.issuer }}
{{- $_ := set $env "CES_REGISTER_JWT_AUDIENCE" $v.registration.jwt.audience }}
{{- if eq $v.registration.jwt.algorithm "RS256" }}
{{- $_ := set $env "CES_REGISTER_JWT_RS256_PUBLIC_KEY_FILE" "/etc/ces/jwt/public-key.pem" }}
{{- end }}
{{- end }}
{{- include "ces.mergeExtraEnv" (dict "env" $env "extra" $e.extraEnv "secretVars" (include "ces.edgeSecretVars" . | fromJsonArray) "where" "edge") }}
{{- end }}

{{- define "ces.edgeSecretEnv" -}}
{{- $v := .Values -}}
{{- include "ces.secretEnv" (dict "root" . "name" "CES_TOKEN_KEYS" "key" "token-keys") }}
{{ include "ces.secretEnv" (dict "root" . "name" "CES_ADMIN_TOKENS" "key" "admin-tokens" "optional" true) }}
{{- if $v.redis.urlFromSecret }}
{{ include "ces.secretEnv" (dict "root" . "name" "CES_REDIS_URL" "key" "redis-url") }}
{{- end }}
{{- if eq $v.registration.mode "apiKeys" }}
{{ include "ces.secretEnv" (dict "root" . "name" "CES_REGISTER_API_KEYS" "key" "register-api-keys") }}
{{- else if and (eq $v.registration.mode "jwt") (eq $v.registration.jwt.algorithm "HS256") }}
{{ include "ces.secretEnv" (dict "root" . "name" "CES_REGISTER_JWT_HS256_SECRET" "key" "register-jwt-hs256-secret") }}
{{- end }}
{{- end }}

{{- define "ces.ingestEnv" -}}
{{- $v := .Values -}}
{{- $k := $v.kafka -}}
{{- $env := include "ces.commonEnv" . | fromYaml -}}
{{- $_ := set $env "CES_KAFKA_BROKERS" $k.brokers }}
{{- $_ := set $env "CES_KAFKA_TOPICS" (join "," $k.topics) }}
{{- $_ := set $env "CES_KAFKA_GROUP" $k.group }}
{{- $_ := set $env "CES_DLQ_TOPIC" $k.dlqTopic }}
{{- /* The chart's schemas ConfigMap is mounted over the image's copy at the same path. */}}
{{- $_ := set $env "CES_SCHEMA_DIR" "/etc/ces/schemas" }}
{{- $_ := set $env "CES_INGEST_HTTP_ADDR" "0.0.0.0:9091" }}
{{- if ne $k.securityProtocol "plaintext" }}
{{- $_ := set $env "CES_KAFKA_PROP_SECURITY_PROTOCOL" $k.securityProtocol }}
{{- end }}
{{- with $k.sasl.mechanism }}
{{- $_ := set $env "CES_KAFKA_PROP_SASL_MECHANISM" . }}
{{- end }}
{{- if or $k.tls.caSecret $k.tls.caConfigMap }}
{{- $_ := set $env "CES_KAFKA_PROP_SSL_CA_LOCATION" "/etc/ces/kafka-ca/ca.crt" }}
{{- end }}
{{- range $name, $value := $k.properties }}
{{- $var := printf "CES_KAFKA_PROP_%s" ($name | upper | replace "." "_") }}
{{- if hasKey $env $var }}
{{- fail (printf "kafka.properties.%s: the chart sets %s from kafka.securityProtocol, kafka.sasl or kafka.tls" $name $var) }}
{{- end }}
{{- $_ := set $env $var (include "ces.envValue" $value) }}
{{- end }}
{{- include "ces.mergeExtraEnv" (dict "env" $env "extra" $v.ingest.extraEnv "secretVars" (include "ces.ingestSecretVars" . | fromJsonArray) "where" "ingest") }}
{{- end }}

{{- define "ces.ingestSecretEnv" -}}
{{- $v := .Values -}}
{{- if $v.redis.urlFromSecret }}
{{ include "ces.secretEnv" (dict "root" . "name" "CES_REDIS_URL" "key" "redis-url") }}
{{- end }}
{{- if hasPrefix "sasl_" $v.kafka.securityProtocol }}
{{ include "ces.secretEnv" (dict "root" . "name" "CES_KAFKA_PROP_SASL_USERNAME" "key" "kafka-sasl-username") }}
{{ include "ces.secretEnv" (dict "root" . "name" "CES_KAFKA_PROP_SASL_PASSWORD" "key" "kafka-sasl-password") }}
{{- end }}
{{- end }}
