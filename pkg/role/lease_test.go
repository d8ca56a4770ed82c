package role

import (
	"sync"
	"testing"
	"time"

	"github.com/hapod/hapod/internal/wire"
)

func TestNonceRing(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var r nonceRing
	first := r.issue(t0)
	if at, ok := r.sentAt(first); !ok || !at.Equal(t0) {
		t.Fatalf("sentAt(first) = %v, %v", at, ok)
	}
	if _, ok := r.sentAt(0); ok {
		t.Fatal("0 (no echo) was found")
	}
	if _, ok := r.sentAt(first + 1); ok {
		t.Fatal("a nonce never issued was found")
	}
	// A lease runs from the ack that carried the nonce, whenever the echo
	// arrives, and an echo at or after that end grants nothing.
	if end, ok := r.leaseEnd(first, 150*time.Millisecond, t0.Add(100*time.Millisecond)); !ok || !end.Equal(t0.Add(150*time.Millisecond)) {
		t.Fatalf("leaseEnd 100ms later = %v, %v", end, ok)
	}
	if _, ok := r.leaseEnd(first, 150*time.Millisecond, t0.Add(150*time.Millisecond)); ok {
		t.Fatal("an echo arriving when its lease would end granted one")
	}
	// Old nonces are forgotten: their echo is not valid any more.
	for i := range nonceSlots {
		r.issue(t0.Add(time.Duration(i+1) * time.Millisecond))
	}
	if _, ok := r.sentAt(first); ok {
		t.Fatalf("the first nonce survived %d newer ones", nonceSlots)
	}
}

func TestLapse(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	active := State{Role: Active, Epoch: 3, Group: "ns/g", Changed: t0, Expiry: t0.Add(time.Second)}
	if _, ok := lapse(active, t0.Add(time.Second-1)); ok {
		t.Fatal("lapsed before its expiry")
	}
	got, ok := lapse(active, t0.Add(time.Hour))
	want := State{Role: Standby, Epoch: 3, Group: "ns/g", Changed: t0.Add(time.Second), Fenced: true, Expiry: t0.Add(time.Second)}
	if !ok || got != want {
		t.Fatalf("lapse = %+v, %v; want %+v (changed when the lease ended, not when noticed)", got, ok, want)
	}
	for _, s := range []State{{}, {Role: Standby, Epoch: 3}, want} {
		if _, ok := lapse(s, t0.Add(time.Hour)); ok {
			t.Fatalf("%+v lapsed, but holds no lease", s)
		}
	}
}

// leaseMsg is an active role message with a short lease, for the tests
// that let it run out.
func leaseMsg(epoch uint64, ttl time.Duration) wire.Message {
	m := roleMsg("active", epoch)
	m.TTLMillis = wire.TTLMillisOf(ttl)
	return m
}

// The listener fences itself when its lease runs out, and tells the
// application at once, with the moment it ran out.
func TestLeaseLapses(t *testing.T) {
	clk := newFakeClock()
	l := listen(t, Config{now: clk.now})
	p := newPeer(t, l)
	const ttl = 150 * time.Millisecond
	a := p.activate(leaseMsg(1, ttl))
	granted := nextChange(t, l)
	if !l.Active() || granted.Expiry != clk.now().Add(ttl) {
		t.Fatalf("granted %+v, Active %v", granted, l.Active())
	}
	clk.advance(ttl - time.Nanosecond)
	poke(l)
	if !l.Active() || l.State().Role != Active {
		t.Fatalf("not active a nanosecond before the lease ends: %+v", l.State())
	}
	clk.advance(time.Nanosecond)
	poke(l)
	s := nextChange(t, l)
	want := State{Role: Standby, Epoch: 1, Group: "ns/g", Changed: granted.Expiry, Fenced: true, Expiry: granted.Expiry}
	if s != want || l.State() != want || l.Active() {
		t.Fatalf("after the lease ran out: change %+v, state %+v, Active %v; want %+v", s, l.State(), l.Active(), want)
	}
	if st := l.Stats(); st.Lapsed != 1 {
		t.Fatalf("stats %+v, want one lapse", st)
	}
	// A renewal that echoes the grant's nonce comes too late to revive it.
	if r := p.send(echoing(leaseMsg(1, ttl), a.Nonce)); r.Status != wire.StatusRetry || l.State() != want {
		t.Fatalf("late renewal acked %q, state %+v", r.Status, l.State())
	}
}

// A renewal, however late it arrives and however often it is replayed,
// never carries the lease past its echoed nonce's ack plus the TTL: that is
// what the controller accounts for.
func TestDelayedRenewalNeverExtends(t *testing.T) {
	clk := newFakeClock()
	l := listen(t, Config{now: clk.now})
	p := newPeer(t, l)
	const ttl = 150 * time.Millisecond
	a := p.activate(leaseMsg(1, ttl))
	issued := clk.now() // when the ack carrying a.Nonce was sent
	end := issued.Add(ttl)
	renewal := echoing(leaseMsg(1, ttl), a.Nonce)
	// Delivered 100ms late, then replayed until the end of the lease.
	for _, delay := range []time.Duration{100 * time.Millisecond, 20 * time.Millisecond, 29 * time.Millisecond} {
		clk.advance(delay)
		if r := p.send(renewal); r.Status != wire.StatusOK {
			t.Fatalf("renewal %v after the nonce acked %q", clk.now().Sub(issued), r.Status)
		}
		if got := l.State().Expiry; got != end {
			t.Fatalf("%v after the nonce, expiry %v; want %v (the nonce's ack plus the TTL)", clk.now().Sub(issued), got, end)
		}
	}
	// A later renewal echoes a newer nonce and extends; replaying the old
	// one afterwards does not shorten it either (the lease is the latest
	// end any valid echo granted).
	r := p.send(renewal)
	newer := clk.now()
	if r2 := p.send(echoing(leaseMsg(1, ttl), r.Nonce)); r2.Status != wire.StatusOK || l.State().Expiry != newer.Add(ttl) {
		t.Fatalf("fresh renewal: %q, expiry %v, want %v", r2.Status, l.State().Expiry, newer.Add(ttl))
	}
	p.send(renewal)
	if got := l.State().Expiry; got != newer.Add(ttl) {
		t.Fatalf("replayed renewal moved the expiry to %v", got)
	}
	// Once past the end, the replay is refused and grants nothing.
	clk.advance(ttl)
	if r := p.send(renewal); r.Status != wire.StatusRetry || l.Active() {
		t.Fatalf("replay after the end acked %q, Active %v", r.Status, l.Active())
	}
}

// A lapsed listener becomes active again at the same epoch only through a
// renewal round (a nonce issued after the lapse, echoed back), and never
// once it has been told standby at that epoch.
func TestRevival(t *testing.T) {
	clk := newFakeClock()
	var mu sync.Mutex
	var seen []State
	l := listen(t, Config{now: clk.now, OnChange: func(s State) {
		mu.Lock()
		defer mu.Unlock()
		seen = append(seen, s)
	}})
	p := newPeer(t, l)
	const ttl = 150 * time.Millisecond
	a := p.activate(leaseMsg(4, ttl))
	clk.advance(time.Second) // a pause: the lease ran out
	// The next renewal the controller sends still echoes the old nonce; the
	// listener notices the lapse, refuses it and offers a fresh nonce.
	r := p.send(echoing(leaseMsg(4, ttl), a.Nonce))
	if r.Status != wire.StatusRetry || !l.State().Fenced {
		t.Fatalf("stale renewal: %q, state %+v", r.Status, l.State())
	}
	revived := clk.now()
	if r2 := p.send(echoing(leaseMsg(4, ttl), r.Nonce)); r2.Status != wire.StatusOK || !l.Active() || l.State().Epoch != 4 {
		t.Fatalf("renewal round: %q, state %+v", r2.Status, l.State())
	}
	// Told standby at epoch 4 (the controller fencing it): no renewal at 4
	// can undo that.
	if s := p.send(roleMsg("standby", 4)); s.Status != wire.StatusOK {
		t.Fatalf("standby acked %q", s.Status)
	}
	q := p.send(leaseMsg(4, ttl))
	if q.Status != wire.StatusStale {
		t.Fatalf("active after standby at the same epoch acked %q", q.Status)
	}
	if q2 := p.send(echoing(leaseMsg(4, ttl), q.Nonce)); q2.Status != wire.StatusStale || l.State().Role != Standby {
		t.Fatalf("renewal round after standby: %q, state %+v", q2.Status, l.State())
	}
	_ = l.Close()
	for range l.Changes() {
	}
	mu.Lock()
	defer mu.Unlock()
	var got []string
	for _, s := range seen {
		got = append(got, string(s.Role)+map[bool]string{true: "(fenced)"}[s.Fenced])
	}
	if want := "[active standby(fenced) active standby]"; fmtList(got) != want {
		t.Fatalf("changes %v, want %s", got, want)
	}
	if seen[1].Changed != seen[0].Expiry || seen[2].Changed != revived {
		t.Fatalf("lapse at %v (lease end %v), revival at %v (want %v)", seen[1].Changed, seen[0].Expiry, seen[2].Changed, revived)
	}
}

func fmtList(s []string) string {
	out := "["
	for i, v := range s {
		if i > 0 {
			out += " "
		}
		out += v
	}
	return out + "]"
}

// A listener restarted in place (a new process on the same address) knows
// none of its predecessor's nonces: the controller's next renewal gets
// "retry", and echoing the new nonce makes it active again (defect 5: it
// used to stay Unknown while labelled active).
func TestRestartedInPlace(t *testing.T) {
	clk := newFakeClock()
	old := listen(t, Config{now: clk.now})
	p := newPeer(t, old)
	a := p.activate(leaseMsg(7, 150*time.Millisecond))
	addr := old.Addr().String()
	_ = old.Close()
	<-old.done
	if r, ok := p.readAck(2 * time.Second); !ok || r.Seq != 0 || r.Role != wire.RoleStandby {
		t.Fatalf("old listener's release: %+v, %v", r, ok)
	}
	l := listen(t, Config{Addr: addr, now: clk.now})
	r := p.send(echoing(leaseMsg(7, 150*time.Millisecond), a.Nonce))
	if r.Status != wire.StatusRetry || l.State().Role != Unknown {
		t.Fatalf("renewal to the restarted listener: %q, state %+v", r.Status, l.State())
	}
	if r2 := p.send(echoing(leaseMsg(7, 150*time.Millisecond), r.Nonce)); r2.Status != wire.StatusOK || !l.Active() {
		t.Fatalf("renewal round: %q, state %+v", r2.Status, l.State())
	}
}

// State and Active report a lapse at once, before the listener's goroutine
// has delivered it, so an application that checks before acting is never
// late.
func TestStateReportsLapseAtOnce(t *testing.T) {
	clk := newFakeClock()
	l := listen(t, Config{now: clk.now})
	p := newPeer(t, l)
	p.activate(leaseMsg(1, 150*time.Millisecond))
	nextChange(t, l)
	clk.advance(150 * time.Millisecond) // no poke: the goroutine sleeps on
	if s := l.State(); s.Role != Standby || !s.Fenced || l.Active() {
		t.Fatalf("State %+v, Active %v after the lease ended", s, l.Active())
	}
	// A message that arrives first delivers the lapse before its own change.
	// The ack goes out before either is delivered, so the lapse may still
	// be the latest value when the test looks: read on to the change at 2.
	p.send(roleMsg("standby", 2))
	s := nextChange(t, l)
	if s.Epoch == 1 && s.Fenced {
		s = nextChange(t, l)
	}
	if s.Role != Standby || s.Epoch != 2 || s.Fenced {
		t.Fatalf("latest change %+v, want standby at 2", s)
	}
	if st := l.Stats(); st.Lapsed != 1 || st.Accepted != 2 {
		t.Fatalf("stats %+v", st)
	}
}

// On the real clock the listener wakes up by itself at the lease's end.
func TestLeaseLapsesOnTheRealClock(t *testing.T) {
	l := listen(t, Config{})
	p := newPeer(t, l)
	p.activate(leaseMsg(1, 30*time.Millisecond))
	granted := nextChange(t, l)
	s := nextChange(t, l)
	late := time.Since(s.Expiry)
	if !s.Fenced || s.Changed != granted.Expiry || s.Changed != s.Expiry {
		t.Fatalf("change %+v after %+v", s, granted)
	}
	t.Logf("lapse delivered %v after the lease ended", late)
}

// Close releases an active lease: the controller that last renewed it is
// told, unasked, that the pod is standby (an ack with seq 0), so that a
// successor need not wait for the lease to run out.
func TestCloseReleases(t *testing.T) {
	l, err := Listen(t.Context(), Config{Addr: "127.0.0.1:0", PodName: "p-0"})
	if err != nil {
		t.Fatal(err)
	}
	p := newPeer(t, l)
	p.activate(leaseMsg(3, time.Minute))
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	a, ok := p.readAck(2 * time.Second)
	if !ok {
		t.Fatal("no release")
	}
	if a.Type != wire.TypeAck || a.Role != wire.RoleStandby || a.Status != wire.StatusOK || a.Seq != 0 ||
		a.Epoch != 3 || a.UID != "uid-0" || a.Group != "ns/g" || a.Pod != "p-0" || a.Nonce == 0 {
		t.Fatalf("release %+v", a)
	}
	if s := l.State(); s.Role != Standby || s.Epoch != 3 || s.Fenced || l.Active() || !s.Expiry.After(s.Changed) {
		t.Fatalf("after Close: %+v, want standby, with the end the released lease would have had", s)
	}
	// A standby listener has nothing to release.
	l2 := listen(t, Config{})
	p2 := newPeer(t, l2)
	p2.send(roleMsg("standby", 1))
	_ = l2.Close()
	if a, ok := p2.readAck(100 * time.Millisecond); ok {
		t.Fatalf("a standby listener sent %+v on Close", a)
	}
}
