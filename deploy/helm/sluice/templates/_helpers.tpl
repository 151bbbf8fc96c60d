{{/*
Names and labels.
*/}}
{{- define "sluice.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "sluice.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "sluice.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "sluice.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "sluice.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sluice.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "sluice.labels" -}}
{{ include "sluice.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "sluice.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "sluice.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
A Kubernetes memory quantity in Mi or Gi ("8Gi", "512Mi") as a number of
MiB; anything else fails the render.
*/}}
{{- define "sluice.mebibytes" -}}
{{- $q := toString . -}}
{{- if regexMatch "^[0-9]+Gi$" $q -}}
{{- mul (trimSuffix "Gi" $q | atoi) 1024 -}}
{{- else if regexMatch "^[0-9]+Mi$" $q -}}
{{- trimSuffix "Mi" $q | atoi -}}
{{- else -}}
{{- fail (printf "memory quantities must be whole Mi or Gi, e.g. 8Gi or 512Mi (got %q)" $q) -}}
{{- end -}}
{{- end -}}

{{/* Memory request and limit of the daemon: budget + overhead. */}}
{{- define "sluice.memoryLimit" -}}
{{- $budget := include "sluice.mebibytes" .Values.memory.budget | atoi -}}
{{- $overhead := include "sluice.mebibytes" .Values.memory.overhead | atoi -}}
{{- printf "%dMi" (add $budget $overhead) -}}
{{- end -}}

{{- define "sluice.socketPath" -}}
{{- printf "%s/%s" (trimSuffix "/" .Values.socket.hostPath) .Values.socket.name -}}
{{- end -}}

{{- define "sluice.terminationGracePeriodSeconds" -}}
{{- $grace := int .Values.gracePeriodSeconds -}}
{{- $termination := .Values.terminationGracePeriodSeconds | default (add $grace 10) | int -}}
{{- if le $termination (add $grace 5) -}}
{{- fail (printf "terminationGracePeriodSeconds (%d) must exceed gracePeriodSeconds + 5 (%d): the drain and the aborts of cancelled uploads need that long" $termination (add $grace 5)) -}}
{{- end -}}
{{- $termination -}}
{{- end -}}

{{/*
The daemon's configuration: .Values.config with the keys the chart owns
merged in (setting one of those in .Values.config fails the render, so the
socket, probes, memory limit and disk volume always match the config).
*/}}
{{- define "sluice.config" -}}
{{- $config := deepCopy (.Values.config | default (dict)) -}}
{{- $server := get $config "server" | default (dict) -}}
{{- $cache := get $config "cache" | default (dict) -}}
{{- range $key := list "socket" "socket_mode" "http" "grace_period" -}}
{{- if hasKey $server $key -}}
{{- fail (printf "config.server.%s is set by the chart: use the socket, http and gracePeriodSeconds values" $key) -}}
{{- end -}}
{{- end -}}
{{- range $key := list "memory_budget" "disk" -}}
{{- if hasKey $cache $key -}}
{{- fail (printf "config.cache.%s is set by the chart: use the memory and diskTier values" $key) -}}
{{- end -}}
{{- end -}}
{{- $_ := set $server "socket" (include "sluice.socketPath" .) -}}
{{- $_ := set $server "socket_mode" (toString .Values.socket.mode) -}}
{{- $_ := set $server "http" (printf "%s:%d" .Values.http.bindAddress (int .Values.http.port)) -}}
{{- $_ := set $server "grace_period" (printf "%ds" (int .Values.gracePeriodSeconds)) -}}
{{- $_ := set $cache "memory_budget" (printf "%sMiB" (include "sluice.mebibytes" .Values.memory.budget)) -}}
{{- if .Values.diskTier.enabled -}}
{{- $_ := set $cache "disk" (dict "dirs" (list .Values.diskTier.mountPath) "max_bytes" .Values.diskTier.maxBytes "write_queue" .Values.diskTier.writeQueue) -}}
{{- end -}}
{{- $_ := set $config "server" $server -}}
{{- $_ := set $config "cache" $cache -}}
{{- include "sluice.toml.table" (dict "table" $config "path" "") -}}
{{- end -}}

{{/*
TOML from a map. Helm's toToml writes every number as a float (64.0),
which integer keys refuse, so the chart writes its own: scalars and lists
of scalars first, then [sub.tables], then [[arrays.of.tables]]. A null
value leaves its key out (the daemon's default applies).
Argument: dict "table" <map> "path" <dotted name of the map, "" at the top>.
*/}}
{{- define "sluice.toml.table" -}}
{{- $table := .table -}}
{{- $path := .path -}}
{{- range $key := keys $table | sortAlpha -}}
{{- $v := get $table $key -}}
{{- if and (not (kindIs "map" $v)) (not (kindIs "invalid" $v)) (not (include "sluice.toml.isTableList" $v)) -}}
{{ $key }} = {{ include "sluice.toml.value" $v }}
{{ end -}}
{{- end -}}
{{- range $key := keys $table | sortAlpha -}}
{{- $v := get $table $key -}}
{{- $name := ternary $key (printf "%s.%s" $path $key) (eq $path "") -}}
{{- if kindIs "map" $v -}}
{{- if include "sluice.toml.hasValues" $v }}
[{{ $name }}]
{{ end -}}
{{ include "sluice.toml.table" (dict "table" $v "path" $name) -}}
{{- else if include "sluice.toml.isTableList" $v -}}
{{- range $item := $v }}
[[{{ $name }}]]
{{ include "sluice.toml.table" (dict "table" $item "path" $name) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* "true" when a table has keys of its own, not only sub-tables: a
table without them needs no [header] (TOML defines it implicitly). */}}
{{- define "sluice.toml.hasValues" -}}
{{- range $v := values . -}}
{{- if and (not (kindIs "map" $v)) (not (kindIs "invalid" $v)) (not (include "sluice.toml.isTableList" $v)) -}}true{{- end -}}
{{- end -}}
{{- end -}}

{{/* "true" for a non-empty list of maps (an array of tables). */}}
{{- define "sluice.toml.isTableList" -}}
{{- if and (kindIs "slice" .) (gt (len .) 0) -}}
{{- if kindIs "map" (first .) -}}true{{- end -}}
{{- end -}}
{{- end -}}

{{/* One TOML value: string, boolean, number (whole numbers as integers) or list. */}}
{{- define "sluice.toml.value" -}}
{{- if kindIs "string" . -}}
{{- toJson . -}}
{{- else if kindIs "bool" . -}}
{{- ternary "true" "false" . -}}
{{- else if kindIs "float64" . -}}
{{- if eq . (float64 (int64 .)) -}}{{- int64 . -}}{{- else -}}{{- . -}}{{- end -}}
{{- else if or (kindIs "int" .) (kindIs "int64" .) -}}
{{- . -}}
{{- else if kindIs "slice" . -}}
[{{- range $i, $item := . -}}{{- if $i -}}, {{ end -}}{{- include "sluice.toml.value" $item -}}{{- end -}}]
{{- else -}}
{{- fail (printf "config: cannot write a %s value as TOML" (kindOf .)) -}}
{{- end -}}
{{- end -}}
