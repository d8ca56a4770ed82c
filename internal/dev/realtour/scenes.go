package realtour

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/hapod/hapod/internal/dev/clusterip"
	"github.com/hapod/hapod/internal/dev/nftwatch"
	"github.com/hapod/hapod/internal/dev/observe"
	"github.com/hapod/hapod/internal/dev/poll"
	"github.com/hapod/hapod/internal/dev/realpod"
	"github.com/hapod/hapod/internal/dev/rolerecord"
	"github.com/hapod/hapod/internal/dev/tour"
)

// pod is a copy of what the observer saw of one pod.
type pod = observe.Pod[struct{}]

// scene is one scene's script: what it does and what it expects.
type scene struct {
	id, title    string
	wantFailover bool
	play         func(ctx context.Context, s *Scene) error
}

func (r *run) scenes() []scene {
	ex, file := on{r, r.example}, on{r, r.file}
	return []scene{
		{"a", "the example applied: the earliest Ready pod becomes active", true, ex.initial},
		{"b", "the active's critical process is SIGKILLed", true, ex.killActive},
		{"c", "the active pod is deleted (SIGTERM, grace period)", true, ex.deleteActive},
		{"d", "the active's sidecar is SIGKILLed (non-critical)", false, ex.killSidecar},
		{"e", "the standby's critical process is SIGKILLed", false, ex.killStandby},
		{"f", fileGroup + " applied: a role-file app, hapod-agent beside it", true, file.initial},
		{"g", fileGroup + "'s active app is SIGKILLed", true, file.killActive},
		{"h", "a planned switchover of the example (HAGroup spec.switchover)", true, ex.switchover},
	}
}

// play runs the scenes in order; after a scene that went wrong the rest are
// skipped (they start from the steady state the last one should have left).
func (r *run) play(ctx context.Context) []*Scene {
	var out []*Scene
	failed := false
	for _, sc := range r.scenes() {
		s := newScene(sc.id, sc.title, sc.wantFailover)
		out = append(out, s)
		if failed || ctx.Err() != nil {
			continue
		}
		s.Ran = true
		if err := sc.play(ctx, s); err != nil {
			s.problem("%v", err)
		}
		for _, g := range r.groups() {
			g.checkSingleActive(s)
		}
		WriteScene(r.o.Out, s)
		failed = !s.OK()
	}
	return out
}

// initial applies the Service and the ReplicaSet and times the first
// election end to end.
func (r on) initial(ctx context.Context, s *Scene) error {
	svc, err := r.cs.CoreV1().Services(r.o.Namespace).Create(ctx, r.plan.svc, metav1.CreateOptions{FieldManager: FieldManager})
	if err != nil {
		return fmt.Errorf("create the example's Service: %w", err)
	}
	port := svc.Spec.Ports[0].Port
	url := fmt.Sprintf("http://%s:%d/", svc.Spec.ClusterIP, port)
	r.load = clusterip.Start(ctx, url, 5*time.Millisecond)
	r.say("Service %s: ClusterIP %s; a GET to %s every 5 ms from now on, a new connection each (through kube-proxy's rules)", svc.Name, svc.Spec.ClusterIP, url)
	if r.plan.about != "" {
		r.say("%s", r.plan.about)
	}
	t0 := time.Now()
	s.Timeline.Trigger = t0
	s.Timeline.Add(t0, "ReplicaSet %s created: %d pods on the real nodes (images %s)", r.plan.rs.Name, *r.plan.rs.Spec.Replicas, r.plan.images)
	if _, err := r.cs.AppsV1().ReplicaSets(r.o.Namespace).Create(ctx, r.plan.rs, metav1.CreateOptions{FieldManager: FieldManager}); err != nil {
		return fmt.Errorf("create the example's ReplicaSet: %w", err)
	}
	active, standby, err := r.steady(ctx)
	if err != nil {
		return err
	}
	s.Failover = true
	for _, p := range []pod{standby, active} {
		s.Timeline.Add(p.Running, "pod %s running on %s, IP %s (the kubelet's report)", p.Name, p.Object.Spec.NodeName, p.IP)
		s.Timeline.Add(p.ReadyAt, "pod %s Ready (its /readyz, after the app's slow start)", p.Name)
	}
	r.failoverStages(s, t0, active.Name, "")
	r.standbyStage(s, t0, standby.Name)
	return nil
}

// killActive SIGKILLs the active's critical container (restartPolicy
// Never: the kubelet leaves it dead) and follows the failover.
func (r on) killActive(ctx context.Context, s *Scene) error {
	return r.failover(ctx, s, true, func(old pod) (time.Time, string, error) {
		at, pids, err := realpod.Kill(old.Object, r.plan.critical)
		if err == nil {
			r.killed[old.Name] = append(r.killed[old.Name], at)
		}
		return at, fmt.Sprintf("SIGKILL to every process of %s/%s (pids %v), as a crash would", old.Name, r.plan.critical, pids), err
	})
}

// deleteActive deletes the active pod with its grace period: the app gets
// SIGTERM and runs on while it terminates.
func (r on) deleteActive(ctx context.Context, s *Scene) error {
	return r.failover(ctx, s, false, func(old pod) (time.Time, string, error) {
		at := time.Now()
		err := r.cs.CoreV1().Pods(r.o.Namespace).Delete(ctx, old.Name, metav1.DeleteOptions{})
		return at, fmt.Sprintf("DELETE pod %s (grace %ds: the kubelet sends SIGTERM)", old.Name, *old.Object.Spec.TerminationGracePeriodSeconds), err
	})
}

// failover triggers the active's end with trigger and follows the failover
// to the standby, then the replacement's arrival as standby. kill: the
// trigger killed the critical container, whose death the kubelet reports.
func (r on) failover(ctx context.Context, s *Scene, kill bool, trigger func(old pod) (time.Time, string, error)) error {
	old, standby, err := r.steady(ctx)
	if err != nil {
		return fmt.Errorf("before the trigger: %w", err)
	}
	restarts := realpod.RestartCount(old.Object, r.plan.critical)
	t0, what, err := trigger(old)
	if err != nil {
		return err
	}
	s.Timeline.Trigger = t0
	s.Timeline.Add(t0, "%s", what)
	var terminated time.Time
	err = r.obs.WaitFor(ctx, r.o.SceneTimeout, "failover", func() (bool, string) {
		if p := r.obs.PodLocked(old.UID); p != nil && terminated.IsZero() && realpod.DeathReported(p.Object, r.plan.critical, restarts) {
			terminated = p.Updated
		}
		p := r.obs.PodByNameLocked(standby.Name)
		if p == nil || p.LabelledAfter(r.cfg.ActiveValue, t0).IsZero() {
			return false, "the standby is not labelled active yet"
		}
		return r.obs.LastSliceLocked().ListsOnly(p.IP), "the EndpointSlice does not list the new active alone yet"
	})
	if err != nil {
		return err
	}
	s.Failover = true
	if kill {
		// hapod's role lease may have failed over before the kubelet
		// reported the death: wait for the report too (or the pod's end).
		_ = r.obs.WaitFor(ctx, r.o.SceneTimeout, "the kubelet's report", func() (bool, string) {
			p := r.obs.PodLocked(old.UID)
			if p != nil && terminated.IsZero() && realpod.DeathReported(p.Object, r.plan.critical, restarts) {
				terminated = p.Updated
			}
			return p == nil || !terminated.IsZero() || !p.Gone.IsZero(), "not reported yet"
		})
		s.TerminatedMs = tour.MsSince(t0, terminated)
		s.Timeline.Add(terminated, "the kubelet's report in the API: %s/%s terminated", old.Name, r.plan.critical)
	}
	if err := r.waitAnswer(ctx, standby.Name, t0); err != nil {
		return err
	}
	r.failoverStages(s, t0, standby.Name, old.Name)
	// The old pod goes (hapod deletes a pod whose critical container died)
	// and the ReplicaSet's replacement joins as standby.
	next, err := r.waitSteadyAfter(ctx, t0, old.UID)
	if err != nil {
		return err
	}
	if o, ok := r.obs.Pod(old.UID); ok {
		s.Timeline.Add(o.Deleting, "pod %s deleting (deletionTimestamp)", old.Name)
		if n := realpod.RestartCount(o.Object, r.plan.critical); n > restarts {
			s.problem("the kubelet restarted %s/%s in place (%d restarts); restartPolicy: Never should leave it dead", old.Name, r.plan.critical, n-restarts)
		}
	}
	s.Timeline.Add(next.Seen, "replacement pod %s created by the ReplicaSet", next.Name)
	s.Timeline.Add(next.ReadyAt, "replacement pod %s Ready", next.Name)
	r.standbyStage(s, t0, next.Name)
	return nil
}

// killSidecar SIGKILLs the active's sidecar: the kubelet restarts it in
// place and nothing fails over.
func (r on) killSidecar(ctx context.Context, s *Scene) error {
	active, _, err := r.steady(ctx)
	if err != nil {
		return fmt.Errorf("before the trigger: %w", err)
	}
	restarts := realpod.RestartCount(active.Object, r.plan.sidecar)
	t0, pids, err := realpod.Kill(active.Object, r.plan.sidecar)
	if err != nil {
		return err
	}
	s.Timeline.Trigger = t0
	s.Timeline.Add(t0, "SIGKILL to %s/%s (pids %v)", active.Name, r.plan.sidecar, pids)
	var terminated time.Time
	err = r.obs.WaitFor(ctx, r.o.SceneTimeout, "restart in place", func() (bool, string) {
		p := r.obs.PodLocked(active.UID)
		if p == nil {
			return false, "pod gone"
		}
		if terminated.IsZero() && realpod.DeathReported(p.Object, r.plan.sidecar, restarts) {
			terminated = p.Updated
		}
		return realpod.RestartCount(p.Object, r.plan.sidecar) > restarts && realpod.ContainerID(p.Object, r.plan.sidecar) != "", "the kubelet has not restarted it yet"
	})
	if err != nil {
		return err
	}
	restarted := time.Now()
	s.TerminatedMs = tour.MsSince(t0, terminated)
	s.Timeline.Add(terminated, "the kubelet's report in the API: %s/%s terminated", active.Name, r.plan.sidecar)
	s.Timeline.Add(restarted, "the kubelet restarted %s/%s in place (restart count %d)", active.Name, r.plan.sidecar, restarts+1)
	// The active stays: still labelled at its epoch, its app still active,
	// still the one the ClusterIP answers from.
	if err := r.waitAnswer(ctx, active.Name, restarted); err != nil {
		return err
	}
	r.sidecarOutage(s, t0, active)
	r.unchanged(s, t0, active)
	return nil
}

// killStandby SIGKILLs the standby's critical container: hapod deletes the
// standby, the ReplicaSet replaces it, and the active is left alone.
func (r on) killStandby(ctx context.Context, s *Scene) error {
	active, standby, err := r.steady(ctx)
	if err != nil {
		return fmt.Errorf("before the trigger: %w", err)
	}
	t0, pids, err := realpod.Kill(standby.Object, r.plan.critical)
	if err != nil {
		return err
	}
	r.killed[standby.Name] = append(r.killed[standby.Name], t0)
	s.Timeline.Trigger = t0
	s.Timeline.Add(t0, "SIGKILL to every process of the standby's %s/%s (pids %v)", standby.Name, r.plan.critical, pids)
	next, err := r.waitSteadyAfter(ctx, t0, standby.UID)
	if err != nil {
		return err
	}
	if o, ok := r.obs.Pod(standby.UID); ok {
		s.Timeline.Add(o.Deleting, "pod %s deleting: hapod deletes a pod whose critical container died", standby.Name)
	}
	s.Timeline.Add(next.Seen, "replacement pod %s created by the ReplicaSet", next.Name)
	s.Timeline.Add(next.ReadyAt, "replacement pod %s Ready", next.Name)
	r.standbyStage(s, t0, next.Name)
	r.unchanged(s, t0, active)
	return nil
}

// sidecarOutage adds what the sidecar's death did to the Service: a pod is
// Ready only while all its containers are, so the kubelet marks the active
// not Ready until the sidecar is back, the EndpointSlice marks it not
// ready, and kube-proxy drops the Service's rule (requests are refused)
// until it is Ready again. hapod leaves this alone: the container is not
// critical, and the pod is back within -not-ready-grace.
func (r on) sidecarOutage(s *Scene, t0 time.Time, active pod) {
	var out, back time.Time
	r.obs.Read(func() {
		for _, sn := range r.obs.SlicesSinceLocked(t0) {
			switch {
			case !sn.At.After(t0):
			case out.IsZero() && !slices.Contains(sn.ReadyIPs(), active.IP):
				out = sn.At
			case !out.IsZero() && back.IsZero() && sn.ListsOnly(active.IP):
				back = sn.At
			}
		}
	})
	s.Timeline.Add(out, "EndpointSlice: %s not ready (a pod is Ready only while every container is)", active.Name)
	if gone, ok := r.ruleGone(t0); ok {
		s.Timeline.Add(gone, "kube-proxy removed the Service's rule: no ready endpoint, connections refused")
	}
	s.Timeline.Add(back, "EndpointSlice: %s ready again", active.Name)
	if at, ok := r.ruleTo(t0, active.IP); ok {
		s.RuleMs = tour.MsSince(t0, at)
		s.Timeline.Add(at, "kube-proxy's rule sends the ClusterIP to %s again", active.IP)
	}
	if !out.IsZero() {
		first, _ := r.load.FirstFrom(active.Name, back)
		s.AnswerMs = tour.MsSince(t0, first)
		s.Timeline.Add(first, "first request through the ClusterIP answered by %s again", active.Name)
	}
}

// unchanged checks that since t0 the active kept its label and epoch, no
// other pod was labelled active, and every answer through the ClusterIP
// came from it; and counts the failed requests.
func (r on) unchanged(s *Scene, t0 time.Time, active pod) {
	now := time.Now()
	for _, p := range r.obs.Pods() {
		if p.Name != active.Name && !p.LabelledAfter(r.cfg.ActiveValue, t0).IsZero() {
			s.Failover = true
			s.problem("pod %s was labelled active: a failover nothing called for", p.Name)
		}
	}
	if p, ok := r.obs.Pod(active.UID); !ok || p.Role != r.cfg.ActiveValue || p.Epoch != active.Epoch {
		s.problem("the active %s lost its label or epoch %d", active.Name, active.Epoch)
	}
	others := map[string]int{}
	for _, h := range r.load.Between(t0, now) {
		s.Requests++
		switch {
		case h.Pod == "":
			s.Failed++
		case h.Pod != active.Name:
			others[h.Pod]++
		}
	}
	for name, n := range others {
		s.problem("%d requests through the ClusterIP were answered by %s, not the active %s", n, name, active.Name)
	}
	s.Timeline.Note("the active %s kept the role at epoch %d; %d of %d requests through the ClusterIP failed meanwhile", active.Name, active.Epoch, s.Failed, s.Requests)
}

// failoverStages adds to s the stages of next becoming active after t0
// (replacing old, "" for the first election): the controller's record, the
// app's own record, the label, the EndpointSlice, kube-proxy's rule and the
// first answer through the ClusterIP.
func (r on) failoverStages(s *Scene, t0 time.Time, next, old string) {
	p, _ := r.obs.PodByName(next)
	if rec, ok := r.ctrl.Promotion(next); ok && !rec.Seen.Before(t0.Add(-time.Second)) {
		s.Reason = rec.Reason
		if old != "" {
			s.Timeline.Add(rec.Seen, "hapod-controller saw it: %s", rec.Reason)
		}
		s.Timeline.Add(rec.Labelled, "hapod-controller's label write returned: %s role=active at epoch %d", next, rec.Epoch)
		s.Timeline.Add(rec.Acked, "hapod-controller got %s's ack over UDP (%s)", next, rec.Status)
	}
	if c, ok := firstRecord(realpod.Records(r.records)[next], r.cfg.ActiveValue, t0); ok {
		s.AppMs = tour.MsSince(t0, c.At)
		s.Timeline.Add(c.At, "app in %s holds the role: active at epoch %d (its own record)", next, c.Epoch)
	}
	label := p.LabelledAfter(r.cfg.ActiveValue, t0)
	s.LabelMs = tour.MsSince(t0, label)
	s.Timeline.Add(label, "label role=active on %s seen on the tour's watch", next)
	var slice time.Time
	r.obs.Read(func() {
		for _, sn := range r.obs.SlicesSinceLocked(t0) {
			if sn.At.After(t0) && sn.ListsOnly(p.IP) {
				slice = sn.At
				return
			}
		}
	})
	s.SliceMs = tour.MsSince(t0, slice)
	s.Timeline.Add(slice, "EndpointSlice lists only %s (%s)", next, p.IP)
	if at, ok := r.ruleTo(t0, p.IP); ok {
		s.RuleMs = tour.MsSince(t0, at)
		s.Timeline.Add(at, "kube-proxy's nftables rule sends the ClusterIP to %s (nft monitor)", p.IP)
	}
	answer, _ := r.load.FirstFrom(next, t0)
	s.AnswerMs = tour.MsSince(t0, answer)
	s.Timeline.Add(answer, "first request through the ClusterIP answered by %s", next)
	for _, h := range r.load.Between(t0, answer) {
		s.Requests++
		if h.Pod == "" {
			s.Failed++
		}
	}
	if old != "" {
		s.Timeline.Note("%d requests through the ClusterIP failed between the trigger and the first answer from %s: %s",
			s.Failed, next, r.load.Timeline(t0, answer.Add(time.Millisecond)))
	}
}

// ruleTo is when, after t0, kube-proxy added a rule to the Service's chain
// that sends it to ip (nftwatch.SendsServiceTo).
func (r on) ruleTo(t0 time.Time, ip string) (time.Time, bool) {
	l, ok := r.nft.FirstFunc(t0, func(text string) bool { return nftwatch.SendsServiceTo(text, r.o.Namespace, r.plan.svc.Name, ip) })
	return l.At, ok
}

// ruleGone is when, after t0, kube-proxy deleted a rule of the Service's
// chain (rules are replaced by a delete and an add; with no ready endpoint
// left the add does not follow).
func (r on) ruleGone(t0 time.Time) (time.Time, bool) {
	l, ok := r.nft.FirstFunc(t0, func(text string) bool {
		return nftwatch.DeletesServiceRule(text, r.o.Namespace, r.plan.svc.Name)
	})
	return l.At, ok
}

// standbyStage adds when pod's app was told it is standby.
func (r on) standbyStage(s *Scene, t0 time.Time, name string) {
	if c, ok := firstRecord(realpod.Records(r.records)[name], r.cfg.StandbyValue, t0); ok {
		s.Timeline.Add(c.At, "app in %s told standby (its own record)", name)
	}
}

// firstRecord is the first of an app's records after t0 with the role.
func firstRecord(cs []rolerecord.Change, role string, t0 time.Time) (rolerecord.Change, bool) {
	i := slices.IndexFunc(cs, func(c rolerecord.Change) bool { return c.Role == role && c.At.After(t0) })
	if i < 0 {
		return rolerecord.Change{}, false
	}
	return cs[i], true
}

// waitAnswer waits for a request through the ClusterIP sent after since
// that name answered.
func (r on) waitAnswer(ctx context.Context, name string, since time.Time) error {
	err := poll.Until(ctx, r.o.SceneTimeout, func() (bool, error) {
		_, ok := r.load.FirstFrom(name, since)
		return ok, nil
	})
	if err != nil {
		return fmt.Errorf("no answer from %s through the ClusterIP: %w; the last second's answers: %s",
			name, err, r.load.Timeline(time.Now().Add(-time.Second), time.Now()))
	}
	return nil
}

// waitSteadyAfter waits for the steady state again with the pod gone (uid
// deleting or deleted) and returns the pod created since t0 that is the new
// standby.
func (r on) waitSteadyAfter(ctx context.Context, t0 time.Time, gone types.UID) (pod, error) {
	if err := r.obs.WaitFor(ctx, r.o.SceneTimeout, "the pod to go", func() (bool, string) {
		p := r.obs.PodLocked(gone)
		return p == nil || !p.Alive(), "it is still there"
	}); err != nil {
		return pod{}, err
	}
	_, standby, err := r.steady(ctx)
	if err != nil {
		return pod{}, err
	}
	if standby.Seen.Before(t0) {
		return pod{}, fmt.Errorf("the standby %s is not the ReplicaSet's replacement", standby.Name)
	}
	return standby, nil
}

// steady waits for an active and a standby: each Ready with its app
// holding its label's role (the active at its epoch), the EndpointSlice
// listing the active alone, the ClusterIP answering from it.
func (r on) steady(ctx context.Context) (active, standby pod, err error) {
	why := ""
	// Polled, not waited for on the observer: the apps' records are files.
	err = poll.Until(ctx, r.o.SceneTimeout, func() (bool, error) {
		var ok bool
		r.obs.Read(func() { active, standby, ok, why = r.steadyLocked() })
		return ok, nil
	})
	if err != nil {
		return pod{}, pod{}, fmt.Errorf("no steady active and standby: %w (%s)", err, why)
	}
	return active, standby, r.waitAnswer(ctx, active.Name, time.Now())
}

func (r on) steadyLocked() (active, standby pod, ok bool, why string) {
	apps := realpod.Latest(r.records)
	var a, b *pod
	var seen []string
	for _, p := range r.obs.LiveLocked() {
		app := apps[p.Name]
		seen = append(seen, fmt.Sprintf("%s(label %s@%d ready=%v app %s@%d%s)", p.Name, p.Role, p.Epoch, p.Ready, app.Role, app.Epoch, waiting(p.Object)))
		if !p.Ready || p.IP == "" || realpod.ContainerID(p.Object, r.plan.critical) == "" || len(r.killed[p.Name]) > 0 {
			continue
		}
		c := p.Clone()
		switch {
		case p.Role == r.cfg.ActiveValue && app.Role == r.cfg.ActiveValue && app.Epoch == p.Epoch:
			a = &c
		case p.Role == r.cfg.StandbyValue && app.Role == r.cfg.StandbyValue:
			b = &c
		}
	}
	if a == nil || b == nil {
		return pod{}, pod{}, false, "pods: " + strings.Join(seen, " ")
	}
	if !r.obs.LastSliceLocked().ListsOnly(a.IP) {
		return pod{}, pod{}, false, "the EndpointSlice does not list the active alone"
	}
	return *a, *b, true, ""
}

// waiting describes the pod's containers that wait, and why: " app:
// CreateContainerConfigError (...)".
func waiting(p *corev1.Pod) string {
	var b strings.Builder
	for _, cs := range p.Status.ContainerStatuses {
		if w := cs.State.Waiting; w != nil {
			fmt.Fprintf(&b, " %s: %s (%s)", cs.Name, w.Reason, w.Message)
		}
	}
	return b.String()
}
