package controller

import (
	"context"
	"net/netip"
	"sync"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/types"

	"github.com/hapod/hapod/internal/config"
	"github.com/hapod/hapod/internal/election"
	"github.com/hapod/hapod/internal/notify"
	"github.com/hapod/hapod/internal/wire"
)

// fakeRenewer records renewals; the test plays the pods' acks.
type fakeRenewer struct {
	mu      sync.Mutex
	renewed []renewal
	handler func(notify.Ack) notify.AckVerdict
}

func (f *fakeRenewer) Send(context.Context, notify.Target) notify.Result { return notify.Result{} }

func (f *fakeRenewer) Renew(t notify.Target, echo uint64) (uint64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.renewed = append(f.renewed, renewal{t: t, echo: echo})
	return uint64(len(f.renewed)), nil
}

func (f *fakeRenewer) SetAckHandler(h func(notify.Ack) notify.AckVerdict) { f.handler = h }

func (f *fakeRenewer) take() []renewal {
	f.mu.Lock()
	defer f.mu.Unlock()
	r := f.renewed
	f.renewed = nil
	return r
}

type clock struct{ t time.Time }

func (c *clock) now() time.Time          { return c.t }
func (c *clock) advance(d time.Duration) { c.t = c.t.Add(d) }

// leaseFixture is a leases with a fake clock and renewer, one group and a
// granted lease on pod a.
type leaseFixture struct {
	t      *testing.T
	clk    *clock
	rn     *fakeRenewer
	ls     *leases
	key    types.NamespacedName
	lapsed []types.NamespacedName
}

func newLeaseFixture(t *testing.T) *leaseFixture {
	f := &leaseFixture{t: t, clk: &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}, rn: &fakeRenewer{},
		key: types.NamespacedName{Namespace: "ns", Name: "g"}}
	cfg := config.Default()
	f.ls = newLeases(cfg, Deps{Now: f.clk.now, Notifier: f.rn, Metrics: NewMetrics(nil)}, func(k types.NamespacedName, _ time.Time) {
		f.lapsed = append(f.lapsed, k)
	})
	return f
}

func (f *leaseFixture) target(pod string, epoch uint64) notify.Target {
	return notify.Target{Addr: netip.MustParseAddrPort("127.0.0.1:7477"), Group: f.key.String(), Pod: pod, UID: "uid-" + pod, Role: wire.RoleActive, Epoch: epoch}
}

// grant plays a Send that granted the lease: the retry ack (nonce 1) at
// the current time, the ok ack (nonce 2) 1ms later.
func (f *leaseFixture) grant(pod string, epoch uint64) notify.Target {
	t := f.target(pod, epoch)
	f.ls.prepare(f.key, &t)
	if t.TTL != 150*time.Millisecond || t.Grant == nil {
		f.t.Fatalf("prepared target %+v", t)
	}
	echoed := f.clk.now()
	if !t.Grant(echoed, true) {
		f.t.Fatal("grant refused")
	}
	f.clk.advance(time.Millisecond)
	f.ls.sent(t, true, notify.Result{Acked: true, Status: "ok", Nonce: 2, NonceAt: f.clk.now(), Lease: true, Echoed: echoed})
	return t
}

func (f *leaseFixture) ack(t notify.Target, status string, nonce uint64) {
	f.rn.handler(notify.Ack{Group: t.Group, Pod: t.Pod, UID: t.UID, Role: wire.RoleActive, Epoch: t.Epoch, Status: status, Nonce: nonce, Lease: true, At: f.clk.now()})
}

// The loop renews every interval, echoing the newest nonce, and counts a
// lease lapsed once it has certainly run out without an ack.
func TestLeaseRenewsAndLapses(t *testing.T) {
	f := newLeaseFixture(t)
	tgt := f.grant("a", 1)
	granted := f.clk.now()
	f.ls.pass()
	if r := f.rn.take(); len(r) != 0 {
		t.Fatalf("renewed before the interval: %+v", r)
	}
	f.clk.advance(50 * time.Millisecond)
	f.ls.pass()
	r := f.rn.take()
	if len(r) != 1 || r[0].echo != 2 || r[0].t.TTL != 150*time.Millisecond {
		t.Fatalf("renewals %+v, want one echoing nonce 2", r)
	}
	f.ack(tgt, wire.StatusOK, 3)
	lastAck := f.clk.now()
	// The app dies: no more acks. Renewals go on echoing nonce 3 ...
	for range 3 {
		f.clk.advance(50 * time.Millisecond)
		f.ls.pass()
		if r := f.rn.take(); len(r) != 1 || r[0].echo != 3 {
			t.Fatalf("renewals %+v, want one echoing nonce 3", r)
		}
	}
	// ... until the bound of nonce 3's ack has passed.
	bound := election.LeaseBound(lastAck, 150*time.Millisecond, config.LeaseDrift, 10*time.Millisecond)
	f.clk.t = bound.Add(-time.Nanosecond)
	f.ls.pass()
	if len(f.lapsed) != 0 {
		t.Fatal("lapsed before the bound")
	}
	f.rn.take() // renewed a little early, as due within the pass's horizon
	f.clk.t = bound
	f.ls.pass()
	if len(f.lapsed) != 1 {
		t.Fatalf("not lapsed at the bound (%v after the grant)", bound.Sub(granted))
	}
	if st := f.ls.status("uid-a", true, election.Status{Eligible: true}, nil); st.Fault != election.LeaseLapsed {
		t.Fatalf("status %+v", st)
	}
	f.clk.advance(time.Second)
	f.ls.pass()
	if r := f.rn.take(); len(r) != 0 {
		t.Fatalf("a lapsed lease was renewed: %+v", r)
	}
}

// A pass that runs late (the controller itself was starved) renews
// instead of declaring a lapse; the app's answer to that renewal keeps it.
func TestLeaseLatePassDoesNotLapse(t *testing.T) {
	f := newLeaseFixture(t)
	tgt := f.grant("a", 1)
	f.clk.advance(time.Second) // nothing ran for a second
	f.ls.pass()
	if len(f.lapsed) != 0 {
		t.Fatal("a late pass declared a lapse")
	}
	if r := f.rn.take(); len(r) != 1 {
		t.Fatalf("renewals %+v", r)
	}
	// The app's lease ran out meanwhile: it answers retry with a fresh
	// nonce, answered at once.
	f.ack(tgt, wire.StatusRetry, 9)
	f.ls.pass()
	if r := f.rn.take(); len(r) != 1 || r[0].echo != 9 {
		t.Fatalf("renewals %+v, want one echoing nonce 9 at once", r)
	}
	f.ack(tgt, wire.StatusOK, 10)
	for range 10 {
		f.clk.advance(50 * time.Millisecond)
		f.ls.pass()
		r := f.rn.take()
		if len(r) != 1 {
			t.Fatalf("renewals %+v", r)
		}
		f.ack(tgt, wire.StatusOK, r[0].echo+1)
	}
	if len(f.lapsed) != 0 {
		t.Fatal("lapsed although every renewal was acked")
	}
}

// An app that was paused answers the renewals it missed all at once: its
// first fresh nonce in a while is echoed at once, not at the next tick,
// which may come after its lease has run out.
func TestLeaseLateAckRenewedAtOnce(t *testing.T) {
	f := newLeaseFixture(t)
	tgt := f.grant("a", 1)
	// Two renewals go unanswered: the app is paused.
	for range 2 {
		f.clk.advance(50 * time.Millisecond)
		f.ls.pass()
		if r := f.rn.take(); len(r) != 1 || r[0].echo != 2 {
			t.Fatalf("renewals %+v, want one echoing nonce 2", r)
		}
	}
	// It wakes 10ms after the second and answers both.
	f.clk.advance(10 * time.Millisecond)
	f.ack(tgt, wire.StatusOK, 3)
	f.clk.advance(time.Millisecond)
	f.ack(tgt, wire.StatusOK, 4)
	f.ls.pass()
	if r := f.rn.take(); len(r) != 1 || r[0].echo != 4 {
		t.Fatalf("renewals %+v, want one at once echoing the newest nonce, 4", r)
	}
	// Then the cadence goes on from there, and prompt acks change nothing.
	for range 5 {
		f.ls.pass()
		if r := f.rn.take(); len(r) != 0 {
			t.Fatalf("renewed again before the interval: %+v", r)
		}
		f.clk.advance(50 * time.Millisecond)
		f.ls.pass()
		r := f.rn.take()
		if len(r) != 1 {
			t.Fatalf("renewals %+v, want one", r)
		}
		f.clk.advance(time.Millisecond)
		f.ack(tgt, wire.StatusOK, r[0].echo+1)
	}
	if len(f.lapsed) != 0 {
		t.Fatal("lapsed")
	}
}

// An app that holds another role refuses the renewal: lapsed at once.
func TestLeaseRefused(t *testing.T) {
	f := newLeaseFixture(t)
	tgt := f.grant("a", 1)
	f.ack(tgt, wire.StatusStale, 5)
	if len(f.lapsed) != 1 {
		t.Fatal("a refused renewal was not a lapse")
	}
	wait, blocked, _ := f.ls.grantWait(f.key, "uid-b", f.clk.now(), 1)
	if wait != 0 || blocked {
		t.Fatalf("grant to b waits %v (blocked %v) for a pod that refused the role", wait, blocked)
	}
}

// An ack that names the active but comes from another address (another
// pod of the group holds the same subkey) neither keeps its lease alive
// nor fences it: it is refused as wrong-source.
func TestLeaseAckFromWrongSource(t *testing.T) {
	f := newLeaseFixture(t)
	tgt := f.grant("a", 1)
	elsewhere := netip.MustParseAddrPort("127.0.0.2:7477")
	tests := []struct {
		name string
		ack  notify.Ack
	}{
		{"renewal ok", notify.Ack{Role: wire.RoleActive, Status: wire.StatusOK, Nonce: 77}},
		{"refusal", notify.Ack{Role: wire.RoleActive, Status: wire.StatusStale}},
		{"standby", notify.Ack{Role: wire.RoleStandby, Status: wire.StatusOK, Seq: 5}},
	}
	for _, tt := range tests {
		a := tt.ack
		a.Group, a.Pod, a.UID, a.Epoch, a.Lease, a.At, a.From = tgt.Group, tgt.Pod, tgt.UID, 1, true, f.clk.now(), elsewhere
		if v := f.rn.handler(a); v != notify.AckWrongSource {
			t.Errorf("%s: verdict %v, want wrong-source", tt.name, v)
		}
	}
	if l := f.ls.byUID["uid-a"]; l.nonce == 77 || l.fenced || l.lapsed || len(f.lapsed) != 0 {
		t.Fatalf("lease changed by acks from elsewhere: %+v", l)
	}
	// From the pod's own address (a dual-stack socket reports it mapped).
	f.clk.advance(time.Millisecond)
	a := notify.Ack{Group: tgt.Group, Pod: tgt.Pod, UID: tgt.UID, Role: wire.RoleActive, Epoch: 1, Status: wire.StatusOK, Nonce: 78, Lease: true,
		At: f.clk.now(), From: netip.MustParseAddrPort("[::ffff:127.0.0.1]:7477")}
	if v := f.rn.handler(a); v != notify.AckExpected || f.ls.byUID["uid-a"].nonce != 78 {
		t.Fatalf("the pod's own ack: verdict %v", v)
	}
}

// A grant to another pod waits until the old lease has certainly run out,
// unless the old active acks standby; the renewals of the old lease stop.
func TestLeaseGrantWait(t *testing.T) {
	f := newLeaseFixture(t)
	f.ls.noteStart(f.clk.now())
	old := f.grant("a", 1)
	f.clk.advance(time.Second) // past the start window; a has been renewed
	f.ls.pass()
	r := f.rn.take()
	f.ack(old, wire.StatusOK, 7)
	echoed := f.clk.now()
	f.clk.advance(50 * time.Millisecond)
	f.ls.pass() // echoes 7
	f.rn.take()
	_ = r
	wait, blocked, fence := f.ls.grantWait(f.key, "uid-b", f.clk.now(), 1)
	want := election.LeaseBound(echoed, 150*time.Millisecond, config.LeaseDrift, 10*time.Millisecond).Sub(f.clk.now())
	if wait != want || blocked || len(fence) != 1 || fence[0].Role != wire.RoleStandby || fence[0].Epoch != 1 || fence[0].UID != "uid-a" {
		t.Fatalf("grantWait = %v, %v, %+v; want %v and a standby message to a", wait, blocked, fence, want)
	}
	// The old lease is no longer renewed, and its fence is not resent
	// while in flight.
	f.clk.advance(50 * time.Millisecond)
	f.ls.pass()
	if r := f.rn.take(); len(r) != 0 {
		t.Fatalf("renewed a lease being replaced: %+v", r)
	}
	if _, _, fence := f.ls.grantWait(f.key, "uid-b", f.clk.now(), 1); len(fence) != 0 {
		t.Fatalf("fence resent: %+v", fence)
	}
	// The app answers standby: no more wait.
	if !f.ls.fenced(fence[0], notify.Result{Acked: true, Status: "ok"}) {
		t.Fatal("the fence's ack did not ask for a requeue")
	}
	if wait, blocked, _ := f.ls.grantWait(f.key, "uid-b", f.clk.now(), 1); wait != 0 || blocked {
		t.Fatalf("after the standby ack: %v, %v", wait, blocked)
	}
}

// A grant in flight to a pod is revoked by a grant to another: its Send
// echoes nothing more, so its bound is final.
func TestLeaseGrantRevoked(t *testing.T) {
	f := newLeaseFixture(t)
	tgt := f.target("a", 1)
	f.ls.prepare(f.key, &tgt)
	if wait, _, _ := f.ls.grantWait(f.key, "uid-b", f.clk.now(), 1); wait != 0 {
		t.Fatalf("a grant that echoed nothing holds up another: %v", wait)
	}
	if tgt.Grant(f.clk.now(), true) {
		t.Fatal("a revoked grant may still echo")
	}
}

// After a start, what a previous process granted is unknown: every grant
// waits out one bound from the first reconcile.
func TestLeaseStartWindow(t *testing.T) {
	f := newLeaseFixture(t)
	start := f.clk.now()
	f.ls.noteStart(start)
	f.clk.advance(40 * time.Millisecond)
	wait, blocked, _ := f.ls.grantWait(f.key, "uid-a", f.clk.now(), 0)
	want := election.LeaseBound(start, 150*time.Millisecond, config.LeaseDrift, 10*time.Millisecond).Sub(f.clk.now())
	if wait != want || blocked {
		t.Fatalf("grantWait = %v, %v; want %v", wait, blocked, want)
	}
}

// A listener that does not enforce the TTL never lapses by itself.
func TestLeaseNotHonoured(t *testing.T) {
	f := newLeaseFixture(t)
	tgt := f.target("a", 1)
	f.ls.prepare(f.key, &tgt)
	tgt.Grant(f.clk.now(), false)
	f.ls.sent(tgt, true, notify.Result{Acked: true, Status: "ok", Nonce: 2, NonceAt: f.clk.now(), Lease: false})
	f.clk.advance(time.Hour)
	if _, blocked, _ := f.ls.grantWait(f.key, "uid-b", f.clk.now(), 1); !blocked {
		t.Fatal("a grant did not wait for a listener that never lapses")
	}
	// The API proves it down: the grant may go ahead.
	f.ls.status("uid-a", true, election.Status{Fault: election.CriticalDied, Doomed: true}, nil)
	if wait, blocked, _ := f.ls.grantWait(f.key, "uid-b", f.clk.now(), 1); blocked || wait != 0 {
		t.Fatalf("after the proof: %v, %v", wait, blocked)
	}
}

// Pods that leave the view, or are no longer labelled active, are not
// renewed; a lapse is reported once, while the pod is still labelled
// active.
func TestLeaseSweep(t *testing.T) {
	f := newLeaseFixture(t)
	f.grant("a", 1)
	present := map[types.UID]bool{"uid-a": true}
	active := map[types.UID]bool{"uid-a": true}
	if rep := f.ls.sweep(f.key, present, active, f.clk.now()); len(rep) != 0 {
		t.Fatalf("reported %v", rep)
	}
	f.clk.advance(time.Second)
	f.ls.pass() // late: renews, no lapse
	f.rn.take()
	f.clk.advance(30 * time.Millisecond)
	f.ls.pass() // not due
	if len(f.lapsed) != 0 {
		t.Fatalf("lapsed %v", f.lapsed)
	}
	f.clk.advance(20 * time.Millisecond)
	f.ls.pass() // on time, and the renewal went unanswered
	if len(f.lapsed) != 1 {
		t.Fatalf("lapsed %v", f.lapsed)
	}
	if rep := f.ls.sweep(f.key, present, active, f.clk.now()); len(rep) != 1 || rep[0] != "uid-a" {
		t.Fatalf("reported %v, want uid-a", rep)
	}
	if rep := f.ls.sweep(f.key, present, active, f.clk.now()); len(rep) != 0 {
		t.Fatalf("reported twice: %v", rep)
	}
	// Demoted: the lease (past its bound) is dropped.
	f.ls.sweep(f.key, present, map[types.UID]bool{}, f.clk.now())
	if len(f.ls.byUID) != 0 {
		t.Fatalf("leases left: %v", f.ls.byUID)
	}

	// A pod that leaves the view stops being renewed at once.
	f.grant("b", 2)
	f.ls.sweep(f.key, map[types.UID]bool{}, nil, f.clk.now())
	f.clk.advance(50 * time.Millisecond)
	f.ls.pass()
	if r := f.rn.take(); len(r) != 0 {
		t.Fatalf("renewed a pod out of view: %+v", r)
	}
	if wait, _, _ := f.ls.grantWait(f.key, "uid-c", f.clk.now(), 2); wait <= 0 {
		t.Fatal("its lease does not hold up a grant to another pod")
	}
}

// An app that closes its listener releases its lease (pkg/role's Close):
// a grant waiting for it proceeds at once; the renewals go on, so that the
// app restarted in place is granted its role again.
func TestLeaseRelease(t *testing.T) {
	f := newLeaseFixture(t)
	old := f.grant("a", 1)
	if wait, _, _ := f.ls.grantWait(f.key, "uid-b", f.clk.now(), 1); wait <= 0 {
		t.Fatal("no wait for a live lease")
	}
	f.rn.handler(notify.Ack{Group: old.Group, Pod: "a", UID: old.UID, Role: wire.RoleStandby, Epoch: 1, Seq: 0, Status: wire.StatusOK, Nonce: 9, Lease: true, At: f.clk.now()})
	if len(f.lapsed) != 1 {
		t.Fatal("the release did not requeue the waiting group")
	}
	if wait, blocked, _ := f.ls.grantWait(f.key, "uid-b", f.clk.now(), 1); wait != 0 || blocked {
		t.Fatalf("after the release: %v, %v", wait, blocked)
	}

	// Not waiting: the renewals go on, and an answer to one clears the
	// release.
	g := newLeaseFixture(t)
	tgt := g.grant("a", 1)
	g.rn.handler(notify.Ack{Group: tgt.Group, Pod: "a", UID: tgt.UID, Role: wire.RoleStandby, Epoch: 1, Status: wire.StatusOK, Nonce: 9, Lease: true, At: g.clk.now()})
	g.clk.advance(50 * time.Millisecond)
	g.ls.pass()
	if r := g.rn.take(); len(r) != 1 {
		t.Fatalf("renewals after a release %+v, want one", r)
	}
	g.ack(tgt, wire.StatusRetry, 11)
	if wait, _, _ := g.ls.grantWait(g.key, "uid-b", g.clk.now(), 1); wait <= 0 {
		t.Fatal("an app answering again does not hold up a grant to another pod")
	}
}

type backlogRenewer struct {
	*fakeRenewer
	backlog bool
}

func (b *backlogRenewer) Backlog() bool { return b.backlog }

// While acks wait unread in the socket, no lease is declared lapsed.
func TestLeaseBacklogDefersLapse(t *testing.T) {
	f := newLeaseFixture(t)
	br := &backlogRenewer{fakeRenewer: f.rn, backlog: true}
	f.ls.renewer = br
	f.grant("a", 1)
	for range 50 { // every pass on time: only the backlog holds the lapse back
		f.clk.advance(10 * time.Millisecond)
		f.ls.pass()
	}
	if len(f.lapsed) != 0 {
		t.Fatal("lapsed while acks waited unread")
	}
	br.backlog = false
	for range 3 { // a deferred lapse is looked at again every renew/5, on time here
		f.clk.advance(10 * time.Millisecond)
		f.ls.pass()
	}
	if len(f.lapsed) != 1 {
		t.Fatal("not lapsed once the backlog was read")
	}
}

// A grant the app refuses as stale (it was told standby at this epoch: a
// switch cut off after the old active's demotion was sent, before its label
// was written) is a lapse at once: the group must move to a new epoch, not
// grant the same refused one for ever.
func TestLeaseGrantRefusedStale(t *testing.T) {
	f := newLeaseFixture(t)
	tgt := f.target("a", 2)
	f.ls.prepare(f.key, &tgt)
	if !f.ls.sent(tgt, true, notify.Result{Status: wire.StatusStale}) {
		t.Fatal("a grant refused as stale did not requeue the group")
	}
	if st := f.ls.status("uid-a", true, election.Status{}, nil); st.Fault != election.LeaseLapsed {
		t.Fatalf("status after a stale refusal: %+v, want the lease lapsed", st)
	}
}

// A grant nobody answers counts as lapsed only once every lease the app
// may hold has certainly run out: those of this process (its last echo)
// and those of a previous one (this process's start).
func TestLeaseGrantUnansweredLapsesAfterTheBound(t *testing.T) {
	f := newLeaseFixture(t)
	f.ls.noteStart(f.clk.now())
	tgt := f.target("a", 3)
	f.ls.prepare(f.key, &tgt)
	if f.ls.sent(tgt, true, notify.Result{Err: notify.ErrTimeout}) {
		t.Fatal("an unanswered grant lapsed before the bound from the start")
	}
	f.clk.advance(time.Second)
	f.ls.prepare(f.key, &tgt)
	if !f.ls.sent(tgt, true, notify.Result{Err: notify.ErrTimeout}) {
		t.Fatal("an unanswered grant after the bound did not lapse")
	}
	if st := f.ls.status("uid-a", true, election.Status{}, nil); st.Fault != election.LeaseLapsed {
		t.Fatalf("status %+v, want the lease lapsed", st)
	}
}
