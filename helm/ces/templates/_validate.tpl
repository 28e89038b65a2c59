{{/*
Checks that need several values together; values.schema.json checks each value's type and range. Every
template that renders a workload includes "ces.validate", so `helm template` and `helm lint` fail with the
reason instead of rendering pods that would refuse to start or drop their clients.
*/}}

{{/* A Kubernetes memory quantity (1536Mi, 1.5Gi, 2G, 1073741824) in bytes, as a float. */}}
{{- define "ces.bytes" -}}
{{- $q := toString . -}}
{{- $m := regexFind "^[0-9]+(\\.[0-9]+)?" $q -}}
{{- $unit := trimPrefix $m $q -}}
{{- $units := dict "" 1 "k" 1000 "M" 1000000 "G" 1000000000 "T" 1000000000000 "Ki" 1024 "Mi" 1048576 "Gi" 1073741824 "Ti" 1099511627776 -}}
{{- if or (not $m) (not (hasKey $units $unit)) }}
{{- fail (printf "edge.resources.limits.memory %q: expected a number with k, M, G, T, Ki, Mi, Gi or Ti" $q) }}
{{- end }}
{{- mulf (float64 $m) (get $units $unit) }}
{{- end }}

{{- define "ces.validate" -}}
{{- $v := .Values -}}
{{- $e := $v.edge -}}
{{- $d := $e.drain -}}

{{- /* Replicas: one edge alone drops every client at each restart. */}}
{{- if not $e.allowSingleReplica }}
{{- if and $v.autoscaling.enabled (lt (int $v.autoscaling.minReplicas) 2) }}
{{- fail (printf "autoscaling.minReplicas is %d: at least 2 edges, so that one draining or failing leaves another for its clients (set edge.allowSingleReplica=true to accept it)" (int $v.autoscaling.minReplicas)) }}
{{- end }}
{{- if and (not $v.autoscaling.enabled) (lt (int $e.replicas) 2) }}
{{- fail (printf "edge.replicas is %d: at least 2 edges, so that one draining or failing leaves another for its clients (set edge.allowSingleReplica=true to accept it)" (int $e.replicas)) }}
{{- end }}
{{- end }}
{{- if and $v.autoscaling.enabled (lt (int $v.autoscaling.maxReplicas) (int $v.autoscaling.minReplicas)) }}
{{- fail "autoscaling.maxReplicas must be at least autoscaling.minReplicas" }}
{{- end }}

{{- /* Drain: the edge refuses delay + window > grace; kubelet must not SIGKILL an edge that is still draining. */}}
{{- if gt (add $d.delayMs $d.windowMs) (int64 $d.shutdownGraceMs) }}
{{- fail (printf "edge.drain: delayMs (%d) + windowMs (%d) must not exceed shutdownGraceMs (%d); the edge refuses to start otherwise" (int64 $d.delayMs) (int64 $d.windowMs) (int64 $d.shutdownGraceMs)) }}
{{- end }}
{{- $exit := add $d.preStopSeconds (div (add $d.delayMs $d.shutdownGraceMs 999) 1000) 2 }}
{{- if lt (int64 $e.terminationGracePeriodSeconds) $exit }}
{{- fail (printf "edge.terminationGracePeriodSeconds is %d but an edge may take %d s to stop: preStop %d s + drain delay and shutdown grace %d ms (rounded up) + 2 s for its internal listener and Redis QUIT; raise it or shorten the drain" (int64 $e.terminationGracePeriodSeconds) $exit (int64 $d.preStopSeconds) (add $d.delayMs $d.shutdownGraceMs)) }}
{{- end }}

{{- /* Memory: the bounds the edge enforces must fit its limit (values.yaml, edge.limits). */}}
{{- with $e.resources.limits }}{{ with .memory }}
{{- $limit := include "ces.bytes" . | float64 }}
{{- $need := addf 60817408 (mulf $e.limits.maxConnections 6510) $e.limits.queueBudgetBytes $e.limits.pubsubBufferBytes (mulf $e.limits.httpMaxConnections 32768) }}
{{- if gt $need $limit }}
{{- fail (printf "edge.resources.limits.memory (%s) is below what edge.limits let an edge hold: %d MiB = 58 MiB + %d sockets x 6,510 B + queue budget %d MiB + Pub/Sub buffer %d MiB + %d unfinished requests x 32 KiB; raise the limit or lower edge.limits" (toString .) (int64 (ceil (divf $need 1048576))) (int64 $e.limits.maxConnections) (int64 (divf $e.limits.queueBudgetBytes 1048576)) (int64 (divf $e.limits.pubsubBufferBytes 1048576)) (int64 $e.limits.httpMaxConnections)) }}
{{- end }}
{{- end }}{{ end }}

{{- /* Registration: exactly the credentials the mode needs. */}}
{{- $s := $v.secrets -}}
{{- $own := not $s.existingSecret -}}
{{- if eq $v.registration.mode "jwt" }}
{{- if or (not $v.registration.jwt.issuer) (not $v.registration.jwt.audience) }}
{{- fail "registration.mode jwt needs registration.jwt.issuer and registration.jwt.audience: a token the identity provider issued for another service must not register here" }}
{{- end }}
{{- if and $own (eq $v.registration.jwt.algorithm "RS256") (not $s.registerJwtRs256PublicKey) }}
{{- fail "registration.mode jwt with RS256 needs secrets.registerJwtRs256PublicKey (or secrets.existingSecret with the key register-jwt-rs256-public-key)" }}
{{- end }}
{{- if and $own (eq $v.registration.jwt.algorithm "HS256") (lt (len $s.registerJwtHs256Secret) 32) }}
{{- fail "registration.mode jwt with HS256 needs secrets.registerJwtHs256Secret of at least 32 bytes (or secrets.existingSecret with the key register-jwt-hs256-secret)" }}
{{- end }}
{{- else if and (eq $v.registration.mode "apiKeys") $own (not $s.registerApiKeys) }}
{{- fail "registration.mode apiKeys needs secrets.registerApiKeys (or secrets.existingSecret with the key register-api-keys)" }}
{{- end }}
{{- if and $own (not $s.tokenKeys) }}
{{- fail "secrets.tokenKeys is required (kid=secret,...; each secret at least 32 bytes), or secrets.existingSecret with the key token-keys" }}
{{- end }}

{{- /* Redis: a URL, and a CA only for TLS URLs. */}}
{{- if $v.redis.urlFromSecret }}
{{- if and $own (not $s.redisUrl) }}
{{- fail "redis.urlFromSecret needs secrets.redisUrl (or secrets.existingSecret with the key redis-url)" }}
{{- end }}
{{- else }}
{{- if not (regexMatch "^(redis|rediss|redis-cluster|rediss-cluster)://" $v.redis.url) }}
{{- fail (printf "redis.url %q must start with redis://, rediss://, redis-cluster:// or rediss-cluster://" $v.redis.url) }}
{{- end }}
{{- if and (or $v.redis.tls.caSecret $v.redis.tls.caConfigMap) (not (regexMatch "^rediss(-cluster)?://" $v.redis.url)) }}
{{- fail "redis.tls is set but redis.url is not rediss:// or rediss-cluster://: the edge and ingest refuse a CA without TLS" }}
{{- end }}
{{- end }}
{{- if and $v.redis.tls.caSecret $v.redis.tls.caConfigMap }}
{{- fail "redis.tls: caSecret or caConfigMap, not both" }}
{{- end }}

{{- /* Kafka: SASL with a sasl_* protocol only, credentials from the Secret. */}}
{{- $k := $v.kafka -}}
{{- if hasPrefix "sasl_" $k.securityProtocol }}
{{- if not $k.sasl.mechanism }}
{{- fail (printf "kafka.securityProtocol %s needs kafka.sasl.mechanism" $k.securityProtocol) }}
{{- end }}
{{- if and $own (or (not $s.kafkaSaslUsername) (not $s.kafkaSaslPassword)) }}
{{- fail "kafka SASL needs secrets.kafkaSaslUsername and secrets.kafkaSaslPassword (or secrets.existingSecret with kafka-sasl-username and kafka-sasl-password)" }}
{{- end }}
{{- else if $k.sasl.mechanism }}
{{- fail (printf "kafka.sasl.mechanism is set but kafka.securityProtocol is %s, not sasl_plaintext or sasl_ssl" $k.securityProtocol) }}
{{- end }}
{{- if and (or $k.tls.caSecret $k.tls.caConfigMap) (not (has $k.securityProtocol (list "ssl" "sasl_ssl"))) }}
{{- fail (printf "kafka.tls is set but kafka.securityProtocol is %s, not ssl or sasl_ssl" $k.securityProtocol) }}
{{- end }}
{{- if and $k.tls.caSecret $k.tls.caConfigMap }}
{{- fail "kafka.tls: caSecret or caConfigMap, not both" }}
{{- end }}
{{- if has $k.dlqTopic $k.topics }}
{{- fail (printf "kafka.dlqTopic %s is also an input topic; ingest refuses that" $k.dlqTopic) }}
{{- end }}

{{- if and $e.proxyProtocol (not $e.trustedProxies) }}
{{- fail "edge.proxyProtocol needs edge.trustedProxies: only the load balancers listed there may send a PROXY header" }}
{{- end }}
{{- end }}
