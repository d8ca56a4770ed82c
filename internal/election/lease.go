package election

import (
	"time"

	corev1 "k8s.io/api/core/v1"
)

// The role lease (docs/protocol.md): the controller renews the active
// pod's role over UDP every -lease-renew, and the pod's listener stops
// holding the role when -lease-ttl passes without a renewal. These are the
// decisions that rest on it, kept pure like the rest of this package; the
// controller's renewal loop (internal/controller/lease.go) supplies the
// facts.

// LeaseLapsed is the fault of an active pod whose role lease lapsed: its
// app stopped acking the controller's renewals until the lease had
// certainly run out, or refused a renewal (it holds another role). Assess
// never returns it: it is a failure signal of the controller's own, seen
// within about one TTL of an app's death, long before the kubelet's status
// or the node controller would show it.
const LeaseLapsed Fault = "LeaseLapsed"

// Lease is what the controller's renewal loop knows of one pod's lease.
type Lease struct {
	// Lapsed: the lease of the pod's active role lapsed (see LeaseLapsed)
	// and the pod has not been demoted since.
	Lapsed bool
}

// WithLease adds the lease's verdict to an active pod's status: a lapsed
// lease is the fault LeaseLapsed, and the pod is not eligible. A fault seen
// through the API is kept instead, being the more fundamental reason (a
// critical container's death explains the silence, not the reverse). A pod
// that is not active holds no lease, so its status is unchanged: a pod
// demoted after a lapse may be promoted again once it is healthy (it is
// then granted a fresh lease, which needs its app to answer).
func WithLease(s Status, active bool, l Lease) Status {
	if !active || !l.Lapsed || s.Fault != NoFault {
		return s
	}
	s.Fault, s.Eligible = LeaseLapsed, false
	return s
}

// LeaseBound is the controller's bound on a lease: the latest moment, on
// the controller's clock, at which the pod may still hold it. echoedAt is
// when the controller received the ack carrying the newest nonce it echoed
// to the pod (in a grant or a renewal): the pod measured the lease from
// sending that ack, which happened before. drift bounds how far the two
// clocks' rates may differ (0.01: up to about 0.5% each), and margin covers
// the pod's own reaction to the end of its lease. A zero echoedAt (nothing
// was ever echoed: nothing granted) has no bound.
func LeaseBound(echoedAt time.Time, ttl time.Duration, drift float64, margin time.Duration) time.Time {
	if echoedAt.IsZero() {
		return time.Time{}
	}
	return echoedAt.Add(time.Duration(float64(ttl)*(1+drift)) + margin)
}

// Holder is a pod that may hold a role lease when the controller is about
// to grant one to another pod of the group (a promotion, or the active told
// its role again).
type Holder struct {
	// Bound is LeaseBound of what the controller echoed to it; zero if it
	// never echoed anything, and so never granted a lease.
	Bound time.Time
	// Fenced: the pod acked the standby role at an epoch at least that of
	// its lease, so no renewal can make it active again.
	Fenced bool
	// Down: the API proves its processes stopped (ProvenDown).
	Down bool
	// Honoured: its listener said it enforces the TTL. One that does not
	// never gives up the role by itself.
	Honoured bool
	// Gone: the pod is no longer in the controller's view (deleted, even
	// force-deleted while its node still runs it, or out of the selector).
	Gone bool
}

// GrantWait says how long a lease grant to another pod must wait so that
// two apps never hold the active role at once: until every holder is
// fenced, proven down, or past its bound, and until startBound, the bound
// on what a previous controller process may have granted (its leases are
// unknown to this one). blocked means no time suffices: a holder whose
// listener does not enforce the TTL may stay active forever, so the grant
// waits for it to be fenced or proven down (or, for want of anything
// better for such a listener, for its pod to be gone); the caller tries
// again when something changes.
//
// A pod being gone is no proof for a listener that enforces the TTL: a
// force-deleted pod's process may run on, so it is waited out, which costs
// at most its bound.
func GrantWait(now, startBound time.Time, holders []Holder) (wait time.Duration, blocked bool) {
	until := startBound
	for _, h := range holders {
		switch {
		case h.Fenced || h.Down || h.Bound.IsZero():
		case !h.Honoured:
			if !h.Gone {
				blocked = true
			}
		case h.Bound.After(until):
			until = h.Bound
		}
	}
	if blocked {
		return 0, true
	}
	return max(until.Sub(now), 0), false
}

// OutOfServiceTaint is the taint an operator (or a cloud's node lifecycle
// controller) puts on a node that is confirmed shut down, so that its pods
// may be deleted and their volumes detached (non-graceful node shutdown).
const OutOfServiceTaint = "node.kubernetes.io/out-of-service"

// ProvenDown reports whether the API proves that the pod's processes have
// stopped: its phase is Failed or Succeeded (every container terminated),
// a critical container died (the role listener lives in the application,
// which is a critical container), or its node is confirmed shut down. A
// node that is merely NotReady proves nothing: it may be cut off from the
// API server while it still runs the pod.
func ProvenDown(s Status, node *corev1.Node) bool {
	switch s.Fault {
	case PodFailed, PodSucceeded, CriticalDied:
		return true
	}
	if s.Doomed {
		return true
	}
	if node != nil {
		for _, t := range node.Spec.Taints {
			if t.Key == OutOfServiceTaint && (t.Effect == corev1.TaintEffectNoExecute || t.Effect == corev1.TaintEffectNoSchedule) {
				return true
			}
		}
	}
	return false
}
