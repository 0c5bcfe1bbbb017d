{{/*
Expand the name of the chart.
*/}}
{{- define "finetune-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Create a default fully qualified app name (63 characters: DNS-1123 label limit).
If the release name contains the chart name it is used as the full name.
*/}}
{{- define "finetune-operator.fullname" -}}
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
Chart name and version, as used by the chart label.
*/}}
{{- define "finetune-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels: stable for the life of a release (Deployment selectors are immutable), so never the chart
version.
*/}}
{{- define "finetune-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "finetune-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Common labels: selector labels plus the ones that change between upgrades.
*/}}
{{- define "finetune-operator.labels" -}}
helm.sh/chart: {{ include "finetune-operator.chart" . }}
{{ include "finetune-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: finetune-operator
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Labels for prometheus-operator objects: common labels plus the release-label knob
(e.g. release: kube-prometheus-stack) that the Prometheus' serviceMonitorSelector/podMonitorSelector match.
*/}}
{{- define "finetune-operator.monitoringLabels" -}}
{{ include "finetune-operator.labels" . }}
{{- with .Values.monitoring.additionalLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
The ServiceAccount's name.
*/}}
{{- define "finetune-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "finetune-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The operator image; the tag defaults to the chart's appVersion.
*/}}
{{- define "finetune-operator.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion }}
{{- if .Values.image.digest }}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/*
The trainer image used for FineTuneJobs that set none; the tag defaults to the chart's appVersion.
*/}}
{{- define "finetune-operator.trainerImage" -}}
{{- printf "%s:%s" .Values.trainer.image.repository (.Values.trainer.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/*
Namespaced mode: the operator watches only .Values.watchNamespaces.
*/}}
{{- define "finetune-operator.namespaced" -}}
{{- if .Values.watchNamespaces }}true{{ end }}
{{- end }}

{{/*
RBAC rules for the namespaced resources the operator reads and writes. Every verb is one the operator
(operator/src/finetune_operator/kube.py, evaluator.py, handlers.py) or Kopf actually calls.
*/}}
{{- define "finetune-operator.namespacedRules" -}}
# FineTuneJobs: Kopf lists/watches them, the reconcilers get them; a FineTuneSweep creates its trials and carries
# its suspend to them (spec.suspend, the only spec field the operator ever writes; no annotations: it registers
# no Kopf change handlers, which would keep their bookkeeping there). Never deleted: trials go by GC.
- apiGroups: ["finetune.dev"]
  resources: ["finetunejobs"]
  verbs: ["get", "list", "watch", "create", "patch"]
# FineTuneSweeps: Kopf lists/watches them (an index); the sweep loop only reads them.
- apiGroups: ["finetune.dev"]
  resources: ["finetunesweeps"]
  verbs: ["get", "list", "watch"]
# Status is a subresource: the reconcilers, early stopping and the sweep loop only PATCH it (a resourceVersion
# in a job's patch body is the precondition); never read or PUT through the subresource.
- apiGroups: ["finetune.dev"]
  resources: ["finetunejobs/status", "finetunesweeps/status"]
  verbs: ["patch"]
# The child PyTorchJob: watched (Kopf on.event), read, created, patched (suspend, queue label), deleted (early stop).
- apiGroups: ["kubeflow.org"]
  resources: ["pytorchjobs"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# The child TrainJob (trainjob backend): the same verbs, for the same reasons. Its ClusterTrainingRuntime is never
# read: a TrainJob naming a missing runtime is refused by Trainer's webhook, and the job says so (ChildRejected).
- apiGroups: ["trainer.kubeflow.org"]
  resources: ["trainjobs"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# Kueue's Workload of a queued child: listed by its job-uid label, and patched (spec.active only) when the user
# suspends or resumes a job Kueue manages — Kueue's own switch; the child's suspend is Kueue's to write then.
- apiGroups: ["kueue.x-k8s.io"]
  resources: ["workloads"]
  verbs: ["list", "patch"]
# The child's pods, listed by label: exit codes for the Failed condition, the Master pod's IP for the
# direct-scrape fallback. Never watched, never read one by one.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list"]
# Phase-transition Events (the operator) and handler Events (Kopf) are POSTed; the training-operator's
# FailedCreatePod Events on PyTorchJobs are listed (one field-selected LIST per check), to tell a job whose pods
# cannot be created.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "list"]
{{- if and .Values.peering (include "finetune-operator.namespaced" .) }}
# Kopf peering (namespaced operators use KopfPeering objects in each watched namespace).
- apiGroups: ["kopf.dev"]
  resources: ["kopfpeerings"]
  verbs: ["get", "list", "watch", "patch"]
{{- end }}
{{- end }}

{{/*
Install the ClusterTrainingRuntime? ("true"/empty)
*/}}
{{- define "finetune-operator.createRuntime" -}}
{{- $create := toString .Values.trainJobRuntime.create }}
{{- if eq $create "true" }}true
{{- else if eq $create "auto" }}
{{- if or (eq .Values.backend "trainjob") (and (eq .Values.backend "auto") (.Capabilities.APIVersions.Has "trainer.kubeflow.org/v1alpha1/ClusterTrainingRuntime")) }}true{{ end }}
{{- end }}
{{- end }}
