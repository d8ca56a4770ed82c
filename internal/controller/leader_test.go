package controller

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"k8s.io/client-go/tools/leaderelection/resourcelock"

	"github.com/hapod/hapod/internal/notify"
	"github.com/hapod/hapod/pkg/role"
)

// fakeClock is a clock a test moves by hand.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func TestLeaseLeft(t *testing.T) {
	t0 := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name     string
		now      time.Time
		wantLeft time.Duration
		wantOK   bool
	}{
		// 15 s lease, 5% drift, 0.5 s margin: trusted for 13.75 s.
		{"just renewed", t0, 13750 * time.Millisecond, true},
		{"renewed a while ago", t0.Add(10 * time.Second), 3750 * time.Millisecond, true},
		// The other replicas may take over at 15 s by their clocks; the
		// drift and margin stop writes before that.
		{"at the trusted end", t0.Add(13750 * time.Millisecond), 0, false},
		{"past the lease", t0.Add(20 * time.Second), -6250 * time.Millisecond, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			left, ok := leaseLeft(t0, tc.now, 15*time.Second, 0.05, 500*time.Millisecond)
			if left != tc.wantLeft || ok != tc.wantOK {
				t.Errorf("leaseLeft = %v, %v; want %v, %v", left, ok, tc.wantLeft, tc.wantOK)
			}
		})
	}
}

// lockStub is a resourcelock.Interface whose writes take a set time and
// return a set error.
type lockStub struct {
	resourcelock.Interface
	clock *fakeClock
	took  time.Duration
	err   error
}

func (l *lockStub) Identity() string { return "me" }
func (l *lockStub) Create(context.Context, resourcelock.LeaderElectionRecord) error {
	l.clock.advance(l.took)
	return l.err
}
func (l *lockStub) Update(context.Context, resourcelock.LeaderElectionRecord) error {
	l.clock.advance(l.took)
	return l.err
}

// The gate trusts a lease from the start of the renew that got it, not its
// end; a failed renew extends nothing; a release closes the gate at once.
func TestLeaderGateLock(t *testing.T) {
	clock := &fakeClock{now: time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)}
	g := NewLeaderGate(10 * time.Second)
	g.Drift, g.Margin, g.Now = 0, 0, clock.Now
	stub := &lockStub{clock: clock, took: time.Second}
	lock := g.Lock(stub)
	mine := resourcelock.LeaderElectionRecord{HolderIdentity: "me"}

	if _, ok := g.Remaining(); ok {
		t.Fatal("gate open before any acquire")
	}
	if err := lock.Create(t.Context(), mine); err != nil {
		t.Fatal(err)
	}
	if left, ok := g.Remaining(); !ok || left != 9*time.Second {
		t.Errorf("after a 1 s acquire: %v, %v; want 9s (10 s from its start), true", left, ok)
	}
	stub.err = errors.New("renew failed")
	_ = lock.Update(t.Context(), mine)
	if left, _ := g.Remaining(); left != 8*time.Second {
		t.Errorf("after a failed renew: %v left, want 8s (not extended)", left)
	}
	clock.advance(8 * time.Second)
	if _, ok := g.Remaining(); ok {
		t.Error("gate open after the lease ran out")
	}
	stub.err = nil
	_ = lock.Update(t.Context(), mine)
	if _, ok := g.Remaining(); !ok {
		t.Error("gate closed after a successful renew")
	}
	stub.err = errors.New("release failed")
	_ = lock.Update(t.Context(), resourcelock.LeaderElectionRecord{}) // release: empty holder
	if _, ok := g.Remaining(); ok {
		t.Error("gate open after a release (even one that reported an error)")
	}
	var nilGate *LeaderGate
	if _, ok := nilGate.Remaining(); !ok {
		t.Error("a nil gate (no leader election) must be open")
	}
}

// pausingNotifier pauses "the process" (moves the gate's clock past the
// lease) right after a chosen message was sent.
type pausingNotifier struct {
	n     Notifier
	pause func(notify.Target) bool
	clock *fakeClock
}

func (p pausingNotifier) Send(ctx context.Context, t notify.Target) notify.Result {
	res := p.n.Send(ctx, t)
	if p.pause(t) {
		p.clock.advance(time.Minute)
	}
	return res
}

// Defect 11: a leader paused past its lease (another replica may lead by
// now) neither writes labels nor tells any app active afterwards.
func TestDeposedLeader(t *testing.T) {
	for _, tc := range []struct {
		name string
		// pausedBefore: paused before the failover's reconcile starts;
		// else paused right after telling the old active standby, while
		// waiting for its ack.
		pausedBefore bool
		// pauseInPatch: paused during the demotion PATCH (the new active
		// was told already): the promotion PATCH must not follow.
		pauseInPatch bool
	}{
		{name: "paused before the switch", pausedBefore: true},
		{name: "paused while fencing the old active"},
		{name: "paused during the demotion write", pauseInPatch: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clock := &fakeClock{now: time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)}
			gate := NewLeaderGate(15 * time.Second)
			gate.Now = clock.Now
			gate.renewed(clock.Now())
			var armed bool
			var mu sync.Mutex
			w := newFakeWorld(t, []string{"a", "b"}, func(d *Deps) {
				d.Leader = gate
				d.Notifier = pausingNotifier{n: d.Notifier, clock: clock, pause: func(tg notify.Target) bool {
					mu.Lock()
					defer mu.Unlock()
					return armed && !tc.pausedBefore && !tc.pauseInPatch && tg.Pod == "a" && tg.Role == "standby"
				}}
			})
			w.elect()
			mu.Lock()
			armed = true
			mu.Unlock()
			if tc.pausedBefore {
				clock.advance(time.Minute)
			}
			if tc.pauseInPatch {
				w.patch = func(_ context.Context, pod, rv, _ string, next func() error) error {
					if pod == "a" && rv == "standby" {
						clock.advance(time.Minute)
					}
					return next()
				}
			}
			w.deleteActive()
			// The first reconciles may end before the pause: a promotion
			// is held (on the real clock) until the old active's role
			// lease has run out, and its standby message goes out in the
			// background. Once the pause has happened, every reconcile
			// refuses; a fast machine needs more reconciles to get there,
			// so they are polled with a deadline, not counted.
			var err error
			deadline := time.Now().Add(10 * time.Second)
			for !errors.Is(err, errNotLeader) && time.Now().Before(deadline) {
				_, err = w.reconcile()
				if !errors.Is(err, errNotLeader) {
					time.Sleep(10 * time.Millisecond) // the pace of a requeue
				}
			}
			if !errors.Is(err, errNotLeader) {
				t.Errorf("reconcile after the lease ran out: %v, want errNotLeader", err)
			}
			// And it keeps refusing.
			if _, err := w.reconcile(); !errors.Is(err, errNotLeader) {
				t.Errorf("a later reconcile: %v, want errNotLeader", err)
			}
			for _, wr := range w.writes.take() {
				if wr == "patch b role=active epoch=2 err=false" || (!tc.pauseInPatch && wr != "get pod a") {
					t.Errorf("deposed leader wrote %q", wr)
				}
			}
			if !tc.pauseInPatch {
				if s := w.apps["b"].State(); s.Role == role.Active {
					t.Errorf("deposed leader told b active: %+v", s)
				}
			}
			if w.labelled("b", "active", 0) {
				t.Error("deposed leader labelled b active")
			}
			w.history.Check(t)
		})
	}
}
