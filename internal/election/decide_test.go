package election

import (
	"testing"
	"time"
)

var roles = Roles{Active: "active", Standby: "standby"}

// member builds a group member created `age` seconds after t0.
func member(name string, age int, role string, epoch uint64, s Status) Member {
	return Member{Name: name, UID: "uid-" + name, Created: t0.Add(time.Duration(age) * time.Second), Role: role, Epoch: epoch, Status: s}
}

var (
	ok       = Status{Eligible: true}
	starting = Status{}
	deleting = Status{Fault: Deleting}
	crashed  = Status{Fault: CriticalDied, Doomed: true}
	// warm: a critical container died and runs again; it can still serve.
	warm = Status{Fault: CriticalDied, Doomed: true, Warm: true}
)

func names(ms []Member) []string {
	var out []string
	for _, m := range ms {
		out = append(out, m.Name)
	}
	return out
}

func demoted(ds []Demotion) []string {
	var out []string
	for _, d := range ds {
		out = append(out, d.Member.Name)
	}
	return out
}

func name(m *Member) string {
	if m == nil {
		return ""
	}
	return m.Name
}

func TestDecide(t *testing.T) {
	now := t0.Add(time.Hour)
	tests := []struct {
		name        string
		members     []Member
		epoch       uint64
		keep        string
		promote     string
		reason      Fault
		demote      []string
		standby     []string
		del         []string
		noCandidate bool
		requeue     time.Duration
	}{
		// Initial election: the earliest-created eligible pod, not the first listed.
		{name: "initial picks oldest ready", members: []Member{
			member("b", 2, "standby", 0, ok), member("a", 1, "standby", 0, ok), member("c", 0, "standby", 0, starting),
		}, promote: "a", reason: Initial},
		// Same creation time: ties broken by name.
		{name: "tie broken by name", members: []Member{
			member("y", 1, "standby", 0, ok), member("x", 1, "standby", 0, ok),
		}, promote: "x", reason: Initial},
		{name: "healthy active kept", epoch: 3, members: []Member{
			member("a", 1, "standby", 0, ok), member("b", 2, "active", 3, ok),
		}, keep: "b"},
		// The active being deleted is demoted at once, before its DELETE.
		{name: "deleting active fails over", epoch: 3, members: []Member{
			member("a", 1, "active", 3, deleting), member("b", 2, "standby", 0, ok),
		}, promote: "b", reason: Deleting, demote: []string{"a"}},
		// Failover and delete: the critical container's pod goes after the switch.
		{name: "critical death on active", epoch: 1, members: []Member{
			member("a", 1, "active", 1, crashed), member("b", 2, "standby", 0, ok),
		}, promote: "b", reason: CriticalDied, demote: []string{"a"}, del: []string{"a"}},
		{name: "critical death on standby", epoch: 1, members: []Member{
			member("a", 1, "active", 1, ok), member("b", 2, "standby", 0, crashed),
		}, keep: "a", del: []string{"b"}},
		// A pod already deleting is not deleted again.
		{name: "doomed and deleting not deleted twice", epoch: 1, members: []Member{
			member("a", 1, "active", 1, ok), member("b", 2, "standby", 0, Status{Fault: Deleting, Doomed: true}),
		}, keep: "a"},
		// Two actives: the higher epoch wins even though it is younger.
		{name: "duplicate actives keep highest epoch", epoch: 5, members: []Member{
			member("a", 1, "active", 4, ok), member("b", 2, "active", 5, ok),
		}, keep: "b", demote: []string{"a"}},
		{name: "duplicate actives same epoch keep oldest", epoch: 0, members: []Member{
			member("b", 2, "active", 0, ok), member("a", 1, "active", 0, ok), member("c", 3, "active", 0, ok),
		}, keep: "a", demote: []string{"b", "c"}},
		// A faulty active with a higher epoch does not beat a healthy one.
		{name: "faulty high epoch loses to healthy", epoch: 7, members: []Member{
			member("a", 1, "active", 7, deleting), member("b", 2, "active", 6, ok),
		}, keep: "b", demote: []string{"a"}},
		{name: "no standby ready", epoch: 2, members: []Member{
			member("a", 1, "active", 2, deleting), member("b", 2, "standby", 0, starting),
		}, reason: "", demote: []string{"a"}, noCandidate: true},
		{name: "empty group", noCandidate: true},
		// Pods created by hand or with a typo get the standby label.
		{name: "unlabelled become standby", epoch: 1, members: []Member{
			member("a", 1, "active", 1, ok), member("b", 2, "", 0, starting), member("c", 3, "Active", 0, ok),
		}, keep: "a", standby: []string{"b", "c"}},
		// An unlabelled pod that is promoted is not also labelled standby.
		{name: "unlabelled promoted", members: []Member{member("a", 1, "", 0, ok)}, promote: "a", reason: Initial},
		// Every replica crashed at once (defect 7): deleting them all is a
		// cold start. The warm active stays active and is not deleted; the
		// others are, and their replacements take over once Ready.
		{name: "all doomed, active warm", epoch: 1, members: []Member{
			member("a", 1, "active", 1, warm), member("b", 2, "standby", 0, warm), member("c", 3, "standby", 0, crashed),
		}, keep: "a", del: []string{"b", "c"}},
		// The active is down for good, a standby is warm: it takes over
		// rather than leave the group without an active.
		{name: "all doomed, only a standby warm", epoch: 1, members: []Member{
			member("a", 1, "active", 1, crashed), member("b", 2, "standby", 0, warm),
		}, promote: "b", reason: CriticalDied, demote: []string{"a"}, del: []string{"a"}},
		// No active and only doomed pods: the oldest warm one is promoted.
		{name: "no active, all doomed", members: []Member{
			member("b", 2, "standby", 0, warm), member("a", 1, "standby", 0, warm),
		}, promote: "a", reason: Initial, del: []string{"b"}},
		// A replacement is Ready: the warm doomed active is replaced and deleted.
		{name: "warm doomed active replaced once a pod is eligible", epoch: 1, members: []Member{
			member("a", 1, "active", 1, warm), member("b", 2, "standby", 0, ok),
		}, promote: "b", reason: CriticalDied, demote: []string{"a"}, del: []string{"a"}},
		// A healthy active: every doomed standby goes at once.
		{name: "healthy active, doomed standbys all deleted", epoch: 1, members: []Member{
			member("a", 1, "active", 1, ok), member("b", 2, "standby", 0, warm), member("c", 3, "standby", 0, warm),
		}, keep: "a", del: []string{"b", "c"}},
		// Nothing warm: nothing can serve, deleting is the fastest repair.
		{name: "all doomed, none warm", epoch: 1, members: []Member{
			member("a", 1, "active", 1, crashed), member("b", 2, "standby", 0, crashed),
		}, demote: []string{"a"}, del: []string{"a", "b"}, noCandidate: true},
		// Of two warm doomed actives the higher epoch stays, the other is
		// demoted and deleted.
		{name: "two warm doomed actives", epoch: 3, members: []Member{
			member("a", 1, "active", 2, warm), member("b", 2, "active", 3, warm),
		}, keep: "b", demote: []string{"a"}, del: []string{"a"}},
		{name: "active within not-ready grace", epoch: 1, members: []Member{
			member("a", 1, "active", 1, Status{ReadyDeadline: now.Add(1500 * time.Millisecond)}), member("b", 2, "standby", 0, ok),
		}, keep: "a", requeue: 1500 * time.Millisecond},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := Decide(Input{Members: tc.members, Roles: roles, Epoch: tc.epoch, Now: now})
			if got := name(d.Keep); got != tc.keep {
				t.Errorf("Keep = %q, want %q", got, tc.keep)
			}
			if got := name(d.Promote); got != tc.promote {
				t.Errorf("Promote = %q, want %q", got, tc.promote)
			}
			if d.Promote != nil && (d.Epoch != tc.epoch+1 || d.Reason != tc.reason) {
				t.Errorf("promotion epoch %d reason %q, want %d %q", d.Epoch, d.Reason, tc.epoch+1, tc.reason)
			}
			check := func(what string, got, want []string) {
				if len(got) != len(want) {
					t.Errorf("%s = %v, want %v", what, got, want)
					return
				}
				for i := range got {
					if got[i] != want[i] {
						t.Errorf("%s = %v, want %v", what, got, want)
						return
					}
				}
			}
			check("Demote", demoted(d.Demote), tc.demote)
			check("LabelStandby", names(d.LabelStandby), tc.standby)
			check("Delete", names(d.Delete), tc.del)
			if d.NoCandidate != tc.noCandidate {
				t.Errorf("NoCandidate = %v, want %v", d.NoCandidate, tc.noCandidate)
			}
			if d.RequeueAfter != tc.requeue {
				t.Errorf("RequeueAfter = %v, want %v", d.RequeueAfter, tc.requeue)
			}
		})
	}
}

// Decide must be idempotent: applying a decision and deciding again
// changes nothing, which is what makes controller restarts harmless.
func TestDecideSettles(t *testing.T) {
	in := Input{Roles: roles, Epoch: 4, Now: t0, Members: []Member{
		member("a", 1, "active", 4, deleting), member("b", 2, "active", 2, ok),
		member("c", 3, "", 0, ok), member("d", 0, "standby", 0, ok),
	}}
	d := Decide(in)
	if name(d.Keep) != "b" || d.Promote != nil {
		t.Fatalf("first decision keep %q promote %q", name(d.Keep), name(d.Promote))
	}
	for i := range in.Members {
		switch in.Members[i].Name {
		case "a":
			in.Members[i].Role = "standby"
		case "c":
			in.Members[i].Role = "standby"
		}
	}
	if d2 := Decide(in); d2.Changes() {
		t.Fatalf("second decision still changes things: %+v", d2)
	}
}

// The warm doomed active that Decide keeps is kept again once the other
// doomed pods are gone: no flapping while the replacements start.
func TestDecideKeepsLastWarmSettles(t *testing.T) {
	in := Input{Roles: roles, Epoch: 1, Now: t0, Members: []Member{
		member("a", 1, "active", 1, warm), member("b", 2, "standby", 0, warm),
	}}
	d := Decide(in)
	if name(d.Keep) != "a" || len(d.Delete) != 1 || d.Delete[0].Name != "b" {
		t.Fatalf("first decision keep %q delete %v", name(d.Keep), names(d.Delete))
	}
	in.Members = append(in.Members[:1], member("b2", 3, "standby", 0, starting))
	if d2 := Decide(in); d2.Changes() || name(d2.Keep) != "a" {
		t.Fatalf("second decision: %+v", d2)
	}
}
