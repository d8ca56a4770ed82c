package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// HAGroup is one group of pods of which hapod keeps exactly one active. Its
// name is the group's: the value of the controller's -group-label (app by
// default) on the group's pods, in the HAGroup's namespace.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=hag,categories=hapod
// +kubebuilder:printcolumn:name="Active",type=string,JSONPath=`.status.active`
// +kubebuilder:printcolumn:name="Epoch",type=integer,JSONPath=`.status.epoch`
// +kubebuilder:printcolumn:name="Standbys",type=string,JSONPath=`.status.standbySummary`,description="eligible/total standbys"
// +kubebuilder:printcolumn:name="Last-Failover",type=date,JSONPath=`.status.lastFailover.time`
// +kubebuilder:printcolumn:name="Failover-ms",type=integer,JSONPath=`.status.lastFailover.labelMs`,description="trigger to the new active's label, ms"
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Available")].status`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type HAGroup struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   HAGroupSpec   `json:"spec,omitempty"`
	Status HAGroupStatus `json:"status,omitempty"`
}

// HAGroupList is a list of HAGroups.
//
// +kubebuilder:object:root=true
type HAGroupList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []HAGroup `json:"items"`
}

// HAGroupSpec is the group's policies. The fields that say what the group's
// pods look like (roleLabel and its values, the criticality marker, the role
// port) are the controller's flags: a spec may leave them out, and one that
// sets them to other values is refused (condition Accepted=False,
// SpecUnsupported) and its group paused, because one controller serves one
// shape of pod: run another controller with those flags for such a group.
type HAGroupSpec struct {
	// Paused stops automatic failover, switchover and deletion: the active
	// stays labelled and renewed, a dead active is not replaced. For
	// maintenance; status says Paused.
	// +optional
	Paused bool `json:"paused,omitempty"`

	// Switchover asks for a planned switchover: set a new id (kubectl hapod
	// switchover does) and the controller moves the active role once, to
	// the pod named in to or to the best eligible standby. The old active
	// is told standby and acks before the new one is told active.
	// +optional
	Switchover *SwitchoverRequest `json:"switchover,omitempty"`

	// SwitchoverOnCordon moves the active role off a cordoned (or
	// draining) node as soon as a standby elsewhere is eligible, before the
	// drain evicts the active. Default true.
	// +optional
	SwitchoverOnCordon *bool `json:"switchoverOnCordon,omitempty"`

	// NotReadyGrace is how long the active may be not Ready before it is
	// failed over; default: the controller's -not-ready-grace.
	// +optional
	NotReadyGrace *metav1.Duration `json:"notReadyGrace,omitempty"`

	// RoleLabel, ActiveValue and StandbyValue name the role label; they
	// must match the controller's -role-label, -active-value and
	// -standby-value.
	// +optional
	RoleLabel string `json:"roleLabel,omitempty"`
	// +optional
	ActiveValue string `json:"activeValue,omitempty"`
	// +optional
	StandbyValue string `json:"standbyValue,omitempty"`
	// CriticalEnv and CriticalValue mark critical containers; they must
	// match the controller's -critical-env and -critical-value.
	// +optional
	CriticalEnv string `json:"criticalEnv,omitempty"`
	// +optional
	CriticalValue string `json:"criticalValue,omitempty"`
	// RolePort is the UDP port of the apps' role listeners; it must match
	// the controller's -role-port.
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	RolePort int32 `json:"rolePort,omitempty"`
	// LeaseTTL is the active app's role lease; it must match the
	// controller's -lease-ttl.
	// +optional
	LeaseTTL *metav1.Duration `json:"leaseTTL,omitempty"`
}

// SwitchoverRequest is one planned switchover.
type SwitchoverRequest struct {
	// ID names the request: the controller carries out each id once and
	// reports it in status.switchover.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=128
	ID string `json:"id"`
	// To is the pod to promote; empty means the best eligible standby.
	// +optional
	To string `json:"to,omitempty"`
}

// HAGroupStatus is what the controller last saw and did. It is written
// after a switch, never before or during one, and coalesced: under a mass
// failover a group's status may lag its labels by a second or so.
type HAGroupStatus struct {
	// ObservedGeneration is the spec generation this status reflects.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// Active is the active pod's name; empty if the group has none.
	// +optional
	Active string `json:"active,omitempty"`
	// ActiveNode is the active pod's node.
	// +optional
	ActiveNode string `json:"activeNode,omitempty"`
	// Epoch is the active's epoch (the group's highest handed out).
	// +optional
	Epoch int64 `json:"epoch,omitempty"`
	// Standbys are the group's other pods, oldest first.
	// +optional
	// +listType=atomic
	Standbys []StandbyStatus `json:"standbys,omitempty"`
	// StandbySummary is "eligible/total", for kubectl get.
	// +optional
	StandbySummary string `json:"standbySummary,omitempty"`
	// LastFailover is the group's most recent promotion.
	// +optional
	LastFailover *FailoverStatus `json:"lastFailover,omitempty"`
	// History is the group's last promotions, newest first, at most
	// HistoryLength (kubectl hapod history).
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=10
	History []FailoverStatus `json:"history,omitempty"`
	// Switchover reports the last planned switchover request handled.
	// +optional
	Switchover *SwitchoverStatus `json:"switchover,omitempty"`
	// Conditions: Available, Degraded (no eligible standby),
	// SwitchoverInProgress, Paused, Accepted.
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// StandbyStatus is one standby pod.
type StandbyStatus struct {
	Name string `json:"name"`
	// +optional
	Node string `json:"node,omitempty"`
	// Eligible: the pod could be promoted now.
	Eligible bool `json:"eligible"`
	// Reason says why a pod is not eligible (NotReady, CriticalContainerDied,
	// NodeNotReady, NodeCordoned, PodDeleting, ...), or, for an eligible
	// pod on a cordoned node, that it is taken last.
	// +optional
	Reason string `json:"reason,omitempty"`
}

// FailoverStatus is one promotion's timeline, in milliseconds from the
// first watch event of its trigger.
type FailoverStatus struct {
	// Time is when the trigger was seen.
	Time metav1.Time `json:"time"`
	// Reason is the old active's fault (PodDeleting, LeaseLapsed,
	// CriticalContainerDied, ...), PlannedSwitchover, NodeCordoned or
	// Initial.
	Reason string `json:"reason"`
	// From is the previous active; empty for an initial election.
	// +optional
	From string `json:"from,omitempty"`
	// To is the promoted pod.
	To    string `json:"to"`
	Epoch int64  `json:"epoch"`
	// AckMs: to the new active app's ack; absent if it did not ack.
	// +optional
	AckMs *int64 `json:"ackMs,omitempty"`
	// LabelMs: to the new active's label committed.
	// +optional
	LabelMs *int64 `json:"labelMs,omitempty"`
	// AckStatus is the ack's status (ok, stale, wrong-pod) or timeout.
	// +optional
	AckStatus string `json:"ackStatus,omitempty"`
	// Replacement is the pod that joined after the failover (a newer pod
	// than the promotion), once one has.
	// +optional
	Replacement string `json:"replacement,omitempty"`
}

// HistoryLength is how many promotions status.history keeps.
const HistoryLength = 10

// SwitchoverPhase is where a planned switchover is.
type SwitchoverPhase string

// Phases of a planned switchover.
const (
	SwitchoverPending    SwitchoverPhase = "Pending"
	SwitchoverInProgress SwitchoverPhase = "InProgress"
	SwitchoverSucceeded  SwitchoverPhase = "Succeeded"
	SwitchoverFailed     SwitchoverPhase = "Failed"
)

// SwitchoverStatus reports a planned switchover.
type SwitchoverStatus struct {
	ID    string          `json:"id"`
	Phase SwitchoverPhase `json:"phase"`
	// +optional
	From string `json:"from,omitempty"`
	// +optional
	To string `json:"to,omitempty"`
	// +optional
	Message string `json:"message,omitempty"`
	// GapMs is the time the group had no active app: from the old active's
	// ack of standby to the new active's ack of active.
	// +optional
	GapMs *int64 `json:"gapMs,omitempty"`
}

// Condition types.
const (
	ConditionAvailable            = "Available"
	ConditionDegraded             = "Degraded"
	ConditionSwitchoverInProgress = "SwitchoverInProgress"
	ConditionPaused               = "Paused"
	ConditionAccepted             = "Accepted"
)
