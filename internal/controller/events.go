package controller

// Event reasons, one per thing a user may want to alert on or grep for.
// They are part of the controller's interface: tools and tests match on
// them, never on the note text.
const (
	// ReasonPromoted: a pod became active and its app acked.
	ReasonPromoted = "Promoted"
	// ReasonPromotedNotAcked: a pod was labelled active but its app did not
	// ack within -notify-deadline.
	ReasonPromotedNotAcked = "PromotedNotAcked"
	// ReasonDemoted: an active pod lost the role with no promotion going
	// with it (a duplicate active).
	ReasonDemoted = "Demoted"
	// ReasonCriticalContainerDied: a critical container died; the pod is
	// deleted so that its ReplicaSet replaces it.
	ReasonCriticalContainerDied = "CriticalContainerDied"
	// ReasonNoStandbyReady: a group needs an active and no pod is eligible.
	ReasonNoStandbyReady = "NoStandbyReady"
	// ReasonUnknownCriticality: a container sets the criticality variable to
	// a value other than -critical-value.
	ReasonUnknownCriticality = "UnknownCriticality"
	// ReasonRoleAddressRefused: the pod's role address is outside
	// -notify-cidrs, so it is never told its role.
	ReasonRoleAddressRefused = "RoleAddressRefused"
	// ReasonLeaseLapsed: the active pod's app stopped acking its role
	// lease's renewals until the lease had certainly lapsed (or refused
	// one), so the group fails over without waiting for the API to show
	// why. Warning, on the pod that lost the role.
	ReasonLeaseLapsed = "LeaseLapsed"
)
