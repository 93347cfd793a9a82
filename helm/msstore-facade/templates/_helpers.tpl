{{/*
The chart name, or nameOverride, truncated to 63 characters (DNS label limit).
*/}}
{{- define "msstore-facade.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name: fullnameOverride, else "<release>-<name>" (just the release when it already
contains the name), truncated to 63 characters.
*/}}
{{- define "msstore-facade.fullname" -}}
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

{{/*
"<fullname>-<suffix>" within 63 characters: the full name is cut to leave room for the suffix.
*/}}
{{- define "msstore-facade.suffixedName" -}}
{{- $suffix := .suffix }}
{{- $max := sub 62 (len $suffix) | int }}
{{- printf "%s-%s" (include "msstore-facade.fullname" .ctx | trunc $max | trimSuffix "-") $suffix }}
{{- end }}

{{- define "msstore-facade.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels.
*/}}
{{- define "msstore-facade.labels" -}}
helm.sh/chart: {{ include "msstore-facade.chart" . }}
{{ include "msstore-facade.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | trimSuffix "-" | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: msstore-facade
{{- end }}

{{/*
Selector labels: name and instance only (selectors are immutable; nothing that changes
between releases goes in here).
*/}}
{{- define "msstore-facade.selectorLabels" -}}
app.kubernetes.io/name: {{ include "msstore-facade.name" . }}
app.kubernetes.io/instance: {{ .Release.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "msstore-facade.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "msstore-facade.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
An image reference from {registry, repository, tag, digest}; the digest wins over the tag.
*/}}
{{- define "msstore-facade.imageRef" -}}
{{- $image := .image }}
{{- $repo := $image.repository }}
{{- if $image.registry }}{{ $repo = printf "%s/%s" $image.registry $image.repository }}{{ end }}
{{- if $image.digest }}
{{- printf "%s@%s" $repo $image.digest }}
{{- else }}
{{- printf "%s:%s" $repo (default .default $image.tag) }}
{{- end }}
{{- end }}

{{/*
A duration value in whole seconds, rounded up ("500ms" -> 1, "25s" -> 25, "1m" -> 60); takes
(list "config.name" value).
*/}}
{{- define "msstore-facade.durationSeconds" -}}
{{- $name := index . 0 }}
{{- $value := index . 1 | toString }}
{{- if not (regexMatch "^[0-9]+(ms|s|m)$" $value) }}
{{- fail (printf "%s %q: use whole ms, s or m, e.g. 25s" $name $value) }}
{{- end }}
{{- $n := regexFind "^[0-9]+" $value | int }}
{{- if hasSuffix "ms" $value }}
{{- div (add $n 999) 1000 }}
{{- else if hasSuffix "m" $value }}
{{- mul $n 60 }}
{{- else }}
{{- $n }}
{{- end }}
{{- end }}

{{/*
The facade's whole shutdown in seconds: config.drainDelay (still accepting calls, health
NOT_SERVING) then config.shutdownGrace (finishing calls in flight).
*/}}
{{- define "msstore-facade.shutdownSeconds" -}}
{{- $delay := include "msstore-facade.durationSeconds" (list "config.drainDelay" .Values.config.drainDelay) | int }}
{{- $grace := include "msstore-facade.durationSeconds" (list "config.shutdownGrace" .Values.config.shutdownGrace) | int }}
{{- add $delay $grace }}
{{- end }}

{{/*
terminationGracePeriodSeconds: the explicit value, which must exceed the facade's shutdown
(drain delay plus drain), or that shutdown plus 5 s (time for the last answers to flush and
the process to exit).
*/}}
{{- define "msstore-facade.terminationGracePeriodSeconds" -}}
{{- $shutdown := include "msstore-facade.shutdownSeconds" . | int }}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- add $shutdown 5 }}
{{- else }}
{{- $explicit := .Values.terminationGracePeriodSeconds | int }}
{{- if le $explicit $shutdown }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must exceed config.drainDelay (%s) + config.shutdownGrace (%s): the kubelet would SIGKILL the facade while it drains" $explicit .Values.config.drainDelay .Values.config.shutdownGrace) }}
{{- end }}
{{- $explicit }}
{{- end }}
{{- end }}

{{/*
How the facade authenticates to Entra: "workloadIdentity", "secret" or "none". Fails on
contradictory settings.
*/}}
{{- define "msstore-facade.credentialMode" -}}
{{- $c := .Values.credentials }}
{{- if .Values.config.sandbox }}
{{- print "sandbox" }}
{{- else if and $c.clientSecret $c.existingSecret }}
{{- fail "set credentials.clientSecret or credentials.existingSecret, not both" }}
{{- end }}
{{- if .Values.workloadIdentity.enabled }}
{{- if or $c.clientSecret $c.existingSecret }}
{{- fail "workloadIdentity.enabled uses a federated token instead of a client secret: unset credentials.clientSecret and credentials.existingSecret" }}
{{- end }}
{{- if not (or .Values.workloadIdentity.clientId $c.clientId) }}
{{- fail "workloadIdentity.enabled needs workloadIdentity.clientId (or credentials.clientId)" }}
{{- end }}
{{- if not .Values.serviceAccount.create }}
{{- if not .Values.serviceAccount.name }}
{{- fail "workloadIdentity.enabled needs a ServiceAccount: serviceAccount.create, or serviceAccount.name of one annotated with azure.workload.identity/client-id" }}
{{- end }}
{{- end }}
{{- print "workloadIdentity" }}
{{- else if or $c.clientSecret $c.existingSecret }}
{{- if not (and $c.tenantId $c.clientId) }}
{{- fail "a client secret needs credentials.tenantId and credentials.clientId too" }}
{{- end }}
{{- print "secret" }}
{{- else if or $c.tenantId $c.clientId }}
{{- fail "credentials.tenantId/clientId without credentials.clientSecret, credentials.existingSecret or workloadIdentity.enabled: the facade refuses half-configured credentials" }}
{{- else }}
{{- print "none" }}
{{- end }}
{{- end }}

{{- define "msstore-facade.secretName" -}}
{{- default (include "msstore-facade.fullname" .) .Values.credentials.existingSecret }}
{{- end }}

{{/*
Labels of the `helm test` pod: deliberately not the selector labels, so the Services never
send it traffic.
*/}}
{{- define "msstore-facade.testLabels" -}}
app.kubernetes.io/name: {{ printf "%s-test" (include "msstore-facade.name" .) | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/instance: {{ .Release.Name | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/component: helm-test
{{- end }}

{{/*
Where the certificate Secret is mounted in the facade's container (a whole-Secret volume, never
subPath: the kubelet swaps in renewed files and the facade re-reads them).
*/}}
{{- define "msstore-facade.tlsDir" -}}
/etc/msstore-facade/tls
{{- end }}

{{/*
Where a client CA bundle from another Secret or a ConfigMap is mounted.
*/}}
{{- define "msstore-facade.clientCaDir" -}}
/etc/msstore-facade/client-ca
{{- end }}

{{/*
Where the client CA bundle comes from: "configMap", "secret" (a Secret other than
tls.secretName, in its own volume) or "tlsSecret" (a key of tls.secretName, already mounted);
empty without mutual TLS.
*/}}
{{- define "msstore-facade.clientCaSource" -}}
{{- $tls := .Values.tls }}
{{- if and $tls.enabled $tls.clientAuth.enabled }}
{{- if $tls.clientAuth.caConfigMapName }}
{{- print "configMap" }}
{{- else if and $tls.clientAuth.caSecretName (ne $tls.clientAuth.caSecretName $tls.secretName) }}
{{- print "secret" }}
{{- else }}
{{- print "tlsSecret" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
MSSTORE_TLS_CLIENT_CA: the path of the client CA bundle in the container.
*/}}
{{- define "msstore-facade.clientCaPath" -}}
{{- $source := include "msstore-facade.clientCaSource" . }}
{{- if eq $source "tlsSecret" }}
{{- printf "%s/%s" (include "msstore-facade.tlsDir" .) .Values.tls.clientAuth.caKey }}
{{- else }}
{{- printf "%s/%s" (include "msstore-facade.clientCaDir" .) .Values.tls.clientAuth.caKey }}
{{- end }}
{{- end }}

{{/*
Settings that hold across templates; fails with the value to change. Included by the
Deployment, so every rendering checks them.
*/}}
{{- define "msstore-facade.validate" -}}
{{- $bind := .Values.config.bindAddress | trimPrefix "[" | trimSuffix "]" }}
{{- if or (hasPrefix "127." $bind) (eq $bind "::1") (eq $bind "localhost") }}
{{- fail (printf "config.bindAddress %q is loopback: the kubelet probes the admin port and the Service sends calls on the pod IP; use 0.0.0.0 or [::]" .Values.config.bindAddress) }}
{{- end }}
{{- range .Values.extraEnv }}
{{- $name := .name | toString }}
{{- if has $name (list "MSSTORE_GRPC_ADDR" "MSSTORE_ADMIN_ADDR") }}
{{- fail (printf "extraEnv sets %s: the chart derives it from config.bindAddress and containerPorts (the probes and Services follow those); set them instead" $name) }}
{{- end }}
{{- if hasPrefix "MSSTORE_TLS_" $name }}
{{- fail (printf "extraEnv sets %s: use the tls.* values (they mount the Secret and set MSSTORE_TLS_CERT, MSSTORE_TLS_KEY and MSSTORE_TLS_CLIENT_CA)" $name) }}
{{- end }}
{{- end }}
{{- with .Values.tls.clientAuth }}
{{- if and .caSecretName .caConfigMapName }}
{{- fail "tls.clientAuth: set caSecretName or caConfigMapName (where the client CA bundle comes from), not both" }}
{{- end }}
{{- end }}
{{- $np := .Values.networkPolicy }}
{{- if $np.ingressFrom }}
{{- fail "networkPolicy.ingressFrom was removed: it opened the gRPC and admin ports to the same peers. Put callers in networkPolicy.grpcFrom (with allowExternal=false) and Prometheus in networkPolicy.adminFrom" }}
{{- end }}
{{- if and $np.enabled $np.allowExternal $np.grpcFrom }}
{{- fail "networkPolicy.grpcFrom is set but networkPolicy.allowExternal is true, which lets anyone call the gRPC port: set allowExternal=false to restrict it to grpcFrom" }}
{{- end }}
{{- end }}
