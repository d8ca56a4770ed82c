package election

import (
	"fmt"
	"reflect"
	"slices"
	"testing"
	"time"
)

// FuzzDecide checks Decide's safety properties on arbitrary groups: the
// decision leaves at most one active, never promotes a faulty pod (only a
// warm one, and only when no pod is eligible), never deletes the pod it
// keeps or promotes, hands out exactly the next epoch, and does not depend
// on the order the members come in; paused, it promotes and deletes
// nothing; and the HAGroup policies (pause, a switchover, the cordon
// rule) never make it break any of these. `go test` runs the seed corpus;
// `go test -fuzz FuzzDecide ./internal/election/` searches further (make
// fuzz does, for a bounded time).
func FuzzDecide(f *testing.F) {
	for _, seed := range [][]byte{
		{},
		{0x11, 0x22},                         // one active, one standby
		{0x11, 0x11, 0x13},                   // two actives, one doomed
		{0x15, 0x05, 0x05, 0x25},             // only warm pods
		{0x31, 0x41, 0x51, 0x61, 0x71, 0x81}, // six of everything
		{0xff, 0x00, 0x7f, 0x80, 0x01, 0xfe},
	} {
		f.Add(uint64(3), byte(0), seed)
		f.Add(uint64(3), byte(0x3a), seed) // a switchover to p1, the cordon rule, p0 cordoned
	}
	f.Fuzz(func(t *testing.T, epoch uint64, policy byte, data []byte) {
		if epoch == ^uint64(0) {
			epoch-- // the controller refuses to hand out past the maximum
		}
		in := fuzzInput(epoch, data)
		fuzzPolicy(&in, policy)
		d := Decide(in)
		if err := checkDecision(in, d); err != nil {
			t.Fatalf("%v\ninput %+v\ndecision %+v", err, in, d)
		}
		rev := in
		rev.Members = slices.Clone(in.Members)
		slices.Reverse(rev.Members)
		if d2 := Decide(rev); !sameDecision(d, d2) {
			t.Fatalf("the members' order changed the decision:\n%+v\n%+v", d, d2)
		}
	})
}

// fuzzFaults are the faults a member may have.
var fuzzFaults = []Fault{NoFault, Deleting, PodFailed, CriticalDied, NodeNotReady, NotReadyTooLong, Gone, LeaseLapsed}

// fuzzInput turns bytes into a group of at most 8 members, one byte each:
// bits 0-1 the role label (active, standby, none, another value), bits 2-4
// the fault, bit 5 eligible (only without a fault), bit 6 doomed, bit 7
// warm (only if doomed). Creation times tie on purpose.
func fuzzInput(epoch uint64, data []byte) Input {
	in := Input{Roles: roles, Epoch: epoch, Now: t0.Add(time.Hour)}
	for i, b := range data[:min(len(data), 8)] {
		role := []string{roles.Active, roles.Standby, "", "bogus"}[b&3]
		st := Status{Fault: fuzzFaults[int(b>>2&7)%len(fuzzFaults)]}
		st.Eligible = st.Fault == NoFault && b&0x20 != 0
		st.Doomed = b&0x40 != 0
		st.Warm = st.Doomed && b&0x80 != 0 && !st.Eligible
		var ep uint64
		if role == roles.Active {
			ep = uint64(b) % (epoch + 1)
		}
		in.Members = append(in.Members, Member{
			Name: fmt.Sprintf("p%d", i), UID: fmt.Sprintf("uid-%d", i),
			Created: t0.Add(time.Duration(i/2) * time.Second), Role: role, Epoch: ep, Status: st,
		})
	}
	return in
}

// fuzzPolicy sets the HAGroup policies from one byte: bit 0 paused, bit 1
// a switchover, bit 2 to a named pod (p<bits 5-7>), bit 3 the cordon rule,
// bit 4 the first two members cordoned.
func fuzzPolicy(in *Input, b byte) {
	in.Paused = b&1 != 0
	if b&2 != 0 {
		in.Switchover = &Switchover{}
		if b&4 != 0 {
			in.Switchover.To = fmt.Sprintf("p%d", b>>5)
		}
	}
	in.SwitchoverOnCordon = b&8 != 0
	if b&0x10 != 0 {
		for i := range min(2, len(in.Members)) {
			in.Members[i].Status.Cordoned = true
		}
	}
}

// checkDecision is the list of properties.
func checkDecision(in Input, d Decision) error {
	if in.Paused {
		return checkPaused(in, d)
	}
	if d.Keep != nil && d.Promote != nil {
		return fmt.Errorf("keeps %s and promotes %s", d.Keep.Name, d.Promote.Name)
	}
	demoted := map[string]bool{}
	for _, dm := range d.Demote {
		demoted[dm.Member.UID] = true
		if dm.Member.Role != in.Roles.Active {
			return fmt.Errorf("demotes %s, which is not active", dm.Member.Name)
		}
	}
	// After the decision: every active not demoted, plus the promoted pod.
	var after []string
	anyEligible := false
	for _, m := range in.Members {
		anyEligible = anyEligible || m.Status.Eligible
		if m.Role == in.Roles.Active && !demoted[m.UID] {
			after = append(after, m.UID)
		}
	}
	if d.Promote != nil && !slices.Contains(after, d.Promote.UID) {
		after = append(after, d.Promote.UID)
	}
	if len(after) > 1 {
		return fmt.Errorf("leaves %d actives: %v", len(after), after)
	}
	if d.Keep != nil && (len(after) != 1 || after[0] != d.Keep.UID) {
		return fmt.Errorf("keeps %s but the actives after it are %v", d.Keep.Name, after)
	}
	for _, m := range []*Member{d.Keep, d.Promote} {
		if m == nil {
			continue
		}
		if m.Status.Fault != NoFault && (!m.Status.Warm || anyEligible) {
			return fmt.Errorf("%s holds the role with fault %s (warm %v, an eligible pod exists %v)", m.Name, m.Status.Fault, m.Status.Warm, anyEligible)
		}
		if m.Status.Fault == NoFault && !m.Status.Eligible && m == d.Promote && !m.Status.Warm {
			return fmt.Errorf("promotes %s, which is not eligible", m.Name)
		}
	}
	if d.Promote != nil && d.Epoch != in.Epoch+1 {
		return fmt.Errorf("promotes at epoch %d, want %d", d.Epoch, in.Epoch+1)
	}
	if d.Promote == nil && d.Keep == nil && anyEligible {
		return fmt.Errorf("leaves the group without an active although a pod is eligible")
	}
	for _, m := range d.Delete {
		if d.holds(m) {
			return fmt.Errorf("deletes %s, which it keeps or promotes", m.Name)
		}
		if !m.Status.Doomed {
			return fmt.Errorf("deletes %s, which is not doomed", m.Name)
		}
	}
	return nil
}

// checkPaused: a paused group keeps at most one active, whatever its
// faults, and promotes and deletes nothing.
func checkPaused(in Input, d Decision) error {
	if d.Promote != nil || len(d.Delete) > 0 {
		return fmt.Errorf("paused, yet promotes %v and deletes %d", d.Promote != nil, len(d.Delete))
	}
	demoted := map[string]bool{}
	for _, dm := range d.Demote {
		demoted[dm.Member.UID] = true
	}
	left := 0
	for _, m := range in.Members {
		if m.Role == in.Roles.Active && !demoted[m.UID] {
			left++
		}
	}
	if left > 1 {
		return fmt.Errorf("paused, leaves %d actives", left)
	}
	return nil
}

// sameDecision compares decisions whose lists may come in another order.
func sameDecision(a, b Decision) bool {
	norm := func(d Decision) Decision {
		d.Demote = slices.Clone(d.Demote)
		slices.SortFunc(d.Demote, func(x, y Demotion) int { return byAge(x.Member, y.Member) })
		for _, l := range []*[]Member{&d.LabelStandby, &d.Delete} {
			*l = slices.Clone(*l)
			slices.SortFunc(*l, byAge)
		}
		return d
	}
	return reflect.DeepEqual(norm(a), norm(b))
}
