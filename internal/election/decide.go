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
	// Paused: no automatic failover (an HAGroup's spec.paused). The best
	// active is kept whatever its faults; duplicates are still demoted, so
	// pausing never allows two actives; nobody is promoted or deleted.
	Paused bool
	// Switchover asks to move the role off the kept active, planned.
	Switchover *Switchover
	// SwitchoverOnCordon moves the kept active off a cordoned node when a
	// pod on a schedulable node is eligible.
	SwitchoverOnCordon bool
}

// Switchover is a planned switchover request.
type Switchover struct {
	// To names the pod to promote; empty means the best eligible pod.
	To string
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

// Promotion reasons that are not faults of the old active.
const (
	// Initial: the group had no active pod.
	Initial Fault = "Initial"
	// PlannedSwitchover: asked for (Input.Switchover).
	PlannedSwitchover Fault = "PlannedSwitchover"
	// NodeCordoned: the active's node was cordoned (Input.SwitchoverOnCordon).
	NodeCordoned Fault = "NodeCordoned"
)

// Decide applies hapod's rules to one group:
//   - at most one active: among the healthy actives keep the highest epoch,
//     then the oldest, then the first by name; demote every other active;
//   - an active with a fault is demoted and replaced by the earliest-created
//     eligible pod (ties broken by name), with the next epoch;
//   - with no eligible pod, a warm doomed pod (its critical container died
//     and runs again) stays or becomes active: see lastWarm;
//   - pods without a role become standby; pods whose critical container
//     died are deleted, except the one lastWarm keeps.
//
// A planned switchover (or a cordon) moves the role from a healthy kept
// active to another eligible pod: the kept active is demoted with that
// reason and the target promoted, the same switch as a failover.
func Decide(in Input) Decision {
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
	if in.Paused {
		return decidePaused(in, members, actives)
	}
	var d Decision
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

	if d.Keep != nil {
		if t, why := moveTarget(in, *d.Keep, members); t != nil {
			d.Demote = append(d.Demote, Demotion{Member: *d.Keep, Reason: why})
			d.Keep, d.Promote, d.Epoch, d.Reason = nil, t, in.Epoch+1, why
		}
	}
	if d.Keep == nil && d.Promote == nil {
		d.Promote = best(members, "")
		if d.Promote != nil {
			d.Epoch, d.Reason = in.Epoch+1, reason
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
	} else if d.Keep != nil && !d.Keep.Status.ReadyDeadline.IsZero() {
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

// best is the pod to promote: the earliest-created eligible one other
// than except, on a schedulable node if any is (a cordoned node is about
// to be drained).
func best(members []Member, except string) *Member {
	var fallback *Member
	for _, m := range members {
		if !m.Status.Eligible || m.UID == except {
			continue
		}
		p := m
		if !m.Status.Cordoned {
			return &p
		}
		if fallback == nil {
			fallback = &p
		}
	}
	return fallback
}

// moveTarget is the pod a healthy kept active hands the role to, and why:
// the pod a switchover names (if eligible), else the best eligible pod on
// a schedulable node; nil when the active stays.
func moveTarget(in Input, keep Member, members []Member) (*Member, Fault) {
	switch {
	case in.Switchover != nil && in.Switchover.To != "":
		if in.Switchover.To == keep.Name {
			return nil, ""
		}
		for _, m := range members {
			if m.Name == in.Switchover.To && m.Status.Eligible {
				p := m
				return &p, PlannedSwitchover
			}
		}
		return nil, ""
	case in.Switchover != nil:
		return best(members, keep.UID), PlannedSwitchover
	case in.SwitchoverOnCordon && keep.Status.Cordoned:
		if t := best(members, keep.UID); t != nil && !t.Status.Cordoned {
			return t, NodeCordoned
		}
	}
	return nil, ""
}

// decidePaused keeps the group as it is: the best active by epoch stays
// whatever its faults (no failover), every other active is demoted (never
// two), and pods without a role are labelled standby. Nothing is promoted
// or deleted.
func decidePaused(in Input, members, actives []Member) Decision {
	var d Decision
	for i, a := range actives {
		if i == 0 {
			keep := a
			d.Keep = &keep
			continue
		}
		d.Demote = append(d.Demote, Demotion{Member: a, Reason: a.Status.Fault})
	}
	for _, m := range members {
		if m.Role != in.Roles.Active && m.Role != in.Roles.Standby && m.Status.Fault != Deleting {
			d.LabelStandby = append(d.LabelStandby, m)
		}
	}
	// NoCandidate stays false: a paused group promotes nobody, so the
	// "next Ready pod will be promoted" warning would be wrong.
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
