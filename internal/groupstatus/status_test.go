package groupstatus

import (
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/hapod/hapod/api/v1alpha1"
	"github.com/hapod/hapod/internal/election"
)

var (
	t0       = metav1.NewTime(time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC))
	eligible = election.Status{Eligible: true}
)

func pod(name string, st election.Status) Pod {
	return Pod{Name: name, Node: "n-" + name, Created: t0, Status: st}
}

func TestReason(t *testing.T) {
	for _, tc := range []struct {
		st   election.Status
		want string
	}{
		{eligible, ""},
		{election.Status{}, ReasonNotReady},
		{election.Status{Fault: election.CriticalDied, Doomed: true}, string(election.CriticalDied)},
		// Eligible, but taken last: the node is about to be drained.
		{election.Status{Eligible: true, Cordoned: true}, ReasonNodeCordoned},
		// A fault says more than the cordon.
		{election.Status{Fault: election.Deleting, Cordoned: true}, string(election.Deleting)},
	} {
		if got := Reason(tc.st); got != tc.want {
			t.Errorf("Reason(%+v) = %q, want %q", tc.st, got, tc.want)
		}
	}
}

func TestBuild(t *testing.T) {
	failover := v1alpha1.FailoverStatus{Time: t0, Reason: "PodDeleting", From: "a", To: "b", Epoch: 2}
	tests := []struct {
		name       string
		prev       v1alpha1.HAGroupStatus
		view       View
		active     string
		summary    string
		conditions map[string]metav1.ConditionStatus
		history    int
		replaced   string
	}{
		{name: "healthy group", view: View{Active: "a", Epoch: 1, Pods: []Pod{pod("a", eligible), pod("b", eligible)}},
			active: "a", summary: "1/1", conditions: map[string]metav1.ConditionStatus{
				v1alpha1.ConditionAvailable: metav1.ConditionTrue, v1alpha1.ConditionDegraded: metav1.ConditionFalse,
				v1alpha1.ConditionPaused: metav1.ConditionFalse, v1alpha1.ConditionAccepted: metav1.ConditionTrue,
				v1alpha1.ConditionSwitchoverInProgress: metav1.ConditionFalse,
			}},
		// No standby can take over: Degraded, still Available.
		{name: "standby not ready", view: View{Active: "a", Pods: []Pod{pod("a", eligible), pod("b", election.Status{})}},
			active: "a", summary: "0/1", conditions: map[string]metav1.ConditionStatus{
				v1alpha1.ConditionAvailable: metav1.ConditionTrue, v1alpha1.ConditionDegraded: metav1.ConditionTrue,
			}},
		// Paused with a dead active: not Available, and says why.
		{name: "paused, active dead", view: View{Active: "a", Paused: true, Pods: []Pod{pod("a", election.Status{Fault: election.CriticalDied})}},
			active: "a", summary: "0/0", conditions: map[string]metav1.ConditionStatus{
				v1alpha1.ConditionAvailable: metav1.ConditionFalse, v1alpha1.ConditionPaused: metav1.ConditionTrue,
			}},
		{name: "refused spec", view: View{Unsupported: "spec.roleLabel differs", Paused: true},
			summary: "0/0", conditions: map[string]metav1.ConditionStatus{
				v1alpha1.ConditionAccepted: metav1.ConditionFalse, v1alpha1.ConditionAvailable: metav1.ConditionFalse,
			}},
		{name: "switchover in flight", view: View{Active: "a", Pods: []Pod{pod("a", eligible)},
			Switchover: &v1alpha1.SwitchoverStatus{ID: "x", Phase: v1alpha1.SwitchoverInProgress}},
			active: "a", summary: "0/0", conditions: map[string]metav1.ConditionStatus{
				v1alpha1.ConditionSwitchoverInProgress: metav1.ConditionTrue,
			}},
		// A failover: new first in the history; the pod that was not there
		// at the failover is its replacement.
		{name: "failover with replacement", prev: v1alpha1.HAGroupStatus{History: []v1alpha1.FailoverStatus{{Reason: "Initial", To: "a"}}},
			view: View{Active: "b", Pods: []Pod{pod("b", eligible), pod("c", eligible)}, Failovers: []v1alpha1.FailoverStatus{failover},
				PodsAtFailover: []string{"a", "b"}},
			active: "b", summary: "1/1", history: 2, replaced: "c"},
		// After a restart the pods at the failover are unknown: no guess.
		{name: "replacement unknown after a restart", view: View{Active: "b", Pods: []Pod{pod("b", eligible), pod("c", eligible)},
			Failovers: []v1alpha1.FailoverStatus{failover}},
			active: "b", summary: "1/1", history: 1},
		// The history keeps the newest ten.
		{name: "history capped", prev: v1alpha1.HAGroupStatus{History: make([]v1alpha1.FailoverStatus, 10)},
			view:   View{Active: "b", Pods: []Pod{pod("b", eligible)}, Failovers: []v1alpha1.FailoverStatus{failover}},
			active: "b", summary: "0/0", history: 10},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := Build(tc.prev, tc.view, t0)
			if s.Active != tc.active || s.StandbySummary != tc.summary {
				t.Errorf("active %q standbys %q, want %q %q", s.Active, s.StandbySummary, tc.active, tc.summary)
			}
			for typ, want := range tc.conditions {
				if c := meta.FindStatusCondition(s.Conditions, typ); c == nil || c.Status != want {
					t.Errorf("condition %s = %+v, want %s", typ, c, want)
				}
			}
			if len(s.History) != tc.history {
				t.Errorf("history %d entries, want %d", len(s.History), tc.history)
			}
			if tc.history > 0 && (s.LastFailover == nil || s.LastFailover.Replacement != tc.replaced) {
				t.Errorf("last failover %+v, want replacement %q", s.LastFailover, tc.replaced)
			}
		})
	}
}

// A condition keeps its transition time while its status holds, so that
// "since when" means what it says.
func TestBuildKeepsTransitionTimes(t *testing.T) {
	v := View{Active: "a", Pods: []Pod{pod("a", eligible)}}
	first := Build(v1alpha1.HAGroupStatus{}, v, t0)
	later := metav1.NewTime(t0.Add(time.Minute))
	again := Build(first, v, later)
	c := meta.FindStatusCondition(again.Conditions, v1alpha1.ConditionAvailable)
	if !c.LastTransitionTime.Equal(&t0) {
		t.Errorf("Available moved to %v with no change, want %v", c.LastTransitionTime, t0)
	}
	v.Active = ""
	gone := Build(again, v, later)
	if c := meta.FindStatusCondition(gone.Conditions, v1alpha1.ConditionAvailable); !c.LastTransitionTime.Equal(&later) {
		t.Errorf("Available changed at %v, want %v", c.LastTransitionTime, later)
	}
}
