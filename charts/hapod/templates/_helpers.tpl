{{/*
The app.kubernetes.io/name of every object: hapod-controller, as in
deploy/controller.
*/}}
{{- define "hapod.name" -}}
{{- default "hapod-controller" .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The name of the objects: <release>-controller, or <release>-hapod-controller
when the release name does not say hapod; `helm install hapod` gives
hapod-controller, the names of deploy/controller. Cluster-scoped objects
(ClusterRole, admission policies) carry it too, so two releases of one name in
two namespaces collide: name them differently.
*/}}
{{- define "hapod.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else if contains "hapod" .Release.Name }}
{{- printf "%s-controller" .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-hapod-controller" .Release.Name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "hapod.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels: the Deployment's, the Service's, the policies'. */}}
{{- define "hapod.selectorLabels" -}}
app.kubernetes.io/name: {{ include "hapod.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Every object's labels. */}}
{{- define "hapod.labels" -}}
helm.sh/chart: {{ include "hapod.chart" . }}
{{ include "hapod.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: hapod
{{- end }}

{{- define "hapod.serviceAccountName" -}}
{{- include "hapod.fullname" . }}
{{- end }}

{{/* The controller's user name, as the admission policies match it. */}}
{{- define "hapod.username" -}}
{{- printf "system:serviceaccount:%s:%s" .Release.Namespace (include "hapod.serviceAccountName" .) }}
{{- end }}

{{- define "hapod.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default (printf "v%s" .Chart.AppVersion)) }}
{{- end }}

{{/*
The leader-election Lease: cmd/hapod-controller names it hapod-controller
whatever the release (opts.LeaderElectionID), so one release per namespace.
*/}}
{{- define "hapod.leaderLease" -}}
hapod-controller
{{- end }}

{{/*
What the schema cannot say: pairs of values the controller refuses together
(internal/config Validate). Failing here fails helm install, not the pod.
*/}}
{{- define "hapod.validate" -}}
{{- if eq .Values.groupLabel .Values.roleLabel }}
{{- fail "groupLabel must differ from roleLabel: every relabel would move a pod into another group" }}
{{- end }}
{{- if eq .Values.activeValue .Values.standbyValue }}
{{- fail "standbyValue must differ from activeValue" }}
{{- end }}
{{- if and (not .Values.leaderElection.enabled) (gt (int .Values.replicas) 1) }}
{{- fail "replicas > 1 needs leaderElection.enabled: two controllers without a leader would both relabel pods" }}
{{- end }}
{{- if and .Values.groups (not .Values.watchNamespaces) }}
{{- fail "groups names the epoch Leases of the namespace-scoped install: set watchNamespaces too (cluster-wide, the ClusterRole grants every Lease)" }}
{{- end }}
{{- end }}

{{/*
The rules the controller needs where it manages pods: in a ClusterRole
cluster-wide, in a Role per namespace with watchNamespaces. Argument: a dict
with "root" (the chart's context) and "leaseNames" (the epoch Leases to grant
get/update by name; empty: every Lease).
*/}}
{{- define "hapod.appRules" -}}
# Watch the managed pods, relabel them (role=active/standby) and delete a pod
# whose critical container died. Which fields a patch may change is the
# admission policy's business: RBAC cannot say.
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch, patch, delete]
# Events on pods about promotions, demotions and deletions; the manager's
# recorder may use either events API.
- apiGroups: [""]
  resources: [events]
  verbs: [create, patch]
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
# One Lease per group, <leasePrefix><group>: the durable home of the group's
# epoch. Read uncached, so no list or watch. resourceNames cannot restrict
# create; the admission policy keeps created names to <leasePrefix>*.
{{- if .leaseNames }}
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  resourceNames: {{ toJson .leaseNames }}
  verbs: [get, update]
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  verbs: [create]
{{- else }}
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  verbs: [get, create, update]
{{- end }}
# The HAGroup resources (crds/): read the groups, write their status.
- apiGroups: [hapod.io]
  resources: [hagroups]
  verbs: [get, list, watch]
- apiGroups: [hapod.io]
  resources: [hagroups/status]
  verbs: [update]
{{- end }}

{{/* Nodes are cluster-scoped: a ClusterRole in either install (--watch-nodes). */}}
{{- define "hapod.nodeRules" -}}
# Fail over when the active pod's node goes NotReady (watchNodes).
- apiGroups: [""]
  resources: [nodes]
  verbs: [get, list, watch]
{{- end }}
