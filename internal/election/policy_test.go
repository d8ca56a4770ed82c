package election

import (
	"slices"
	"testing"
	"time"
)

// TestDecidePolicies covers the HAGroup policies: pause, planned
// switchover and the move off a cordoned node.
func TestDecidePolicies(t *testing.T) {
	now := t0.Add(time.Hour)
	cordoned := Status{Eligible: true, Cordoned: true}
	notReady := Status{ReadyDeadline: now.Add(time.Second)}
	tests := []struct {
		name    string
		in      Input
		keep    string
		promote string
		reason  Fault
		demote  []string
		del     []string
	}{
		// Paused: a dead active is not replaced and a doomed pod not deleted.
		{name: "paused keeps a faulty active", in: Input{Paused: true, Epoch: 2, Members: []Member{
			member("a", 1, "active", 2, crashed), member("b", 2, "standby", 0, ok),
		}}, keep: "a"},
		// Paused never allows two actives: the lower epoch is demoted.
		{name: "paused still demotes a duplicate", in: Input{Paused: true, Epoch: 3, Members: []Member{
			member("a", 1, "active", 2, ok), member("b", 2, "active", 3, deleting),
		}}, keep: "b", demote: []string{"a"}},
		{name: "paused without an active promotes nobody", in: Input{Paused: true, Members: []Member{
			member("a", 1, "standby", 0, ok),
		}}},
		// A planned switchover to the best standby: the oldest eligible other pod.
		{name: "switchover to the best standby", in: Input{Switchover: &Switchover{}, Epoch: 4, Members: []Member{
			member("a", 1, "active", 4, ok), member("b", 2, "standby", 0, notReady), member("c", 3, "standby", 0, ok),
		}}, promote: "c", reason: PlannedSwitchover, demote: []string{"a"}},
		{name: "switchover to a named pod", in: Input{Switchover: &Switchover{To: "c"}, Epoch: 4, Members: []Member{
			member("a", 1, "active", 4, ok), member("b", 2, "standby", 0, ok), member("c", 3, "standby", 0, ok),
		}}, promote: "c", reason: PlannedSwitchover, demote: []string{"a"}},
		// A named pod that cannot serve is not promoted: the active stays.
		{name: "switchover to an ineligible pod refused", in: Input{Switchover: &Switchover{To: "b"}, Epoch: 4, Members: []Member{
			member("a", 1, "active", 4, ok), member("b", 2, "standby", 0, notReady),
		}}, keep: "a"},
		{name: "switchover to the active is a no-op", in: Input{Switchover: &Switchover{To: "a"}, Epoch: 4, Members: []Member{
			member("a", 1, "active", 4, ok), member("b", 2, "standby", 0, ok),
		}}, keep: "a"},
		{name: "switchover without a standby keeps the active", in: Input{Switchover: &Switchover{}, Epoch: 4, Members: []Member{
			member("a", 1, "active", 4, ok),
		}}, keep: "a"},
		// A switchover prefers a pod on a schedulable node.
		{name: "switchover avoids a cordoned standby", in: Input{Switchover: &Switchover{}, Epoch: 1, Members: []Member{
			member("a", 1, "active", 1, ok), member("b", 2, "standby", 0, cordoned), member("c", 3, "standby", 0, ok),
		}}, promote: "c", reason: PlannedSwitchover, demote: []string{"a"}},
		// The active's node is cordoned: moved to a standby elsewhere.
		{name: "cordoned active moved", in: Input{SwitchoverOnCordon: true, Epoch: 1, Members: []Member{
			member("a", 1, "active", 1, cordoned), member("b", 2, "standby", 0, ok),
		}}, promote: "b", reason: NodeCordoned, demote: []string{"a"}},
		// ... but not onto another cordoned node, and not when the policy is off.
		{name: "cordoned active stays when every standby is cordoned", in: Input{SwitchoverOnCordon: true, Epoch: 1, Members: []Member{
			member("a", 1, "active", 1, cordoned), member("b", 2, "standby", 0, cordoned),
		}}, keep: "a"},
		{name: "cordon policy off", in: Input{Epoch: 1, Members: []Member{
			member("a", 1, "active", 1, cordoned), member("b", 2, "standby", 0, ok),
		}}, keep: "a"},
		// A failover takes a standby on a schedulable node first, a cordoned one if it must.
		{name: "failover prefers a schedulable node", in: Input{Epoch: 1, Members: []Member{
			member("a", 1, "active", 1, deleting), member("b", 2, "standby", 0, cordoned), member("c", 3, "standby", 0, ok),
		}}, promote: "c", reason: Deleting, demote: []string{"a"}},
		{name: "failover onto a cordoned node if nothing else", in: Input{Epoch: 1, Members: []Member{
			member("a", 1, "active", 1, deleting), member("b", 2, "standby", 0, cordoned),
		}}, promote: "b", reason: Deleting, demote: []string{"a"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.in.Roles, tc.in.Now = roles, now
			d := Decide(tc.in)
			if got := name(d.Keep); got != tc.keep {
				t.Errorf("Keep = %q, want %q", got, tc.keep)
			}
			if got := name(d.Promote); got != tc.promote {
				t.Errorf("Promote = %q, want %q", got, tc.promote)
			}
			if d.Promote != nil && (d.Epoch != tc.in.Epoch+1 || d.Reason != tc.reason) {
				t.Errorf("promotion epoch %d reason %q, want %d %q", d.Epoch, d.Reason, tc.in.Epoch+1, tc.reason)
			}
			if got := demoted(d.Demote); !slices.Equal(got, tc.demote) {
				t.Errorf("Demote = %v, want %v", got, tc.demote)
			}
			if got := names(d.Delete); !slices.Equal(got, tc.del) {
				t.Errorf("Delete = %v, want %v", got, tc.del)
			}
			if d.NoCandidate {
				t.Errorf("NoCandidate set")
			}
		})
	}
}

// A finished switchover settles: once the target is active, deciding
// again with the same request changes nothing (a request is carried out
// once even if the controller sees it again before recording it).
func TestSwitchoverSettles(t *testing.T) {
	in := Input{Roles: roles, Epoch: 5, Now: t0, Switchover: &Switchover{To: "b"}, Members: []Member{
		member("a", 1, "standby", 0, ok), member("b", 2, "active", 5, ok),
	}}
	if d := Decide(in); d.Changes() || name(d.Keep) != "b" {
		t.Fatalf("decision after the switchover: %+v", d)
	}
}
