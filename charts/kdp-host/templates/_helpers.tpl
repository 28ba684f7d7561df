{{/*
Names, labels and the few values derived from the kdp-host config.
*/}}

{{- define "kdp-host.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: release-chart, truncated to 63 characters (DNS label); fullnameOverride wins.
*/}}
{{- define "kdp-host.fullname" -}}
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

{{- define "kdp-host.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The namespace of every namespaced object: namespaceOverride, else the release's.
*/}}
{{- define "kdp-host.namespace" -}}
{{- default .Release.Namespace .Values.namespaceOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kdp-host.labels" -}}
helm.sh/chart: {{ include "kdp-host.chart" . }}
{{ include "kdp-host.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: device-plugin
{{- end }}

{{- define "kdp-host.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kdp-host.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "kdp-host.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kdp-host.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "kdp-host.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
{{- end }}

{{/*
Fixed paths inside the container. The Dockerfile's default CMD uses the same config path.
*/}}
{{- define "kdp-host.configDir" -}}/etc/kdp-host{{- end }}
{{- define "kdp-host.configPath" -}}/etc/kdp-host/config.yaml{{- end }}

{{/*
The pod's own scratch directory (an emptyDir) and the termination message file on it: the
default terminationMessagePath, /dev/termination-log, lies on the host's /dev mounted at /dev,
where the runtime would create its mount point (and a read-only /dev would fail the start).
*/}}
{{- define "kdp-host.tmpDir" -}}/tmp{{- end }}
{{- define "kdp-host.terminationMessagePath" -}}{{ include "kdp-host.tmpDir" . }}/termination-log{{- end }}

{{/*
The ConfigMap holding the kdp-host config, and its key: existingConfigMap, else the chart's.
*/}}
{{- define "kdp-host.configMapName" -}}
{{- .Values.existingConfigMap.name | default (printf "%s-config" (include "kdp-host.fullname" .)) }}
{{- end }}
{{- define "kdp-host.configMapKey" -}}
{{- if .Values.existingConfigMap.name }}{{ .Values.existingConfigMap.key | default "config.yaml" }}{{ else }}config.yaml{{ end }}
{{- end }}

{{/*
Whether a prometheus-operator monitor is rendered: enabled, and its CRD is served by the
cluster (.Capabilities.APIVersions) unless detectCRD is false. Call with (list $ "ServiceMonitor"
.Values.metrics.serviceMonitor); renders "true" or nothing.
*/}}
{{- define "kdp-host.renderMonitor" -}}
{{- $root := index . 0 }}
{{- $kind := index . 1 }}
{{- $values := index . 2 }}
{{- if and $values.enabled (or (not $values.detectCRD) ($root.Capabilities.APIVersions.Has (printf "monitoring.coreos.com/v1/%s" $kind))) -}}
true
{{- end }}
{{- end }}

{{/*
The kubelet's device-plugin directory: config.kubelet.socketDir, mounted from the host at the
same path so the socket paths kdp-host registers are the kubelet's.
*/}}
{{- define "kdp-host.socketDir" -}}
{{- $dir := dig "kubelet" "socketDir" "/var/lib/kubelet/device-plugins" .Values.config | toString }}
{{- if not (hasPrefix "/" $dir) }}
{{- fail (printf "config.kubelet.socketDir must be an absolute path, got %q" $dir) }}
{{- end }}
{{- $dir }}
{{- end }}

{{/*
The kubelet's plugins_registry directory when config.kubelet.registration is pluginsRegistry
and it does not lie inside the socket dir (already mounted); "" otherwise. Mounted from the
host at the same path: the kubelet dials the absolute endpoint kdp-host names in GetInfo.
*/}}
{{- define "kdp-host.pluginsRegistryDir" -}}
{{- $kubelet := dig "kubelet" (dict) .Values.config }}
{{- if eq (toString (dig "registration" "deviceSocket" $kubelet)) "pluginsRegistry" }}
{{- $dir := dig "pluginsRegistryDir" "/var/lib/kubelet/plugins_registry" $kubelet | toString }}
{{- if not (hasPrefix "/" $dir) }}
{{- fail (printf "config.kubelet.pluginsRegistryDir must be an absolute path, got %q" $dir) }}
{{- end }}
{{- $socketDir := include "kdp-host.socketDir" . | trimSuffix "/" }}
{{- if not (hasPrefix (printf "%s/" $socketDir) $dir) }}
{{- $dir }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The metrics port: the port of config.metrics.listen ("host:port"). The kubelet's probes and
Prometheus reach the pod IP, so a loopback listen address cannot work in the chart.
*/}}
{{- define "kdp-host.metricsPort" -}}
{{- $listen := dig "metrics" "listen" "0.0.0.0:9410" .Values.config | toString }}
{{- $port := regexFind "[0-9]+$" $listen }}
{{- if or (not (regexMatch ":[0-9]+$" $listen)) (gt (int $port) 65535) (lt (int $port) 1) }}
{{- fail (printf "config.metrics.listen must be host:port, got %q" $listen) }}
{{- end }}
{{- $host := trimSuffix (printf ":%s" $port) $listen }}
{{- if or (hasPrefix "127." $host) (eq $host "localhost") (eq $host "[::1]") }}
{{- fail (printf "config.metrics.listen %q listens on loopback only: the kubelet's probes and Prometheus reach the pod IP; use 0.0.0.0:%s" $listen $port) }}
{{- end }}
{{- $port }}
{{- end }}

{{/*
Host directories for CDI spec files: allocate.cdi.specDir (default /var/run/cdi) of every
resource that uses CDI and, when one does, config.cdiRuntimeDirs (default /etc/cdi and
/var/run/cdi: a file a killed pod left in a former specDir is removed there), one per
line, deduplicated.
*/}}
{{- define "kdp-host.cdiDirs" -}}
{{- $dirs := list }}
{{- range $r := (dig "resources" (list) .Values.config) }}
{{- if kindIs "map" $r }}
{{- $cdi := dig "allocate" "cdi" (dict) $r }}
{{- if and (kindIs "map" $cdi) $cdi }}
{{- $dirs = append $dirs (dig "specDir" "/var/run/cdi" $cdi | toString) }}
{{- end }}
{{- end }}
{{- end }}
{{- if $dirs }}
{{- range $d := (dig "cdiRuntimeDirs" (list "/etc/cdi" "/var/run/cdi") .Values.config) }}
{{- $dirs = append $dirs ($d | toString) }}
{{- end }}
{{- end }}
{{- $dirs | uniq | join "\n" }}
{{- end }}

{{/*
The kubelet's PodResources directory (the directory of config.kubelet.podResourcesSocket),
mounted read-only at the same path when polling is on (podResourcesInterval not 0s); empty
when it is off.
*/}}
{{- define "kdp-host.podResourcesDir" -}}
{{- $interval := dig "kubelet" "podResourcesInterval" "5s" .Values.config | toString }}
{{- if not (regexMatch "^0+(\\.0*)?(ns|us|µs|ms|s|m|h)?$" $interval) }}
{{- $socket := dig "kubelet" "podResourcesSocket" "/var/lib/kubelet/pod-resources/kubelet.sock" .Values.config | toString }}
{{- if not (hasPrefix "/" $socket) }}
{{- fail (printf "config.kubelet.podResourcesSocket must be an absolute path, got %q" $socket) }}
{{- end }}
{{- dir $socket }}
{{- end }}
{{- end }}

{{/*
config.stateDir, always mounted: what is kept there must outlive the pod (the release state of
resources with `release`, and the device IDs the kubelet booked with the nodes they reach).
*/}}
{{- define "kdp-host.stateDir" -}}
{{- $dir := dig "stateDir" "/var/lib/kdp-host" .Values.config | toString }}
{{- if not (hasPrefix "/" $dir) }}
{{- fail (printf "config.stateDir must be an absolute path, got %q" $dir) }}
{{- end }}
{{- $dir }}
{{- end }}

{{/*
The container securityContext: the preset, with .Values.securityContext merged over it.
*/}}
{{- define "kdp-host.securityContext" -}}
{{- $preset := dict }}
{{- if eq .Values.securityPreset "privileged" }}
{{- $preset = dict "privileged" true }}
{{- else if eq .Values.securityPreset "restricted" }}
{{- $preset = dict "privileged" false "allowPrivilegeEscalation" false "readOnlyRootFilesystem" true "capabilities" (dict "drop" (list "ALL")) "seccompProfile" (dict "type" "RuntimeDefault") }}
{{- end }}
{{- $merged := mergeOverwrite $preset (deepCopy .Values.securityContext) }}
{{- if $merged }}
{{- toYaml $merged }}
{{- end }}
{{- end }}

{{/*
A probe from values: everything but `enabled`.
*/}}
{{- define "kdp-host.probe" -}}
{{- toYaml (omit . "enabled") }}
{{- end }}

{{/*
Whether kdp-host reads its node's labels from the API (a resource selects nodes by label, or
nodeLabels.read for a ConfigMap of your own): then it gets RBAC to get and watch nodes and a
service account token. Renders "true" or nothing.
*/}}
{{- define "kdp-host.readsNodeLabels" -}}
{{- $reads := .Values.nodeLabels.read }}
{{- range $r := (dig "resources" (list) .Values.config) }}
{{- if and (kindIs "map" $r) (dig "nodeSelector" "labels" (dict) $r) }}
{{- $reads = true }}
{{- end }}
{{- end }}
{{- if $reads }}true{{ end }}
{{- end }}

{{/*
The host directory of config.nodeFeatures.file (Node Feature Discovery's features.d),
mounted at the same path; nothing when nodeFeatures is not set.
*/}}
{{- define "kdp-host.nodeFeaturesDir" -}}
{{- $nf := dig "nodeFeatures" nil .Values.config }}
{{- if kindIs "map" $nf }}
{{- $file := dig "file" "/etc/kubernetes/node-feature-discovery/features.d/kdp-host" $nf | toString }}
{{- dir $file }}
{{- else if not (kindIs "invalid" $nf) }}
{{- dir "/etc/kubernetes/node-feature-discovery/features.d/kdp-host" }}
{{- end }}
{{- end }}

{{/*
What kdp-host's heldMissing does with the API, from config.heldMissing (or, with
existingConfigMap, heldMissing.events / heldMissing.deletePods in values): "events",
"delete" (deletePods, with or without events), or nothing.
*/}}
{{- define "kdp-host.heldMissingEvents" -}}
{{- $held := dig "heldMissing" (dict) .Values.config }}
{{- if or .Values.heldMissing.events (and (kindIs "map" $held) (dig "events" false $held)) }}true{{ end }}
{{- end }}

{{- define "kdp-host.deletesPods" -}}
{{- $held := dig "heldMissing" (dict) .Values.config }}
{{- if or .Values.heldMissing.deletePods (and (kindIs "map" $held) (kindIs "map" (dig "deletePods" nil $held))) }}true{{ end }}
{{- end }}

{{/*
Whether kdp-host calls the Kubernetes API at all (node labels, heldMissing): then its
service account token is mounted. Renders "true" or nothing.
*/}}
{{- define "kdp-host.usesApi" -}}
{{- if or (include "kdp-host.readsNodeLabels" .) (include "kdp-host.heldMissingEvents" .) (include "kdp-host.deletesPods" .) }}true{{ end }}
{{- end }}
