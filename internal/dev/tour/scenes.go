package tour

import (
	"context"
	"fmt"
	"math"
	"slices"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"

	"github.com/hapod/hapod/internal/controller"
	"github.com/hapod/hapod/internal/dev/observe"
	"github.com/hapod/hapod/internal/dev/podstatus"
	"github.com/hapod/hapod/internal/dev/poll"
	"github.com/hapod/hapod/internal/record"
)

// play runs the scenes in order and prints each as it ends. A scene that does not
// behave leaves the group in a state the next scenes do not expect, so they are skipped.
func (t *tour) play(ctx context.Context) []*Scene {
	scenes := []struct {
		s   *Scene
		run func(context.Context, *Scene)
	}{
		{newScene("a", "initial election", true), t.election},
		{newScene("b", "the active pod is deleted", true), t.deleteActive},
		{newScene("c", "a critical container of the active dies", true), t.activeCrashes},
		{newScene("d", "a non-critical sidecar of the active dies", false), t.sidecarDies},
		{newScene("e", "a critical container of the standby dies", false), t.standbyCrashes},
	}
	var out []*Scene
	stop := false
	for _, sc := range scenes {
		out = append(out, sc.s)
		if stop || ctx.Err() != nil {
			continue
		}
		sc.s.Ran = true
		if sc.s.ID != "a" {
			// The load starts once there is an active to send to.
			t.load.count(&sc.s.Requests)
		}
		sc.run(ctx, sc.s)
		t.load.count(nil)
		if ctx.Err() != nil {
			// What did not happen after the interruption is no finding.
			sc.s.Interrupted, sc.s.Problems = true, nil
		}
		WriteScene(t.o.Out, sc.s)
		stop = !sc.s.OK()
		if t.o.afterScene != nil {
			t.o.afterScene(sc.s)
		}
	}
	return out
}

// group is the example settled: one active that knows it and that the Service lists
// alone, and standbys that are Ready and know they are standby.
type group struct {
	active   podView
	standbys []podView
}

func (t *tour) replicas() int {
	if r := t.plan.rs.Spec.Replicas; r != nil {
		return int(*r)
	}
	return 1
}

// waitSettled waits until the example is settled and accept (called under the
// observer's lock; nil accepts all) finds nothing missing.
func (t *tour) waitSettled(ctx context.Context, what string, accept func(active *podView, standbys []*podView) string) (group, error) {
	active, standby := t.cfg.ActiveValue, t.cfg.StandbyValue
	var g group
	err := t.obs.waitFor(ctx, t.o.SceneTimeout, what, func() (bool, string) {
		state := t.obs.describeLocked()
		a := t.obs.ActiveLocked()
		if a == nil {
			return false, "no active pod; " + state
		}
		if r, e := appRole(a); r != active || e != a.Epoch {
			return false, fmt.Sprintf("%s is labelled active at epoch %d, its app says %q at epoch %d; %s", a.Name, a.Epoch, r, e, state)
		}
		if !t.obs.LastSliceLocked().ListsOnly(a.IP) {
			return false, fmt.Sprintf("the EndpointSlice does not list only %s (%s); %s", a.Name, a.IP, state)
		}
		live := t.obs.LiveLocked()
		if len(live) != t.replicas() {
			return false, fmt.Sprintf("%d live pods, want %d; %s", len(live), t.replicas(), state)
		}
		var sbs []*podView
		for _, p := range live {
			if p.UID == a.UID {
				continue
			}
			if r, _ := appRole(p); p.X.ReadyWritten.IsZero() || r != standby || p.Role != standby {
				return false, fmt.Sprintf("%s is not yet a Ready standby that knows it; %s", p.Name, state)
			}
			sbs = append(sbs, p)
		}
		if accept != nil {
			if why := accept(a, sbs); why != "" {
				return false, why + "; " + state
			}
		}
		g = group{active: a.Clone()}
		for _, p := range sbs {
			g.standbys = append(g.standbys, p.Clone())
		}
		return true, ""
	})
	return g, err
}

// controllerEvent waits up to timeout for an Event of the controller about pod uid with
// reason, seen after since.
func (t *tour) controllerEvent(ctx context.Context, uid types.UID, reason string, since time.Time, timeout time.Duration) (observe.Event, bool) {
	var ev observe.Event
	err := t.obs.waitFor(ctx, timeout, reason+" Event", func() (bool, string) {
		for _, e := range t.obs.EventsSinceLocked(since, reason) {
			if e.UID == uid {
				ev = e
				return true, ""
			}
		}
		return false, ""
	})
	return ev, err == nil
}

// sliceListsOnly is when the tour first saw, after t0, the EndpointSlice list only ip.
func (t *tour) sliceListsOnly(ip string, t0 time.Time) time.Time {
	var at time.Time
	t.obs.Read(func() {
		for _, s := range t.obs.SlicesSinceLocked(t0) {
			if s.At.After(t0) && s.ListsOnly(ip) {
				at = s.At
				return
			}
		}
	})
	return at
}

// promotion adds the controller's own account of a promotion to the scene, from its
// failover record (-failover-records): when it saw the trigger, committed the label and
// got the app's ack.
func (t *tour) promotion(ctx context.Context, s *Scene, p podView) {
	tl := &s.Timeline
	var rec record.Record
	err := t.obs.waitFor(ctx, 10*time.Second, "the controller's failover record", func() (bool, string) {
		var ok bool
		rec, ok = t.obs.recordLocked(p.UID, p.Epoch)
		return ok, ""
	})
	if err != nil {
		tl.Note("(no failover record from the controller within 10s: its timings are missing)")
		return
	}
	if rec.Acked.IsZero() {
		s.problem("the app of %s did not ack its promotion (%s after %d attempts)", p.Name, rec.Status, rec.Attempts)
	}
	tl.Add(rec.Seen, "controller saw the trigger (its failover record)")
	tl.Add(rec.Labelled, "controller: label role=%s epoch %d on %s committed (%s ms after it saw the trigger)",
		t.cfg.ActiveValue, rec.Epoch, p.Name, FormatMs(MsSince(rec.Seen, rec.Labelled)))
	tl.Add(rec.Acked, "controller: the app of %s acked epoch %d (%s ms after it saw the trigger; reason %s)",
		p.Name, rec.Epoch, FormatMs(MsSince(rec.Seen, rec.Acked)), rec.Reason)
	s.AckMs = MsSince(tl.Trigger, rec.Acked)
}

// newActiveLines adds what the tour itself saw of a new active.
func (t *tour) newActiveLines(s *Scene, p podView, since time.Time) {
	tl := &s.Timeline
	labelled := p.LabelledAt(t.cfg.ActiveValue, p.Epoch)
	tl.Add(labelled, "%s labelled role=%s, epoch %d (seen on the tour's watch)", p.Name, t.cfg.ActiveValue, p.Epoch)
	tl.Add(appSaidAt(&p, t.cfg.ActiveValue, p.Epoch), "%s's app has the role active, epoch %d (its role records)", p.Name, p.Epoch)
	listed := t.sliceListsOnly(p.IP, since)
	tl.Add(listed, "EndpointSlice lists only %s (%s): the Service switched", p.IP, p.Name)
	s.LabelMs = MsSince(tl.Trigger, labelled)
	s.SliceMs = MsSince(tl.Trigger, listed)
	if math.IsNaN(s.AckMs) { // no failover record: the app's own account is the next best thing
		s.AckMs = MsSince(tl.Trigger, appSaidAt(&p, t.cfg.ActiveValue, p.Epoch))
	}
}

// sliceGap adds when the Service lost the old active's endpoint, if that was before it
// listed the new one, and explains a switch that took much longer than the label.
func (t *tour) sliceGap(s *Scene, old, a podView, t0 time.Time) {
	listed := t.sliceListsOnly(a.IP, t0)
	var dropped time.Time
	t.obs.Read(func() {
		for _, sn := range t.obs.SlicesSinceLocked(t0) {
			if sn.At.After(t0) && !slices.Contains(sn.ReadyIPs(), old.IP) {
				dropped = sn.At
				return
			}
		}
	})
	if !dropped.IsZero() && (listed.IsZero() || dropped.Before(listed)) {
		s.Timeline.Add(dropped, "EndpointSlice: %s (%s) no longer a ready endpoint; none until the switch", old.IP, old.Name)
	}
	labelled := a.LabelledAt(t.cfg.ActiveValue, a.Epoch)
	if !listed.IsZero() && !labelled.IsZero() && listed.Sub(labelled) > 500*time.Millisecond {
		s.Timeline.Note("the EndpointSlice followed the label %s ms later: kube-controller-manager's EndpointSlice", FormatMs(MsSince(labelled, listed)))
		s.Timeline.Note("controller retries a Service after 1 s when it finds its own cache stale (its log: \"EndpointSlice")
		s.Timeline.Note("informer cache is out of date\"); hapod had switched the label and the app")
	}
}

// podLines adds a pod's way up: created, Running, process, probe, Ready, told standby.
func (t *tour) podLines(s *Scene, p podView, what string) {
	tl := &s.Timeline
	tl.Add(p.Seen, "%s %s created", what, p.Name)
	tl.Add(p.Running, "%s Running with IP %s (kwok), not Ready", p.Name, p.IP)
	tl.Add(p.X.ProcStarted, "%s: hapod-demo process started on %s", p.Name, p.Loopback)
	tl.Add(p.X.ProbeOK, "%s: /readyz answered 200 (after the app's %s slow start)", p.Name, t.o.InitDelay)
	tl.Add(p.X.ReadyWritten, "%s written Ready (the tour plays the kubelet's readiness probe)", p.Name)
	if told := appSaidAt(&p, t.cfg.StandbyValue, 0); !told.IsZero() {
		e := uint64(0)
		for _, c := range p.X.App {
			if c.At.Equal(told) {
				e = c.Epoch
			}
		}
		tl.Add(told, "%s's app told standby, epoch %d (its role records)", p.Name, e)
	}
}

// election: the example is applied; the first pod whose process is ready is promoted.
func (t *tour) election(ctx context.Context, s *Scene) {
	tl := &s.Timeline
	appliedAt := time.Now()
	for _, obj := range []runtime.Object{t.plan.svc, t.plan.rs} {
		if err := t.apply(ctx, obj); err != nil {
			s.problem("%v", err)
			return
		}
	}
	g, err := t.waitSettled(ctx, "an active pod and Ready standbys", nil)
	if err != nil {
		s.problem("%v", err)
		return
	}
	a := g.active
	s.Failover, s.ActiveAfter, s.EpochAfter = true, a.Name, a.Epoch
	tl.Trigger = a.X.ReadyWritten
	tl.Add(appliedAt, "applied the example (deploy/example): Service %s and ReplicaSet %s, %d pods labelled role=%s",
		t.plan.svc.Name, t.plan.rs.Name, t.replicas(), t.cfg.StandbyValue)
	for _, p := range append([]podView{a}, g.standbys...) {
		t.podLines(s, p, "pod")
	}
	tl.Note("the trigger (+0.0) is the Ready write of %s, the pod the controller promoted", a.Name)
	t.promotion(ctx, s, a)
	t.newActiveLines(s, a, appliedAt)
	if len(g.standbys) > 0 {
		s.StandbyMs = MsSince(tl.Trigger, appSaidAt(&g.standbys[0], t.cfg.StandbyValue, 0))
	}
	if a.Epoch == 0 {
		s.problem("%s is active without an epoch", a.Name)
	}
}

// settledBefore waits for the example to settle before a scene and records
// the active the scene starts from; false means the scene cannot run (the
// problem is recorded).
func (t *tour) settledBefore(ctx context.Context, s *Scene) (group, bool) {
	g, err := t.waitSettled(ctx, "the example settled before the scene", nil)
	if err != nil {
		s.problem("%v", err)
		return g, false
	}
	s.ActiveBefore, s.EpochBefore = g.active.Name, g.active.Epoch
	return g, true
}

// replaced says what is still missing for pod gone to count as replaced:
// deleted from the API, and a standby seen after t0 (its replacement);
// "" when nothing is.
func (t *tour) replaced(gone podView, standbys []*podView, t0 time.Time) string {
	if t.obs.PodLocked(gone.UID).Gone.IsZero() {
		return gone.Name + " is not deleted yet"
	}
	for _, p := range standbys {
		if p.Seen.After(t0) {
			return ""
		}
	}
	return "no replacement standby yet"
}

// deleteActive: the active pod is deleted (kubectl delete pod, a node drain...).
func (t *tour) deleteActive(ctx context.Context, s *Scene) {
	g, ok := t.settledBefore(ctx, s)
	if !ok {
		return
	}
	old := g.active
	t0 := time.Now()
	err := t.cs.CoreV1().Pods(t.o.Namespace).Delete(ctx, old.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &old.UID}})
	answered := time.Now()
	if err != nil {
		s.problem("delete %s: %v", old.Name, err)
		return
	}
	s.Timeline.Trigger = t0
	s.Timeline.Add(t0, "trigger: DELETE pod %s (the active, epoch %d) sent", old.Name, old.Epoch)
	s.Timeline.Add(answered, "the API server answered the delete")
	t.failover(ctx, s, g, t0)
}

// activeCrashes: the active's critical container dies (a crash, an OOM kill).
func (t *tour) activeCrashes(ctx context.Context, s *Scene) {
	g, ok := t.settledBefore(ctx, s)
	if !ok {
		return
	}
	old := g.active
	killed, err := t.kl.Kill(old.UID)
	if err != nil {
		s.problem("%v", err)
		return
	}
	t0, err := podstatus.Write(ctx, t.cs, t.o.Namespace, old.Name, old.UID, FieldManager, podstatus.Terminated(t.plan.critical, 137, "Error"))
	if err != nil {
		s.problem("write container %s of %s terminated: %v", t.plan.critical, old.Name, err)
		return
	}
	s.Timeline.Trigger = t0
	s.Timeline.Add(killed, "SIGKILL to the process of %s (the active, epoch %d): its %s container dies", old.Name, old.Epoch, t.plan.critical)
	s.Timeline.Add(t0, "trigger: container %s of %s written terminated (exit 137, Error), as the kubelet would", t.plan.critical, old.Name)
	t.failover(ctx, s, g, t0)
	t.deletionLines(ctx, s, old, t0)
}

// failover waits for the standby to take over from before.active and for the old
// pod's replacement to be a standby, and tells the story.
func (t *tour) failover(ctx context.Context, s *Scene, before group, t0 time.Time) {
	old := before.active
	g, err := t.waitSettled(ctx, "a new active, the old one gone and its replacement a standby", func(a *podView, sbs []*podView) string {
		switch {
		case a.UID == old.UID:
			return old.Name + " is still the active"
		case a.Epoch <= old.Epoch:
			return fmt.Sprintf("%s is active at epoch %d, not above %d", a.Name, a.Epoch, old.Epoch)
		}
		return t.replaced(old, sbs, t0)
	})
	if err != nil {
		s.problem("%v", err)
		return
	}
	a := g.active
	s.Failover, s.ActiveAfter, s.EpochAfter = true, a.Name, a.Epoch
	s.Removed = []string{old.Name}
	if len(before.standbys) > 0 && a.UID != before.standbys[0].UID {
		s.problem("%s was promoted, not the hot standby %s", a.Name, before.standbys[0].Name)
	}
	t.promotion(ctx, s, a)
	t.newActiveLines(s, a, t0)
	t.sliceGap(s, old, a, t0)
	if o, ok := t.obs.Pod(old.UID); ok {
		s.Timeline.Add(o.Gone, "%s deleted from the API (seen on the tour's watch)", o.Name)
		s.Timeline.Add(o.X.ProcExited, "the process of %s has exited", o.Name)
	}
	for _, p := range g.standbys {
		if p.Seen.After(t0) {
			s.Replacements = append(s.Replacements, p.Name)
			t.podLines(s, p, "replacement")
			s.StandbyMs = MsSince(t0, appSaidAt(&p, t.cfg.StandbyValue, 0))
		}
	}
}

// deletionLines adds the controller's CriticalContainerDied Event about old.
func (t *tour) deletionLines(ctx context.Context, s *Scene, old podView, t0 time.Time) {
	if ev, ok := t.controllerEvent(ctx, old.UID, controller.ReasonCriticalContainerDied, t0, 5*time.Second); ok {
		s.Timeline.Add(ev.At, "controller deleted %s so that it is replaced (its Event: %s)", old.Name, ev.Note)
	} else {
		s.problem("no CriticalContainerDied Event for %s: did the controller delete it?", old.Name)
	}
}

// sidecarDies: the active's non-critical container dies and the kubelet restarts it.
// Its pod is not Ready meanwhile (the Service has no ready endpoint: that is Kubernetes'
// doing), but the controller keeps it active: its -not-ready-grace covers such blips.
func (t *tour) sidecarDies(ctx context.Context, s *Scene) {
	g, ok := t.settledBefore(ctx, s)
	if !ok {
		return
	}
	a := g.active
	tl := &s.Timeline
	t0, err := podstatus.Write(ctx, t.cs, t.o.Namespace, a.Name, a.UID, FieldManager, podstatus.Terminated(t.plan.sidecar, 1, "Error"))
	if err != nil {
		s.problem("write container %s of %s terminated: %v", t.plan.sidecar, a.Name, err)
		return
	}
	tl.Trigger = t0
	tl.Add(t0, "trigger: container %s of %s (the active) written terminated (exit 1, Error): the pod is not Ready", t.plan.sidecar, a.Name)
	// The kubelet restarts the container after a moment: simulated time, not a wait for
	// anything.
	if err := sleep(ctx, t.o.SidecarDown); err != nil {
		s.problem("%v", err)
		return
	}
	t1, err := podstatus.Write(ctx, t.cs, t.o.Namespace, a.Name, a.UID, FieldManager, podstatus.Restarted(t.plan.sidecar))
	if err != nil {
		s.problem("write container %s of %s restarted: %v", t.plan.sidecar, a.Name, err)
		return
	}
	tl.Add(t1, "the kubelet restarted %s: running, restartCount 1; %s written Ready again", t.plan.sidecar, a.Name)
	if err := t.obs.waitFor(ctx, t.o.SceneTimeout, "the EndpointSlice to list "+a.Name+" ready again", func() (bool, string) {
		return t.obs.LastSliceLocked().ListsOnly(a.IP) && t.obs.LastSliceLocked().At.After(t1), ""
	}); err != nil {
		s.problem("%v", err)
		return
	}
	// Watch past the moment the controller's not-Ready timer (started at t0) ran out,
	// and a while after the restart: a failover would have happened by then.
	until := t0.Add(t.o.NotReadyGrace + 500*time.Millisecond)
	if atLeast := t1.Add(time.Second); until.Before(atLeast) {
		until = atLeast
	}
	if err := sleep(ctx, time.Until(until)); err != nil {
		s.problem("%v", err)
		return
	}
	t.unchanged(s, g, t0)
	var notReady, readyAgain time.Time
	t.obs.Read(func() {
		for _, sn := range t.obs.SlicesSinceLocked(t0) {
			if !sn.At.After(t0) {
				continue
			}
			if notReady.IsZero() && len(sn.ReadyIPs()) == 0 {
				notReady = sn.At
			}
			if !notReady.IsZero() && readyAgain.IsZero() && sn.ListsOnly(a.IP) {
				readyAgain = sn.At
			}
		}
	})
	tl.Add(notReady, "EndpointSlice: %s not ready, the Service has no ready endpoint", a.IP)
	tl.Add(readyAgain, "EndpointSlice: %s ready again", a.IP)
	tl.Add(t0.Add(t.o.NotReadyGrace), "the controller's not-Ready grace (%s) ran out: the pod is Ready, nothing to do", t.o.NotReadyGrace)
	tl.Add(time.Now(), "watched until now: %s still active at epoch %d, no pod deleted, no failover", a.Name, a.Epoch)
	tl.Note("while %s was down the pod was not Ready, so the Service had no ready endpoint: requests in that second", t.plan.sidecar)
	tl.Note("fail (Kubernetes readiness, not hapod); hapod kept the pod active, so traffic returned to it once Ready")
}

// standbyCrashes: the standby's critical container dies; the controller deletes it, the
// ReplicaSet replaces it, and the active is not touched.
func (t *tour) standbyCrashes(ctx context.Context, s *Scene) {
	g, ok := t.settledBefore(ctx, s)
	if !ok {
		return
	}
	if len(g.standbys) == 0 {
		s.problem("no standby")
		return
	}
	a, sb := g.active, g.standbys[0]
	tl := &s.Timeline
	killed, err := t.kl.Kill(sb.UID)
	if err != nil {
		s.problem("%v", err)
		return
	}
	t0, err := podstatus.Write(ctx, t.cs, t.o.Namespace, sb.Name, sb.UID, FieldManager, podstatus.Terminated(t.plan.critical, 137, "OOMKilled"))
	if err != nil {
		s.problem("write container %s of %s terminated: %v", t.plan.critical, sb.Name, err)
		return
	}
	tl.Trigger = t0
	tl.Add(killed, "SIGKILL to the process of %s (the standby): its %s container dies", sb.Name, t.plan.critical)
	tl.Add(t0, "trigger: container %s of %s written terminated (exit 137, OOMKilled), as the kubelet would", t.plan.critical, sb.Name)
	g2, err := t.waitSettled(ctx, "the standby replaced", func(_ *podView, sbs []*podView) string {
		return t.replaced(sb, sbs, t0)
	})
	if err != nil {
		s.problem("%v", err)
		return
	}
	s.Removed = []string{sb.Name}
	t.deletionLines(ctx, s, sb, t0)
	if o, ok := t.obs.Pod(sb.UID); ok {
		tl.Add(o.Gone, "%s deleted from the API (seen on the tour's watch)", o.Name)
	}
	for _, p := range g2.standbys {
		if p.Seen.After(t0) {
			s.Replacements = append(s.Replacements, p.Name)
			t.podLines(s, p, "replacement")
			s.StandbyMs = MsSince(t0, appSaidAt(&p, t.cfg.StandbyValue, 0))
		}
	}
	t.unchanged(s, g, t0)
	tl.Add(time.Now(), "%s still active at epoch %d; the EndpointSlice listed only it throughout", a.Name, a.Epoch)
}

// unchanged checks that the active of before is still the active, at the same epoch,
// that the Service listed only it since t0, and that the controller promoted nobody.
func (t *tour) unchanged(s *Scene, before group, t0 time.Time) {
	a := before.active
	var problems []string
	t.obs.Read(func() {
		now := t.obs.ActiveLocked()
		switch {
		case now == nil:
			problems = append(problems, "no active pod any more")
		case now.UID != a.UID:
			problems = append(problems, fmt.Sprintf("%s is active instead of %s", now.Name, a.Name))
		case now.Epoch != a.Epoch:
			problems = append(problems, fmt.Sprintf("the epoch moved from %d to %d", a.Epoch, now.Epoch))
		default:
			s.ActiveAfter, s.EpochAfter = now.Name, now.Epoch
			if r, e := appRole(now); r != t.cfg.ActiveValue || e != a.Epoch {
				problems = append(problems, fmt.Sprintf("the app of %s says %q at epoch %d", a.Name, r, e))
			}
		}
		if rs := t.obs.promotionsSinceLocked(t0); len(rs) > 0 {
			s.Failover = true
			problems = append(problems, fmt.Sprintf("the controller promoted %s", rs[0].Pod))
		}
		for _, sn := range t.obs.SlicesSinceLocked(t0) {
			if ips := sn.ReadyIPs(); len(ips) > 0 && !slices.Equal(ips, []string{a.IP}) {
				problems = append(problems, fmt.Sprintf("the EndpointSlice listed %v", ips))
				break
			}
		}
		if s.WantFailover {
			return
		}
		for _, p := range before.standbys {
			if v := t.obs.PodLocked(p.UID); v != nil && !v.Alive() && !slices.Contains(s.Removed, p.Name) {
				problems = append(problems, p.Name+" was deleted")
			}
		}
		if v := t.obs.PodLocked(a.UID); v == nil || !v.Alive() {
			problems = append(problems, a.Name+" was deleted")
		}
	})
	for _, p := range problems {
		s.problem("%s", p)
	}
	if s.ActiveAfter != a.Name {
		s.Failover = true
	}
}

// sleep is simulated time in a scene (poll.Pause), interrupted with the tour.
func sleep(ctx context.Context, d time.Duration) error {
	if err := poll.Pause(ctx, d); err != nil {
		return fmt.Errorf("%w: %w", errInterrupted, err)
	}
	return nil
}
