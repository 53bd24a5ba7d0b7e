{{/*
Names and labels shared by every template. Nothing here is random or time-dependent:
`helm template` renders the same bytes for the same values.
*/}}

{{- define "portcullis.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The object name prefix: the release name, plus the chart name unless it is in it. */}}
{{- define "portcullis.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "portcullis.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels: stable across upgrades (a Deployment's selector is immutable). */}}
{{- define "portcullis.selectorLabels" -}}
app.kubernetes.io/name: {{ include "portcullis.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "portcullis.labels" -}}
helm.sh/chart: {{ include "portcullis.chart" . }}
{{ include "portcullis.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: portcullis
{{- end -}}

{{/*
Labels of a pod template: no chart or app version, so that a chart bump restarts the gate
(and drops every open WebSocket) only when the pod spec itself changed.
*/}}
{{- define "portcullis.podLabels" -}}
{{ include "portcullis.selectorLabels" . }}
app.kubernetes.io/part-of: portcullis
{{- end -}}

{{/* Whether the controller and the proxy run as separate workloads (operator.mode=split). */}}
{{- define "portcullis.split" -}}
{{- if eq .Values.operator.mode "split" -}}true{{- end -}}
{{- end -}}

{{/*
The workloads: split (default) runs the controller and the proxy as two Deployments with
two ServiceAccounts; combined runs one Deployment (`--role all`) as one ServiceAccount.
Each: name, component label, --role, replicas, ServiceAccount.
*/}}
{{- define "portcullis.workloads" -}}
{{- $full := include "portcullis.fullname" . -}}
{{- if include "portcullis.split" . -}}
- name: {{ $full }}-controller
  component: controller
  role: controller
  replicas: {{ .Values.controller.replicas }}
  serviceAccount: {{ include "portcullis.serviceAccountName" (list . "controller") }}
- name: {{ $full }}-proxy
  component: proxy
  role: proxy
  replicas: {{ .Values.replicas }}
  serviceAccount: {{ include "portcullis.serviceAccountName" (list . "proxy") }}
{{- else -}}
- name: {{ $full }}
  component: operator
  role: all
  replicas: {{ .Values.replicas }}
  serviceAccount: {{ include "portcullis.serviceAccountName" (list . "") }}
{{- end -}}
{{- end -}}

{{/* The component label of the pods that serve traffic. */}}
{{- define "portcullis.dataPlaneComponent" -}}
{{- if include "portcullis.split" . -}}proxy{{- else -}}operator{{- end -}}
{{- end -}}

{{/*
A ServiceAccount's name: (list $ component), component "controller", "proxy" or "" (the
combined workload). serviceAccount.name is the base; split mode appends the component.
*/}}
{{- define "portcullis.serviceAccountName" -}}
{{- $root := index . 0 -}}
{{- $component := index . 1 -}}
{{- $base := "" -}}
{{- if $root.Values.serviceAccount.create -}}
{{- $base = default (include "portcullis.fullname" $root) $root.Values.serviceAccount.name -}}
{{- else -}}
{{- $base = required "serviceAccount.name is required when serviceAccount.create is false" $root.Values.serviceAccount.name -}}
{{- end -}}
{{- if $component -}}
{{- printf "%s-%s" $base $component | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $base -}}
{{- end -}}
{{- end -}}

{{/* The namespaces watched: watchNamespaces, or none (the whole cluster). */}}
{{- define "portcullis.watchNamespaces" -}}
{{- .Values.watchNamespaces | uniq | join "," -}}
{{- end -}}

{{- define "portcullis.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* The port Traefik sends the PROXY protocol to (only Traefik may reach it). */}}
{{- define "portcullis.proxyProtocolPort" -}}
{{- if .Values.traefik.ingressRouteTCP.enabled -}}{{ .Values.traefik.proxyProtocolPort }}{{- end -}}
{{- end -}}
