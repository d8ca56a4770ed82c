package chaos

import (
	"fmt"
	"maps"
	"slices"
	"time"
)

// CheckOptions are the bounds the history is held to.
type CheckOptions struct {
	// SettleBound: every fault must settle (one acked active, see
	// Fault.Settled) within this of being healed.
	SettleBound time.Duration
	// ForgedEpochs: epochs from this one up appear only in forged
	// datagrams; an app that ever holds one was steered by a forgery.
	ForgedEpochs uint64
}

// Violation is one breach of an invariant.
type Violation struct {
	At    time.Time `json:"at"`
	Group string    `json:"group"`
	What  string    `json:"what"`
}

func (v Violation) String() string {
	return fmt.Sprintf("%s %s: %s", v.At.Format("15:04:05.000"), v.Group, v.What)
}

// KindRow is the outcome of one kind of fault.
type KindRow struct {
	Kind       string `json:"kind"`
	Faults     int    `json:"faults"`
	FailedOver int    `json:"failedOver"`
	Unsettled  int    `json:"unsettled"`
	// Failover is from the fault's start to the new active's app holding
	// the role, over the faults that failed over; Settle from the start to
	// Settled, over all that settled.
	FailoverP50 time.Duration `json:"failoverP50"`
	FailoverP99 time.Duration `json:"failoverP99"`
	SettleP50   time.Duration `json:"settleP50"`
	SettleMax   time.Duration `json:"settleMax"`
}

// Report is what Check found.
type Report struct {
	Faults int       `json:"faults"`
	ByKind []KindRow `json:"byKind"`
	// LabelDoubles: moments two pods of a group were labelled active.
	LabelDoubles []Violation `json:"labelDoubles"`
	// AppOverlaps: moments two apps of a group held the active role.
	AppOverlaps []Violation `json:"appOverlaps"`
	// Epochs: an epoch held by two pods, not increasing, or forged.
	Epochs []Violation `json:"epochs"`
	// Unsettled: faults not followed by one acked active within the bound.
	Unsettled []Violation `json:"unsettled"`
	// MaxNoActive is the longest time a group had no app holding the
	// active role, within the fault phase.
	MaxNoActive      time.Duration `json:"maxNoActive"`
	MaxNoActiveGroup string        `json:"maxNoActiveGroup"`
	MaxNoActiveAt    time.Time     `json:"maxNoActiveAt"`
	LabelEvents      int           `json:"labelEvents"`
	AppChanges       int           `json:"appChanges"`
}

// Violations counts every breach.
func (r Report) Violations() int {
	return len(r.LabelDoubles) + len(r.AppOverlaps) + len(r.Epochs) + len(r.Unsettled)
}

// Check holds a history to the single-active invariants.
func Check(h History, o CheckOptions) Report {
	r := Report{Faults: len(h.Faults), LabelEvents: len(h.Labels), AppChanges: len(h.Apps)}
	for _, s := range h.Labels {
		if len(s.Active) > 1 {
			r.LabelDoubles = append(r.LabelDoubles, Violation{At: s.At, Group: s.Group,
				What: fmt.Sprintf("pods %v labelled active at resourceVersion %s", s.Active, s.ResourceVersion)})
		}
	}
	end := h.End
	for _, c := range h.Apps {
		if c.At.After(end) {
			end = c.At
		}
	}
	// The time with no active counts within the fault phase only: the
	// teardown stops every app.
	gapEnd := h.End
	if gapEnd.IsZero() {
		gapEnd = end
	}
	byGroup := intervals(h.Apps, end)
	for _, g := range slices.Sorted(maps.Keys(byGroup)) {
		ivs := byGroup[g]
		r.AppOverlaps = append(r.AppOverlaps, overlaps(g, ivs)...)
		if gap, at := longestGap(ivs, h.Start, gapEnd); gap > r.MaxNoActive {
			r.MaxNoActive, r.MaxNoActiveGroup, r.MaxNoActiveAt = gap, g, at
		}
	}
	r.Epochs = epochViolations(h.Apps, o.ForgedEpochs)
	r.ByKind, r.Unsettled = byKind(h.Faults, o.SettleBound)
	return r
}

// interval is a span in which one app held the active role.
type interval struct {
	pod      string
	from, to time.Time
}

// intervals are each group's active intervals: an app holds the role from
// a change to active until its next change to anything else (standby, a
// lapse, a shutdown, its exit), or until end.
func intervals(apps []AppChange, end time.Time) map[string][]interval {
	type key struct{ group, pod string }
	byPod := map[key][]AppChange{}
	for _, c := range apps {
		k := key{c.Group, c.Pod}
		byPod[k] = append(byPod[k], c)
	}
	out := map[string][]interval{}
	for k, cs := range byPod {
		// An app writes its changes in order; its exit comes last. A
		// lapse is timed at the lease's end, which may be earlier than
		// when it was written, never earlier than the grant.
		slices.SortStableFunc(cs, func(a, b AppChange) int { return a.At.Compare(b.At) })
		var open time.Time
		for _, c := range cs {
			switch {
			case c.Role == RoleActive && open.IsZero():
				open = c.At
			case c.Role != RoleActive && !open.IsZero():
				out[k.group] = append(out[k.group], interval{pod: k.pod, from: open, to: c.At})
				open = time.Time{}
			}
		}
		if !open.IsZero() {
			out[k.group] = append(out[k.group], interval{pod: k.pod, from: open, to: end})
		}
	}
	return out
}

// overlaps finds the moments two apps' intervals overlap.
func overlaps(group string, ivs []interval) []Violation {
	ivs = slices.Clone(ivs)
	slices.SortFunc(ivs, func(a, b interval) int { return a.from.Compare(b.from) })
	var out []Violation
	var last interval // the interval reaching furthest so far
	for _, iv := range ivs {
		if last.pod != "" && last.pod != iv.pod && iv.from.Before(last.to) {
			out = append(out, Violation{At: iv.from, Group: group, What: fmt.Sprintf(
				"apps %s and %s both held the active role for %s", last.pod, iv.pod, minTime(last.to, iv.to).Sub(iv.from))})
		}
		if last.pod == "" || iv.to.After(last.to) {
			last = iv
		}
	}
	return out
}

// longestGap is the longest span within [start, end] covered by no interval.
func longestGap(ivs []interval, start, end time.Time) (time.Duration, time.Time) {
	ivs = slices.Clone(ivs)
	slices.SortFunc(ivs, func(a, b interval) int { return a.from.Compare(b.from) })
	var gap time.Duration
	var at time.Time
	covered := start // everything before is covered or outside
	for _, iv := range ivs {
		if iv.from.After(covered) && iv.from.Sub(covered) > gap {
			gap, at = iv.from.Sub(covered), covered
		}
		if iv.to.After(covered) {
			covered = iv.to
		}
	}
	if end.Sub(covered) > gap {
		gap, at = end.Sub(covered), covered
	}
	return gap, at
}

// epochViolations: within a group no epoch is held by two pods, each new
// active holds a higher epoch than every earlier one (the same app may take
// its own epoch again after a lapse), and no app holds a forged epoch.
func epochViolations(apps []AppChange, forged uint64) []Violation {
	byGroup := map[string][]AppChange{}
	for _, c := range apps {
		if c.Role == RoleActive {
			byGroup[c.Group] = append(byGroup[c.Group], c)
		}
	}
	var out []Violation
	for _, g := range slices.Sorted(maps.Keys(byGroup)) {
		cs := byGroup[g]
		slices.SortStableFunc(cs, func(a, b AppChange) int { return a.At.Compare(b.At) })
		holder := map[uint64]string{}
		var top uint64
		var topPod string
		for _, c := range cs {
			if forged > 0 && c.Epoch >= forged {
				out = append(out, Violation{At: c.At, Group: g, What: fmt.Sprintf("%s took the active role at forged epoch %d", c.Pod, c.Epoch)})
				continue
			}
			if p, ok := holder[c.Epoch]; ok && p != c.Pod {
				out = append(out, Violation{At: c.At, Group: g, What: fmt.Sprintf("epoch %d handed to %s and to %s", c.Epoch, p, c.Pod)})
				continue
			}
			holder[c.Epoch] = c.Pod
			if c.Epoch < top || (c.Epoch == top && c.Pod != topPod) {
				out = append(out, Violation{At: c.At, Group: g, What: fmt.Sprintf("%s took epoch %d after %s held %d", c.Pod, c.Epoch, topPod, top)})
				continue
			}
			top, topPod = c.Epoch, c.Pod
		}
	}
	return out
}

// byKind sums the faults up by kind, and lists those that did not settle
// within bound of being healed.
func byKind(faults []Fault, bound time.Duration) ([]KindRow, []Violation) {
	rows := map[string]*KindRow{}
	failovers, settles := map[string][]time.Duration{}, map[string][]time.Duration{}
	var unsettled []Violation
	for _, f := range faults {
		row := rows[f.Kind]
		if row == nil {
			row = &KindRow{Kind: f.Kind}
			rows[f.Kind] = row
		}
		row.Faults++
		healed := f.Healed
		if healed.IsZero() {
			healed = f.Start
		}
		if f.Settled.IsZero() || (bound > 0 && f.Settled.Sub(healed) > bound) {
			row.Unsettled++
			what := fmt.Sprintf("fault %d (%s on %s) not followed by one acked active within %s", f.ID, f.Kind, f.Target, bound)
			if f.Err != "" {
				what += ": " + f.Err
			}
			unsettled = append(unsettled, Violation{At: f.Start, Group: f.Group, What: what})
		} else {
			settles[f.Kind] = append(settles[f.Kind], f.Settled.Sub(f.Start))
		}
		if f.FailedOver {
			row.FailedOver++
			if !f.TookOver.IsZero() {
				failovers[f.Kind] = append(failovers[f.Kind], f.TookOver.Sub(f.Start))
			}
		}
	}
	var out []KindRow
	for _, k := range slices.Sorted(maps.Keys(rows)) {
		row := rows[k]
		row.FailoverP50, row.FailoverP99 = quantile(failovers[k], 0.5), quantile(failovers[k], 0.99)
		row.SettleP50 = quantile(settles[k], 0.5)
		if s := settles[k]; len(s) > 0 {
			row.SettleMax = slices.Max(s)
		}
		out = append(out, *row)
	}
	return out, unsettled
}

// quantile is the nearest-rank q-quantile of ds (0 for none).
func quantile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(q*float64(len(s)) + 0.999999) // ceil(q·n), the nearest rank
	return s[min(max(i, 1), len(s))-1]
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}
