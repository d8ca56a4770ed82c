package groupstatus

import (
	"fmt"
	"slices"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/hapod/hapod/api/v1alpha1"
	"github.com/hapod/hapod/internal/election"
)

// Pod is one pod of the group as the status shows it.
type Pod struct {
	Name    string
	Node    string
	Created metav1.Time
	Status  election.Status
}

// View is the controller's view of a group after a reconcile.
type View struct {
	Generation int64
	// Active names the pod labelled (or just promoted) active; "" if none.
	Active string
	Epoch  uint64
	// Pods are every pod of the group, the active included.
	Pods   []Pod
	Paused bool
	// Unsupported, if not empty, is why the spec is refused.
	Unsupported string
	// Switchover is the last switchover request handled or in flight.
	Switchover *v1alpha1.SwitchoverStatus
	// Failovers are promotions not yet in the status, newest first.
	Failovers []v1alpha1.FailoverStatus
	// PodsAtFailover are the group's pods when the last promotion was
	// made: a pod not among them is its replacement. Nil when not known
	// (a restarted controller), and no replacement is named then.
	PodsAtFailover []string
}

// Reasons a pod is not eligible that are not an election.Fault.
const (
	ReasonNotReady     = "NotReady"
	ReasonNodeCordoned = "NodeCordoned"
)

// Reason says why a pod cannot be promoted now ("" if it can); an eligible
// pod on a cordoned node is ReasonNodeCordoned: it is taken last.
func Reason(st election.Status) string {
	switch {
	case st.Fault != election.NoFault:
		return string(st.Fault)
	case !st.Eligible:
		return ReasonNotReady
	case st.Cordoned:
		return ReasonNodeCordoned
	}
	return ""
}

// Build returns the status for v, keeping from prev what v does not
// replace (the history, the conditions' transition times).
func Build(prev v1alpha1.HAGroupStatus, v View, now metav1.Time) v1alpha1.HAGroupStatus {
	s := v1alpha1.HAGroupStatus{
		ObservedGeneration: v.Generation,
		Active:             v.Active,
		Epoch:              int64(v.Epoch), //nolint:gosec // epochs stop at 2^31-1 (the Lease's int32)
		Switchover:         prev.Switchover,
		Conditions:         slices.Clone(prev.Conditions),
	}
	if v.Switchover != nil {
		s.Switchover = v.Switchover
	}
	var active *Pod
	eligible := 0
	for i := range v.Pods {
		p := &v.Pods[i]
		if p.Name == v.Active {
			active = p
			s.ActiveNode = p.Node
			continue
		}
		reason := Reason(p.Status)
		ok := p.Status.Eligible
		if ok {
			eligible++
		}
		s.Standbys = append(s.Standbys, v1alpha1.StandbyStatus{Name: p.Name, Node: p.Node, Eligible: ok, Reason: reason})
	}
	s.StandbySummary = fmt.Sprintf("%d/%d", eligible, len(s.Standbys))

	s.History = append(slices.Clone(v.Failovers), prev.History...)
	if len(s.History) > v1alpha1.HistoryLength {
		s.History = s.History[:v1alpha1.HistoryLength]
	}
	if len(s.History) > 0 {
		last := s.History[0]
		if last.Replacement == "" {
			last.Replacement = replacement(v.Pods, v.PodsAtFailover, last)
			s.History[0] = last
		}
		s.LastFailover = &last
	}

	set := func(typ string, ok bool, reason, msg string) {
		st := metav1.ConditionFalse
		if ok {
			st = metav1.ConditionTrue
		}
		meta.SetStatusCondition(&s.Conditions, metav1.Condition{
			Type: typ, Status: st, Reason: reason, Message: msg,
			ObservedGeneration: v.Generation, LastTransitionTime: now,
		})
	}
	switch {
	case active == nil:
		set(v1alpha1.ConditionAvailable, false, "NoActive", "no pod is active")
	case active.Status.Fault != election.NoFault:
		set(v1alpha1.ConditionAvailable, false, string(active.Status.Fault),
			fmt.Sprintf("the active pod %s has a fault: %s", active.Name, active.Status.Fault))
	default:
		set(v1alpha1.ConditionAvailable, true, "Active", fmt.Sprintf("pod %s is active at epoch %d", active.Name, v.Epoch))
	}
	if eligible == 0 {
		set(v1alpha1.ConditionDegraded, true, "NoEligibleStandby", "no standby could take over now")
	} else {
		set(v1alpha1.ConditionDegraded, false, "StandbyEligible", fmt.Sprintf("%d standby eligible", eligible))
	}
	inFlight := s.Switchover != nil && (s.Switchover.Phase == v1alpha1.SwitchoverPending || s.Switchover.Phase == v1alpha1.SwitchoverInProgress)
	if inFlight {
		set(v1alpha1.ConditionSwitchoverInProgress, true, string(s.Switchover.Phase), "switchover "+s.Switchover.ID)
	} else {
		set(v1alpha1.ConditionSwitchoverInProgress, false, "Idle", "no switchover in progress")
	}
	if v.Paused {
		set(v1alpha1.ConditionPaused, true, "SpecPaused", "spec.paused: no automatic failover")
	} else {
		set(v1alpha1.ConditionPaused, false, "NotPaused", "automatic failover on")
	}
	if v.Unsupported != "" {
		set(v1alpha1.ConditionAccepted, false, "SpecUnsupported", v.Unsupported)
	} else {
		set(v1alpha1.ConditionAccepted, true, "Accepted", "spec accepted")
	}
	return s
}

// replacement is the pod that joined the group after failover f: the
// oldest pod that was not there when it was made. Creation times cannot
// tell (the API keeps them to the second).
func replacement(pods []Pod, before []string, f v1alpha1.FailoverStatus) string {
	if f.From == "" || before == nil {
		return ""
	}
	var best *Pod
	for i := range pods {
		p := &pods[i]
		if p.Name == f.To || p.Name == f.From || slices.Contains(before, p.Name) {
			continue
		}
		if best == nil || p.Created.Before(&best.Created) {
			best = p
		}
	}
	if best == nil {
		return ""
	}
	return best.Name
}
