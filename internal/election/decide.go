package election

import (
	"cmp"
	"slices"
	"time"
)

// Member is one pod of a group as the decision sees it.
type Member struct {
	Name    string
	UID     string
	Created time.Time
	// Role is the pod's current role label value, as the controller
	// believes it (its own recent writes count even if the cache lags).
	Role string
	// Epoch is the epoch recorded on the pod when it was promoted; 0 if
	// never promoted.
	Epoch  uint64
	Status Status
}

// Roles names the label values in use.
type Roles struct {
	Active, Standby string
}

// Input is everything Decide looks at.
type Input struct {
	Members []Member
	Roles   Roles
	// Epoch is the group's current epoch (the highest ever handed out).
	Epoch uint64
	Now   time.Time
}

// Demotion is an active pod that must lose the active role.
type Demotion struct {
	Member Member
	Reason Fault // NoFault for a duplicate active that is healthy
}

// Decision is what the controller must do for a group, in this order:
// demote, promote, label standby, delete.
type Decision struct {
	// Keep is the active pod that stays active, if any: a healthy one, or
	// a warm doomed one while no pod is eligible (lastWarm).
	Keep *Member
	// Demote lists pods labelled active that must become standby, so that
	// the Service never selects two pods.
	Demote []Demotion
	// Promote is the pod to make active with epoch Epoch.
	Promote *Member
	Epoch   uint64
	// Reason is why a promotion happens: the fault of the active it
	// replaces, or Initial when the group had none.
	Reason Fault
	// NoCandidate: the group is left without an active: no pod is
	// eligible, and none is warm (see lastWarm); the next pod to become
	// Ready will be promoted.
	NoCandidate bool
	// LabelStandby lists pods with no (or an unknown) role label.
	LabelStandby []Member
	// Delete lists pods whose critical container died; they are deleted
	// after the switch so the ReplicaSet replaces them. Never the pod kept
	// or promoted.
	Delete []Member
	// RequeueAfter is when the decision may change by the clock alone
	// (an active's not-Ready grace running out); zero for never.
	RequeueAfter time.Duration
}

// Initial is the promotion reason when a group had no active pod.
const Initial Fault = "Initial"

// Decide applies hapod's rules to one group:
//   - at most one active: among the healthy actives keep the highest epoch,
//     then the oldest, then the first by name; demote every other active;
//   - an active with a fault is demoted and replaced by the earliest-created
//     eligible pod (ties broken by name), with the next epoch;
//   - with no eligible pod, a warm doomed pod (its critical container died
//     and runs again) stays or becomes active: see lastWarm;
//   - pods without a role become standby; pods whose critical container
//     died are deleted, except the one lastWarm keeps.
func Decide(in Input) Decision {
	var d Decision
	members := slices.Clone(in.Members)
	slices.SortFunc(members, byAge)

	var actives []Member
	for _, m := range members {
		if m.Role == in.Roles.Active {
			actives = append(actives, m)
		}
	}
	// The keeper is the best healthy active; ordering by epoch first means
	// the most recent promotion wins over a stale label left by a human or
	// a half-finished switch.
	slices.SortStableFunc(actives, func(a, b Member) int {
		if c := cmp.Compare(b.Epoch, a.Epoch); c != 0 {
			return c
		}
		return byAge(a, b)
	})
	reason := Initial
	for _, a := range actives {
		switch {
		case a.Status.Fault != NoFault:
			d.Demote = append(d.Demote, Demotion{Member: a, Reason: a.Status.Fault})
			if reason == Initial {
				reason = a.Status.Fault
			}
		case d.Keep == nil:
			keep := a
			d.Keep = &keep
		default:
			d.Demote = append(d.Demote, Demotion{Member: a})
		}
	}

	if d.Keep == nil {
		for _, m := range members {
			if m.Status.Eligible {
				p := m
				d.Promote, d.Epoch, d.Reason = &p, in.Epoch+1, reason
				break
			}
		}
		if d.Promote == nil {
			if w := lastWarm(actives, members); w != nil && w.Role == in.Roles.Active {
				d.Keep = w
				d.Demote = slices.DeleteFunc(d.Demote, func(dm Demotion) bool { return dm.Member.UID == w.UID })
			} else if w != nil {
				d.Promote, d.Epoch, d.Reason = w, in.Epoch+1, reason
			}
		}
		d.NoCandidate = d.Keep == nil && d.Promote == nil
	} else if !d.Keep.Status.ReadyDeadline.IsZero() {
		d.RequeueAfter = max(d.Keep.Status.ReadyDeadline.Sub(in.Now), time.Millisecond)
	}

	for _, m := range members {
		switch {
		case m.Status.Doomed && m.Status.Fault != Deleting && !d.holds(m):
			d.Delete = append(d.Delete, m)
		case m.Role != in.Roles.Active && m.Role != in.Roles.Standby &&
			m.Status.Fault != Deleting && (d.Promote == nil || d.Promote.UID != m.UID):
			d.LabelStandby = append(d.LabelStandby, m)
		}
	}
	return d
}

// lastWarm is called when no pod is eligible. It picks the doomed pod that
// is still warm to hold the group until a replacement is Ready: an active
// one first (best epoch, so no switch is needed), else the oldest.
//
// Why: deleting a doomed pod is how its ReplicaSet replaces it, but when
// every pod is doomed (a crash of every replica at once, correlated by a
// shared dependency) deleting them all is a cold start, the very thing a
// hot standby exists to avoid. A pod whose critical container died and
// runs again can serve; it is replaced the moment another pod is eligible,
// since then it is demoted and deleted like any doomed pod.
func lastWarm(actives, members []Member) *Member {
	for _, group := range [][]Member{actives, members} {
		for _, m := range group {
			if m.Status.Warm {
				w := m
				return &w
			}
		}
	}
	return nil
}

// holds reports whether m is the pod the decision keeps or promotes.
func (d Decision) holds(m Member) bool {
	return (d.Keep != nil && d.Keep.UID == m.UID) || (d.Promote != nil && d.Promote.UID == m.UID)
}

// Changes reports whether the decision writes anything to the API.
func (d Decision) Changes() bool {
	return len(d.Demote) > 0 || d.Promote != nil || len(d.LabelStandby) > 0 || len(d.Delete) > 0
}

func byAge(a, b Member) int {
	if c := a.Created.Compare(b.Created); c != 0 {
		return c
	}
	return cmp.Compare(a.Name, b.Name)
}
