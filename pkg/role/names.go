package role

// Every hapod.io/* label and annotation name, in one place. The first group
// is the product's contract with applications and operators; the second is
// used only by hapod's own development tooling (the local cluster, the demo,
// the benchmark and the tests) and never by the controller.
const (
	// RoleAddressAnnotation on a pod tells the controller where the pod's
	// role listener is, "ip" or "ip:port", when that is not the pod IP and
	// the controller's -role-port: a listener in a node-local agent, or the
	// local demo's processes, which live on loopback addresses that the API
	// refuses as pod IPs. The controller still sends only inside
	// -notify-cidrs.
	RoleAddressAnnotation = "hapod.io/role-address"
	// EpochAnnotation on a pod records the epoch at which the controller
	// promoted it (decimal). The controller reads it back after a restart;
	// an application can read it through the downward API to tag what it
	// writes downstream.
	EpochAnnotation = "hapod.io/epoch"
	// SwitchoverAnnotation on a pod records the HAGroup switchover request
	// (its spec.switchover.id) the pod was promoted for, written with its
	// label, so that a controller restarted before the status write does
	// not carry the request out twice.
	SwitchoverAnnotation = "hapod.io/switchover"
	// GroupLabel on an epoch Lease names the group whose epoch it keeps.
	GroupLabel = "hapod.io/group"

	// RoleMessagesAnnotation on a pod (set it in the pod template) says how
	// the controller tells the pod's app its role: "hapod" (the default)
	// is this package's protocol; "plain" is the seed design's, for an
	// app that takes any datagram on its port as "become active" and
	// answers nothing. In plain mode only the new active is sent anything,
	// after its label is written: PlainPayloadAnnotation, to
	// PlainPortAnnotation, PlainRepeatsAnnotation times. Such an app cannot
	// be told standby, so the controller promotes another pod only once
	// the API shows the old one's app dead or its pod gone.
	RoleMessagesAnnotation = "hapod.io/role-messages"
	// PlainPortAnnotation is the plain-mode app's UDP port (default 10001)
	// at the pod's address (its IP, or RoleAddressAnnotation's).
	PlainPortAnnotation = "hapod.io/plain-port"
	// PlainPayloadAnnotation is the datagram sent (default
	// "GoActiveDuringFailover").
	PlainPayloadAnnotation = "hapod.io/plain-payload"
	// PlainRepeatsAnnotation is how many copies are sent, 10ms apart
	// (default 3, at most 10).
	PlainRepeatsAnnotation = "hapod.io/plain-repeats"
)

// Development-only names (the local cluster's kwok stages, the demo, the
// benchmark, the tests). Listed here so that no two tools pick the same name.
const (
	// PodIPAnnotation asks the local cluster's simulated kubelet (kwok) to
	// give the pod this IP, so a test can bind the address before the pod
	// exists.
	PodIPAnnotation = "hapod.io/pod-ip"
	// ExternalReadinessAnnotation "true" makes kwok leave the pod's Ready
	// condition to someone else (the demo sets it from the app's /readyz).
	ExternalReadinessAnnotation = "hapod.io/external-readiness"
	// IPPoolWarmupLabel marks the pod the local cluster starts on a new node
	// so that kwok creates the node's IP pool before two pods race for it.
	IPPoolWarmupLabel = "hapod.io/ip-pool-warmup"
	// TestNamespaceLabel marks a namespace made by a test.
	TestNamespaceLabel = "hapod.io/test"
	// TourOwnerAnnotation marks the objects one demo run created.
	TourOwnerAnnotation = "hapod.io/tour-owner"
	// BenchLabel selects the benchmark's pods; BenchProbeLabel its probe pods.
	BenchLabel      = "hapod.io/bench"
	BenchProbeLabel = "hapod.io/bench-probe"
)
