package controller_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	"github.com/hapod/hapod/internal/config"
	"github.com/hapod/hapod/internal/controller"
	"github.com/hapod/hapod/internal/dev/clustertest"
	"github.com/hapod/hapod/internal/dev/poll"
	"github.com/hapod/hapod/internal/election"
)

// leaseGroup is a group of n bare pods (no ReplicaSet races to replace a
// pod a test removes), each with a recorded app, and a controller; the
// active's app has acked.
type leaseGroup struct {
	e      *env
	rec    *roleRecorder
	apps   map[string]*app
	r      *running
	active corev1.Pod
}

func newLeaseGroup(t *testing.T, n int, configure ...func(*config.Config)) *leaseGroup {
	e := newEnv(t)
	// Only the lease may notice what these tests do to an app.
	e.cfg.NotReadyGrace = time.Minute
	for _, c := range configure {
		c(&e.cfg)
	}
	lg := &leaseGroup{e: e, rec: newRecorder(t), apps: map[string]*app{}}
	e.neverTwoActive("hapod")
	e.barePods("hapod", n)
	for _, p := range e.runningPods("hapod", n) {
		lg.apps[p.Name] = e.recordedApp(lg.rec, p)
	}
	lg.r = e.startController()
	lg.active = e.active("hapod")
	lg.apps[lg.active.Name].waitActive(epochOf(lg.active), 10*time.Second)
	return lg
}

func (lg *leaseGroup) promotions(reason election.Fault) float64 {
	return testutil.ToFloat64(lg.r.metrics.Promotions.WithLabelValues(string(reason)))
}

// waitPromotions waits until n promotions for reason are counted: the
// counter moves once the labels are written, after the app was told and
// possibly after a test saw the label.
func (lg *leaseGroup) waitPromotions(reason election.Fault, n float64) {
	lg.e.t.Helper()
	clustertest.Eventually(lg.e.t, 10*time.Second, func() (bool, error) {
		if got := lg.promotions(reason); got > n {
			return false, poll.Stop(fmt.Errorf("%v promotions for %s, want %v", got, reason, n))
		}
		return lg.promotions(reason) == n, nil
	})
}

// The active's app is killed (its listener closed) and nothing tells the
// API: the controller sees the lease lapse and the standby becomes active,
// within about one TTL, and at no instant were two apps active.
func TestLeaseDetectsKilledApp(t *testing.T) {
	lg := newLeaseGroup(t, 2)
	e, old := lg.e, lg.active
	killed := lg.apps[old.Name].kill()
	next := e.active("hapod", old.Name)
	st := lg.apps[next.Name].waitActive(epochOf(next), 5*time.Second)
	took := st.Changed.Sub(killed)
	bound := time.Duration(float64(e.cfg.LeaseTTL)*(1+config.LeaseDrift)) + e.cfg.LeaseMargin
	t.Logf("killed -> new active's app has the role: %v (bound on the old lease %v after its last ack)", took, bound)
	if took > bound+500*time.Millisecond {
		t.Errorf("failover took %v, want about the lease bound %v", took, bound)
	}
	lg.waitPromotions(election.LeaseLapsed, 1)
	if n := testutil.ToFloat64(lg.r.metrics.LeaseLapses.WithLabelValues("silent")); n != 1 {
		t.Errorf("silent lapses = %v, want 1", n)
	}
	e.hasEvent(old.Name, controller.ReasonLeaseLapsed)
}

// An old active whose lease lapsed is told standby but not waited for: it
// holds no lease any more, so its ack would change nothing. With a
// -demote-ack-timeout (and a notify deadline) far beyond the test's deadline, the promotion must
// not wait for it (it used to cost every kill -9 the whole timeout).
func TestLeaseLapsedOldActiveNotWaitedFor(t *testing.T) {
	lg := newLeaseGroup(t, 2, func(c *config.Config) { c.DemoteAckTimeout, c.NotifyDeadline = time.Hour, time.Hour })
	e, old := lg.e, lg.active
	lg.apps[old.Name].kill()
	next := e.active("hapod", old.Name)
	lg.apps[next.Name].waitActive(epochOf(next), 30*time.Second)
	lg.waitPromotions(election.LeaseLapsed, 1)
}

// An active that leaves the controller's view while its app runs on, cut
// off from the controller, is no longer renewed and fences itself within
// the TTL; no other pod is told active before its lease has lapsed.
func TestLeaseActiveLeavesView(t *testing.T) {
	for _, tc := range []struct {
		name  string
		leave func(e *env, p corev1.Pod)
	}{
		{"force-deleted", func(e *env, p corev1.Pod) {
			if err := e.cs.CoreV1().Pods(e.ns).Delete(e.t.Context(), p.Name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)}); err != nil {
				e.t.Fatal(err)
			}
		}},
		{"removed from the selector", func(e *env, p corev1.Pod) {
			if _, err := e.cs.CoreV1().Pods(e.ns).Patch(e.t.Context(), p.Name, types.MergePatchType,
				[]byte(`{"metadata":{"labels":{"app":"elsewhere"}}}`), metav1.PatchOptions{}); err != nil {
				e.t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			lg := newLeaseGroup(t, 2)
			e, old := lg.e, lg.active
			oldApp := lg.apps[old.Name]
			cut := oldApp.relay.set("drop") // its node still runs it, but it is partitioned
			tc.leave(e, old)
			next := e.active("hapod", old.Name)
			st := lg.apps[next.Name].waitActive(epochOf(next), 5*time.Second)
			s := oldApp.l.State()
			if !s.Fenced || s.Role == "active" {
				t.Fatalf("the old active's app holds %+v, want fenced", s)
			}
			// The lease ran from an ack sent before the cut, so the app
			// fenced itself at most one TTL after it.
			if d := s.Changed.Sub(cut); d > e.cfg.LeaseTTL {
				t.Errorf("the old app fenced itself %v after the cut, want at most the TTL %v", d, e.cfg.LeaseTTL)
			}
			if !st.Changed.After(s.Changed) {
				t.Errorf("new active at %v, before the old app's lease ended at %v", st.Changed, s.Changed)
			}
			t.Logf("cut -> old app fenced %v, -> new active %v", s.Changed.Sub(cut), st.Changed.Sub(cut))
		})
	}
}

// A listener restarted in place (the app's container restarted, the pod
// kept) is told its role again by the renewals, within a few renew
// intervals, without a failover (defect 5: it stayed Unknown while
// labelled active).
func TestLeaseRestartedInPlace(t *testing.T) {
	lg := newLeaseGroup(t, 2)
	e, act := lg.e, lg.active
	a := lg.apps[act.Name]
	restarted := time.Now()
	a.restart()
	st := a.waitActive(epochOf(act), 5*time.Second)
	took := st.Changed.Sub(restarted)
	t.Logf("restarted -> active again at epoch %d: %v", st.Epoch, took)
	if st.Epoch != epochOf(act) {
		t.Errorf("active again at epoch %d, want the same epoch %d", st.Epoch, epochOf(act))
	}
	if took > 4*e.cfg.LeaseRenew+500*time.Millisecond {
		t.Errorf("took %v, want a few renew intervals (%v)", took, e.cfg.LeaseRenew)
	}
	stays(t, 500*time.Millisecond, func() error {
		if n := lg.promotions(election.LeaseLapsed); n != 0 {
			return fmt.Errorf("failed over (%v) after a restart in place", n)
		}
		return nil
	})
	if now := e.active("hapod"); now.UID != act.UID {
		t.Errorf("active moved to %s", now.Name)
	}
}

// A paused app (it reads nothing for longer than the TTL, then everything
// at once) is fenced before its successor is active, and the delayed
// renewals it reads afterwards do not make it active again.
func TestLeasePausedApp(t *testing.T) {
	lg := newLeaseGroup(t, 2)
	e, old := lg.e, lg.active
	oldApp := lg.apps[old.Name]
	paused := oldApp.relay.set("hold")
	next := e.active("hapod", old.Name)
	st := lg.apps[next.Name].waitActive(epochOf(next), 5*time.Second)
	s := oldApp.l.State()
	if !s.Fenced || !st.Changed.After(s.Changed) {
		t.Fatalf("old app %+v, new active since %v: want the old one fenced before", s, st.Changed)
	}
	resumed := oldApp.relay.set("pass") // the app reads its backlog: renewals, all late
	t.Logf("paused -> old app fenced %v, -> new active %v; resumed after %v (%s)",
		s.Changed.Sub(paused), st.Changed.Sub(paused), resumed.Sub(paused), oldApp.relay)
	stays(t, 500*time.Millisecond, func() error {
		if oldApp.l.Active() {
			return fmt.Errorf("the paused app is active again: %+v", oldApp.l.State())
		}
		return nil
	})
	if n := lg.promotions(election.LeaseLapsed); n != 1 {
		t.Errorf("promotions for LeaseLapsed = %v, want 1", n)
	}
}

// A pause well inside the lease's slack (TTL minus two renew intervals,
// whatever the pause's phase) changes nothing: the app keeps its lease and
// the controller does not fail over. The lease is longer than the default
// so that the margin left (200 ms) also covers a loaded machine's
// scheduling delays; at the defaults it would be 25 ms, and the test failed
// now and then under load.
func TestLeaseShortPauseNoFailover(t *testing.T) {
	lg := newLeaseGroup(t, 2, func(c *config.Config) { c.LeaseRenew, c.LeaseTTL = 100*time.Millisecond, 600*time.Millisecond })
	e, act := lg.e, lg.active
	a := lg.apps[act.Name]
	pause := (e.cfg.LeaseTTL - 2*e.cfg.LeaseRenew) / 2
	a.relay.set("hold")
	time.Sleep(pause) // the pause itself is what is tested, not a wait for something
	a.relay.set("pass")
	stays(t, 500*time.Millisecond, func() error {
		if !a.l.Active() {
			return fmt.Errorf("the app lost its role after a %v pause: %+v", pause, a.l.State())
		}
		return nil
	})
	if n := lg.promotions(election.LeaseLapsed); n != 0 {
		t.Errorf("failed over (%v) after a %v pause", n, pause)
	}
	if spans := lg.rec.spansOf(act.Name); len(spans) != 1 || !spans[0].to.IsZero() {
		t.Errorf("the app's active intervals %+v, want one, still open", spans)
	}
}

// A controller restart: the new process does not know the old one's
// leases, so it grants the active its role again only once they have
// certainly run out; the app is active again at the same epoch, and no
// failover happens.
func TestLeaseControllerRestart(t *testing.T) {
	lg := newLeaseGroup(t, 2)
	e, act := lg.e, lg.active
	a := lg.apps[act.Name]
	lg.r.stop()
	stopped := time.Now()
	r2 := e.startController()
	// The old lease lapses (nobody renews it), then the new controller
	// grants a fresh one: two intervals of the same app.
	var spans []span
	clustertest.Eventually(t, 10*time.Second, func() (bool, error) {
		spans = lg.rec.spansOf(act.Name)
		return len(spans) == 2 && spans[1].to.IsZero(), nil
	})
	st := a.waitActive(epochOf(act), 10*time.Second)
	t.Logf("controller stopped -> app fenced %v -> active again %v", spans[0].to.Sub(stopped), spans[1].from.Sub(stopped))
	// (The restarted controller tells the active its role at the epoch it
	// resumes from, above the reservation, as it always did.)
	if st.Epoch < epochOf(act) {
		t.Errorf("epoch %d, want at least %d", st.Epoch, epochOf(act))
	}
	if now := e.active("hapod"); now.UID != act.UID {
		t.Errorf("active moved to %s", now.Name)
	}
	if n := testutil.ToFloat64(r2.metrics.Promotions.WithLabelValues(string(election.Initial))) + testutil.ToFloat64(r2.metrics.Promotions.WithLabelValues(string(election.LeaseLapsed))); n != 0 {
		t.Errorf("the restarted controller promoted %v times", n)
	}
}

// A controller restart while the active's app is dead and nothing tells the
// API: the new process's grant to it goes unanswered, so once every lease
// the app could hold has run out it counts as lapsed and the standby takes
// over. Found by make chaos (a leader handover, then a SIGKILL): the group
// stayed without an active until the API reported the pod dead.
func TestLeaseControllerRestartDeadActive(t *testing.T) {
	lg := newLeaseGroup(t, 2, func(c *config.Config) { c.NotifyDeadline = time.Second })
	e, old := lg.e, lg.active
	lg.r.stop()
	lg.apps[old.Name].kill()
	e.startController()
	next := e.active("hapod", old.Name)
	lg.apps[next.Name].waitActive(epochOf(next), 30*time.Second)
}
