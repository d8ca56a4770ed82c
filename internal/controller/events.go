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
	// ReasonPromotionsSummarized: under a mass failover, promotions whose
	// own Promoted/PromotedNotAcked Events were held back (more than 20 a
	// second), counted by reason; one a second per namespace
	// (eventbudget.go).
	ReasonPromotionsSummarized = "PromotionsSummarized"
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
	// ReasonUnreadableCriticality: a container's criticality variable comes
	// from valueFrom, or may come from envFrom, which the controller cannot
	// read; it is treated as non-critical. A literal env entry (the value,
	// or "" for non-critical) silences it.
	ReasonUnreadableCriticality = "UnreadableCriticality"
	// ReasonCriticalRestartPolicy: a critical container may be restarted in
	// place by the kubelet when it dies (its restartPolicy, or else the
	// pod's, is not Never, or a restartPolicyRules entry restarts it), so
	// it may run again before hapod has failed the pod over and deleted
	// it. Setting restartPolicy: Never on the container silences it.
	ReasonCriticalRestartPolicy = "CriticalRestartPolicy"
	// ReasonEpochsExhausted: the group's next promotion would need an epoch
	// beyond what its Lease can record (2^31-1); epochs never wrap, so no
	// pod is promoted.
	ReasonEpochsExhausted = "EpochsExhausted"
	// ReasonSwitchStuck: a switch cannot finish (a label write fails, or
	// the old active cannot be fenced); the note says which and why. The
	// switch is retried with backoff at the same epoch.
	ReasonSwitchStuck = "SwitchStuck"
	// ReasonRoleAddressRefused: the pod's role address is outside
	// -notify-cidrs, so it is never told its role.
	ReasonRoleAddressRefused = "RoleAddressRefused"
	// ReasonLeaseLapsed: the active pod's app stopped acking its role
	// lease's renewals until the lease had certainly lapsed (or refused
	// one), so the group fails over without waiting for the API to show
	// why. Warning, on the pod that lost the role.
	ReasonLeaseLapsed = "LeaseLapsed"
	// ReasonPlainMessages: the group's pods take plain role datagrams
	// (role.RoleMessagesAnnotation "plain"): no confirmation that the app
	// acted, no fencing, and a failover waits for the API to show the old
	// app dead or its pod gone. Warning, once per group.
	ReasonPlainMessages = "PlainRoleMessages"
	// ReasonPlainConfigInvalid: a pod's plain-mode annotations are invalid;
	// the pod is treated as plain (never taken for fenced) and sent
	// nothing.
	ReasonPlainConfigInvalid = "PlainConfigInvalid"
)
