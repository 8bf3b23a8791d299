{{/*
Name of the chart, possibly overridden.
*/}}
{{- define "orrery.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified name of the release's objects. Truncated to 63 characters (DNS label limit).
*/}}
{{- define "orrery.fullname" -}}
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
Chart name and version, for the helm.sh/chart label.
*/}}
{{- define "orrery.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels of every object of the release.
*/}}
{{- define "orrery.labels" -}}
helm.sh/chart: {{ include "orrery.chart" . }}
{{ include "orrery.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: orrery
{{- end }}

{{/*
Labels that select the operator pods. Never change these: Deployment selectors are immutable.
*/}}
{{- define "orrery.selectorLabels" -}}
app.kubernetes.io/name: {{ include "orrery.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Name of the operator's ServiceAccount.
*/}}
{{- define "orrery.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "orrery.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The operator image reference.
*/}}
{{- define "orrery.image" -}}
{{- $tag := .Values.image.tag | toString | default .Chart.AppVersion }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}

{{/*
Name of the Role and RoleBinding that let the operator hold its leader-election Lease.
*/}}
{{- define "orrery.leaderElectionName" -}}
{{- printf "%s-leader-election" (include "orrery.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The metadata line of a CRD with the release's labels and, unless crds.keep is false, the
annotation that makes `helm uninstall` leave the CRD (and every tenant) in place.
*/}}
{{- define "orrery.crdMetadata" -}}
metadata:
  labels:
    {{- include "orrery.labels" . | nindent 4 }}
  {{- if .Values.crds.keep }}
  annotations:
    helm.sh/resource-policy: keep
  {{- end }}
{{- end }}

{{/*
Name of the Service of the cluster-autoscaler API (a DNS label).
*/}}
{{- define "orrery.autoscalerService" -}}
{{- printf "%s-autoscaler" (include "orrery.fullname" . | trunc 52 | trimSuffix "-") }}
{{- end }}
