package controller

import (
	"context"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/flowcontrol"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/hapod/hapod/api/v1alpha1"
	"github.com/hapod/hapod/internal/config"
	"github.com/hapod/hapod/internal/election"
	"github.com/hapod/hapod/internal/groupstatus"
	"github.com/hapod/hapod/internal/notify"
	"github.com/hapod/hapod/pkg/role"
)

// An HAGroup (api/v1alpha1) is optional: a group without one is managed
// from the flags alone, as before. With one, Reconcile takes the policies
// in its spec (policyOf) and hands what it saw to the status writer, which
// writes the status after the switch, never on its path.

// policy is what a group's HAGroup asks for; the zero value (no HAGroup)
// is the flags' behaviour.
type policy struct {
	obj           *v1alpha1.HAGroup
	paused        bool
	onCordon      bool
	notReadyGrace time.Duration // 0: the flag's
	// unsupported, if set, is why the spec is refused; the group is then
	// paused, because the spec describes pods this controller may be
	// misreading.
	unsupported string
}

// haGroup returns the group's HAGroup from the cache, nil if there is none
// (or the CRD is not in use).
func (r *Reconciler) haGroup(ctx context.Context, key types.NamespacedName) *v1alpha1.HAGroup {
	if !r.Config.HAGroups {
		return nil
	}
	var hg v1alpha1.HAGroup
	if err := r.Client.Get(ctx, key, &hg); err != nil {
		if !apierrors.IsNotFound(err) {
			logf.FromContext(ctx).Info("HAGroup not readable; using the flags", "err", err.Error())
		}
		return nil
	}
	return &hg
}

// policyOf reads hg's spec against the controller's configuration.
func (r *Reconciler) policyOf(hg *v1alpha1.HAGroup) policy {
	p := policy{onCordon: true}
	if hg == nil {
		return p
	}
	s := &hg.Spec
	p.obj, p.paused = hg, s.Paused
	if s.SwitchoverOnCordon != nil {
		p.onCordon = *s.SwitchoverOnCordon
	}
	if s.NotReadyGrace != nil {
		p.notReadyGrace = s.NotReadyGrace.Duration
	}
	p.unsupported = unsupportedSpec(s, &r.Config)
	if p.unsupported != "" {
		p.paused = true
	}
	return p
}

// unsupportedSpec lists the spec's fields that differ from the flags this
// controller runs with, as one line ("" if none).
func unsupportedSpec(s *v1alpha1.HAGroupSpec, c *config.Config) string {
	var bad []string
	check := func(field, flag, got, want string) {
		if got != "" && got != want {
			bad = append(bad, fmt.Sprintf("spec.%s %q differs from the controller's -%s %q", field, got, flag, want))
		}
	}
	check("roleLabel", "role-label", s.RoleLabel, c.RoleLabel)
	check("activeValue", "active-value", s.ActiveValue, c.ActiveValue)
	check("standbyValue", "standby-value", s.StandbyValue, c.StandbyValue)
	check("criticalEnv", "critical-env", s.CriticalEnv, c.CriticalEnv)
	check("criticalValue", "critical-value", s.CriticalValue, c.CriticalValue)
	if s.RolePort != 0 {
		check("rolePort", "role-port", fmt.Sprint(s.RolePort), fmt.Sprint(c.RolePort))
	}
	if s.LeaseTTL != nil {
		check("leaseTTL", "lease-ttl", s.LeaseTTL.Duration.String(), c.LeaseTTL.String())
	}
	if len(bad) == 0 {
		return ""
	}
	return strings.Join(bad, "; ") + ": one controller serves one shape of pod; the group is paused until the spec matches (or run a controller with those flags for it)"
}

// switchoverRequest returns the spec's switchover request if it has not
// been carried out yet: not the one the status (or memory) reports
// finished, and not the one the active pod was promoted for (a restart
// between the switch and the status write).
func switchoverRequest(hg *v1alpha1.HAGroup, g *groupState, active *corev1.Pod) *v1alpha1.SwitchoverRequest {
	if hg == nil || hg.Spec.Switchover == nil {
		return nil
	}
	id := hg.Spec.Switchover.ID
	for _, s := range []*v1alpha1.SwitchoverStatus{g.switchover, hg.Status.Switchover} {
		if s != nil && s.ID == id && (s.Phase == v1alpha1.SwitchoverSucceeded || s.Phase == v1alpha1.SwitchoverFailed) {
			return nil
		}
	}
	if active != nil && active.Annotations[role.SwitchoverAnnotation] == id {
		return nil
	}
	return hg.Spec.Switchover
}

// decisionInput is the election input of a group with policy pol, and
// the switchover request (if any) it carries out.
func (r *Reconciler) decisionInput(pol policy, g *groupState, members []member, now time.Time) (election.Input, *v1alpha1.SwitchoverRequest) {
	in := election.Input{Roles: r.roles, Epoch: g.epoch, Now: now, Paused: pol.paused, SwitchoverOnCordon: pol.onCordon}
	swReq := switchoverRequest(pol.obj, g, activeOf(members, r.roles.Active))
	if swReq != nil && !pol.paused {
		in.Switchover = &election.Switchover{To: swReq.To}
	}
	return in, swReq
}

// gatePlanned runs the lease gate (gateLease) and keeps track of a planned
// move across it: when it started (the gap), and its reason.
func (r *Reconciler) gatePlanned(ctx context.Context, req reconcile.Request, g *groupState, d election.Decision, swReq *v1alpha1.SwitchoverRequest,
	byUID map[string]*member, present map[types.UID]bool, trigger time.Time) election.Decision {
	asked := d
	if planned(asked) && (g.plannedMove == nil || g.plannedMove.from != asked.Demote[0].Member.UID) {
		g.plannedMove = &plannedMove{from: asked.Demote[0].Member.UID, reason: asked.Reason, at: r.Now()}
	}
	d = keepPlannedReason(g, r.gateLease(ctx, req, g, d, byUID, present, trigger))
	if !planned(asked) && d.Promote == nil {
		g.plannedMove = nil // the move is off (the request withdrawn, the group paused)
	}
	g.switchoverID = ""
	if swReq != nil && d.Reason == election.PlannedSwitchover {
		g.switchoverID = swReq.ID
	}
	return d
}

// gapStart is when the old active gave the role up, for a switchover's
// gap: when the lease gate told it standby, or now.
func (r *Reconciler) gapStart(g *groupState) time.Time {
	if g.plannedMove != nil {
		return g.plannedMove.at
	}
	return r.Now()
}

// noteSwitch remembers, after a promotion, the pods from before it (for
// the status's replacement), and the pods of this reconcile.
func noteSwitch(g *groupState, d election.Decision, members []member, err error) {
	if d.Promote != nil && err == nil {
		g.plannedMove = nil
		// The pods of the reconcile before: a replacement the ReplicaSet
		// made at the trigger may already be among this one's.
		g.podsAtSwitch = g.lastPods
	}
	g.lastPods = make([]string, 0, len(members))
	for _, m := range members {
		g.lastPods = append(g.lastPods, m.Name)
	}
}

// reportGroup records the switchover request's outcome and hands the
// group's view to the status writer: after the switch, and only handed
// over (the writer coalesces and writes later).
func (r *Reconciler) reportGroup(key types.NamespacedName, g *groupState, pol policy, swReq *v1alpha1.SwitchoverRequest, asked, d election.Decision, members []member, err error) {
	if swReq != nil {
		g.switchover = switchoverOutcome(swReq, g.switchover, pol.paused, podName(activeOf(members, r.roles.Active)), asked, d, err)
	}
	if pol.obj != nil {
		r.status.set(key, statusView(pol, g, members, g.switchover, r.roles.Active))
	}
}

// planned reports whether d moves the role off a healthy active on
// purpose (a switchover, a cordon).
func planned(d election.Decision) bool {
	return d.Promote != nil && len(d.Demote) > 0 && (d.Reason == election.PlannedSwitchover || d.Reason == election.NodeCordoned)
}

// switchoverOutcome is the request's state after this reconcile: asked
// is the decision before the lease gate (gateLease may hold a promotion
// back until the old active has acked standby), d the one carried out,
// err its result.
func switchoverOutcome(req *v1alpha1.SwitchoverRequest, prev *v1alpha1.SwitchoverStatus, paused bool, active string, asked, d election.Decision, err error) *v1alpha1.SwitchoverStatus {
	s := &v1alpha1.SwitchoverStatus{ID: req.ID, To: req.To}
	inFlight := prev != nil && prev.ID == req.ID && prev.Phase == v1alpha1.SwitchoverInProgress
	if inFlight {
		s.From, s.To = prev.From, prev.To
	}
	done := d.Promote != nil && err == nil
	switch {
	case paused:
		s.Phase, s.Message = v1alpha1.SwitchoverFailed, "the group is paused"
	case planned(asked) && done:
		s.Phase, s.From, s.To = v1alpha1.SwitchoverSucceeded, asked.Demote[0].Member.Name, d.Promote.Name
	case planned(asked):
		s.Phase, s.From, s.To = v1alpha1.SwitchoverInProgress, asked.Demote[0].Member.Name, asked.Promote.Name
		if err != nil {
			s.Message = err.Error()
		}
	case inFlight && done:
		// Held back by the lease gate, then carried out once the old
		// active had acked standby.
		s.Phase, s.To = v1alpha1.SwitchoverSucceeded, d.Promote.Name
	case inFlight && active != "" && active != prev.From:
		s.Phase, s.To = v1alpha1.SwitchoverSucceeded, active
	case inFlight:
		s.Phase = v1alpha1.SwitchoverInProgress
	case req.To != "" && req.To == active:
		s.Phase, s.Message = v1alpha1.SwitchoverSucceeded, "already active"
	case active == "":
		s.Phase, s.Message = v1alpha1.SwitchoverFailed, "the group has no active pod to switch from"
	case req.To != "":
		s.Phase, s.Message = v1alpha1.SwitchoverFailed, fmt.Sprintf("pod %s is not an eligible standby of the group", req.To)
	default:
		s.Phase, s.Message = v1alpha1.SwitchoverFailed, "no eligible standby"
	}
	return s
}

// keepPlannedReason carries a planned move across the lease gate. The
// gate tells the old active standby and holds the promotion until it
// acks; by the next reconcile the old active's lease has ended (it
// refuses renewals as standby), which reads as LeaseLapsed. The move is
// still the one asked for, and is reported as such.
func keepPlannedReason(g *groupState, d election.Decision) election.Decision {
	if g.plannedMove == nil || d.Promote == nil {
		return d
	}
	for _, dm := range d.Demote {
		if dm.Member.UID == g.plannedMove.from {
			d.Reason = g.plannedMove.reason
		}
	}
	return d
}

// activeOf is the pod labelled active (the first, if a duplicate is
// being demoted), nil if none.
func activeOf(members []member, activeRole string) *corev1.Pod {
	for _, m := range members {
		if m.Role == activeRole {
			return m.pod
		}
	}
	return nil
}

func podName(p *corev1.Pod) string {
	if p == nil {
		return ""
	}
	return p.Name
}

// failoverStatus is one promotion's timeline for the HAGroup status.
func failoverStatus(pod string, epoch uint64, p *promotion, res notify.Result, acked, labelled time.Time, result string) v1alpha1.FailoverStatus {
	f := v1alpha1.FailoverStatus{
		Time: metav1.NewTime(p.trigger), Reason: string(p.reason), From: p.replaced, To: pod,
		Epoch: int64(epoch), AckStatus: result, //nolint:gosec // epochs stop at 2^31-1
	}
	if res.Acked {
		f.AckMs = ptr.To(acked.Sub(p.trigger).Milliseconds())
	}
	if !labelled.IsZero() {
		f.LabelMs = ptr.To(labelled.Sub(p.trigger).Milliseconds())
	}
	return f
}

// switchoverGap is a planned switchover's time without an active app:
// from the old active fenced to the new one's ack; 0 if not measured.
func switchoverGap(p *promotion, res notify.Result, acked time.Time) time.Duration {
	if p.switchoverID == "" || !res.Acked || p.fenced.IsZero() {
		return 0
	}
	return acked.Sub(p.fenced)
}

// statusView is what groupstatus.Build needs from a reconcile.
func statusView(p policy, g *groupState, members []member, sw *v1alpha1.SwitchoverStatus, activeRole string) groupstatus.View {
	v := groupstatus.View{Generation: p.obj.Generation, Epoch: g.epoch, Paused: p.paused, Unsupported: p.unsupported, Switchover: sw,
		PodsAtFailover: g.podsAtSwitch}
	for _, m := range members {
		if m.Role == activeRole && v.Active == "" {
			v.Active = m.Name
		}
		v.Pods = append(v.Pods, groupstatus.Pod{Name: m.Name, Node: m.pod.Spec.NodeName, Created: m.pod.CreationTimestamp, Status: m.Status})
	}
	return v
}

// statusWriter writes HAGroup statuses, coalesced and rate-limited, on the
// leader only. Reconcile hands it the latest view of a group (set) and the
// promotion reports hand it each failover's timeline (promoted); it writes
// each changed group once per round, at most statusQPS a second, so that a
// mass failover's status writes wait behind its label writes instead of
// competing with them.
type statusWriter struct {
	c       client.Client
	leader  *LeaderGate
	now     func() time.Time
	limiter flowcontrol.RateLimiter

	mu        sync.Mutex
	views     map[types.NamespacedName]groupstatus.View
	failovers map[types.NamespacedName][]v1alpha1.FailoverStatus
	gaps      map[string]int64 // switchover id -> gap ms
	dirty     map[types.NamespacedName]bool
	wake      chan struct{}
	// writes counts status writes, for the metric and the tests.
	writes func()
}

// statusDelay is how long a round waits after the first change so that
// the changes of a failover (the switch, the ack, the replacement) and of
// many groups failing over at once go out as one write per group.
const statusDelay = 200 * time.Millisecond

// statusQPS bounds status writes; a failover's own writes are not counted
// against it.
const statusQPS, statusBurst = 50, 50

func newStatusWriter(c client.Client, leader *LeaderGate, now func() time.Time, writes func()) *statusWriter {
	return &statusWriter{
		c: c, leader: leader, now: now, writes: writes,
		limiter:   flowcontrol.NewTokenBucketRateLimiter(statusQPS, statusBurst),
		views:     map[types.NamespacedName]groupstatus.View{},
		failovers: map[types.NamespacedName][]v1alpha1.FailoverStatus{},
		gaps:      map[string]int64{},
		dirty:     map[types.NamespacedName]bool{},
		wake:      make(chan struct{}, 1),
	}
}

func (w *statusWriter) signal(key types.NamespacedName) {
	w.dirty[key] = true
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// set records the group's latest view; a view equal to the last one
// writes nothing.
func (w *statusWriter) set(key types.NamespacedName, v groupstatus.View) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if old, ok := w.views[key]; ok && reflect.DeepEqual(old, v) {
		return
	}
	w.views[key] = v
	w.signal(key)
}

// promoted records one promotion's timeline, and for a planned switchover
// its gap: from the old active's ack of standby to the new one's of active.
func (w *statusWriter) promoted(key types.NamespacedName, f v1alpha1.FailoverStatus, switchoverID string, gap time.Duration) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if _, ok := w.views[key]; !ok {
		return // a group without an HAGroup has no status to write it to
	}
	w.failovers[key] = append([]v1alpha1.FailoverStatus{f}, w.failovers[key]...)
	if switchoverID != "" && gap > 0 {
		w.gaps[switchoverID] = gap.Milliseconds()
	}
	w.signal(key)
}

// NeedLeaderElection: statuses are written by the leader only.
func (w *statusWriter) NeedLeaderElection() bool { return true }

// Start writes statuses until ctx ends.
func (w *statusWriter) Start(ctx context.Context) error {
	timer := time.NewTimer(statusDelay)
	timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-w.wake:
		}
		timer.Reset(statusDelay)
		select {
		case <-ctx.Done():
			return nil
		case <-timer.C:
		}
		w.round(ctx)
	}
}

// round writes every group changed since the last round.
func (w *statusWriter) round(ctx context.Context) {
	w.mu.Lock()
	keys := make([]types.NamespacedName, 0, len(w.dirty))
	for k := range w.dirty {
		keys = append(keys, k)
	}
	clear(w.dirty)
	w.mu.Unlock()
	for _, key := range keys {
		if err := w.limiter.Wait(ctx); err != nil {
			return
		}
		if err := w.write(ctx, key); err != nil {
			logf.FromContext(ctx).Info("HAGroup status not written; will retry", "group", key.String(), "err", err.Error())
			w.mu.Lock()
			w.signal(key)
			w.mu.Unlock()
		}
	}
}

func (w *statusWriter) write(ctx context.Context, key types.NamespacedName) error {
	if _, ok := w.leader.Remaining(); !ok {
		return errNotLeader
	}
	w.mu.Lock()
	v, ok := w.views[key]
	fs := w.failovers[key]
	if ok && v.Switchover != nil {
		sw := *v.Switchover
		if gap, ok := w.gaps[sw.ID]; ok {
			sw.GapMs = &gap
		}
		v.Switchover = &sw
	}
	w.mu.Unlock()
	if !ok {
		return nil
	}
	v.Failovers = fs
	var hg v1alpha1.HAGroup
	if err := w.c.Get(ctx, key, &hg); err != nil {
		return client.IgnoreNotFound(err)
	}
	next := groupstatus.Build(hg.Status, v, metav1.NewTime(w.now()))
	if reflect.DeepEqual(next, hg.Status) {
		w.consumed(key, len(fs))
		return nil
	}
	hg.Status = next
	callCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := w.c.Status().Update(callCtx, &hg, client.FieldOwner(FieldOwner)); err != nil {
		return err
	}
	w.writes()
	w.consumed(key, len(fs))
	return nil
}

// consumed drops the n failovers just written: the oldest n, since newer
// ones are prepended while a write is under way.
func (w *statusWriter) consumed(key types.NamespacedName, n int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	fs := w.failovers[key]
	if n >= len(fs) {
		delete(w.failovers, key)
		return
	}
	w.failovers[key] = fs[:len(fs)-n]
}
