package controller

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"sync"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/hapod/hapod/internal/config"
	"github.com/hapod/hapod/internal/election"
	"github.com/hapod/hapod/internal/notify"
	"github.com/hapod/hapod/internal/record"
	"github.com/hapod/hapod/pkg/role"
)

// The hapod.io/* names the controller reads and writes are in pkg/role
// (names.go), where applications find them too.
const (
	// FieldOwner is the field manager of every write.
	FieldOwner = "hapod-controller"
	managedBy  = "app.kubernetes.io/managed-by"
)

// Notifier delivers role messages; *notify.Notifier is the real one.
type Notifier interface {
	Send(ctx context.Context, t notify.Target) notify.Result
}

// Reconciler reconciles one group (namespace + group label value) per
// request. controller-runtime never runs two reconciles of the same request
// at once, which is what makes the per-group memory safe. Build it with New.
type Reconciler struct {
	Deps
	Config config.Config

	groups states
	seen   seenTimes
	// requeue re-enqueues a group from outside the watch (a failed
	// notification's retry timer).
	requeue chan event.TypedGenericEvent[reconcile.Request]
	// switches holds a slot per switch in flight (see maxSwitches).
	switches chan struct{}
	opts     election.Options
	roles    election.Roles
	// leases are the active pods' role leases and their renewal loop
	// (lease.go).
	leases *leases
}

// Deps are what a Reconciler talks to. Client, APIReader, Recorder and
// Notifier are required; the rest have defaults.
type Deps struct {
	Client    client.Client // cached reads, direct writes
	APIReader client.Reader // uncached, for the epoch Lease
	Recorder  events.EventRecorder
	Notifier  Notifier
	// Metrics defaults to a set registered nowhere.
	Metrics *Metrics
	// Now is the clock; default time.Now.
	Now func() time.Time
	// OnPromotion, if set, is called once per promotion when the new
	// active's ack arrived or its notification gave up (from a background
	// goroutine): the failover record stream (-failover-records) and tests
	// read the timings from it.
	OnPromotion func(record.Record)
}

// New returns a Reconciler ready to be set up with a manager (or called
// directly, as the unit tests do).
func New(cfg config.Config, d Deps) *Reconciler {
	if d.Now == nil {
		d.Now = time.Now
	}
	if d.Metrics == nil {
		d.Metrics = NewMetrics(nil)
	}
	r := &Reconciler{
		Deps:     d,
		Config:   cfg,
		requeue:  make(chan event.TypedGenericEvent[reconcile.Request], 1024),
		switches: make(chan struct{}, maxSwitches),
		opts: election.Options{
			Criticality:   election.Criticality{EnvName: cfg.CriticalEnv, EnvValue: cfg.CriticalValue},
			NotReadyGrace: cfg.NotReadyGrace,
		},
		roles: election.Roles{Active: cfg.ActiveValue, Standby: cfg.StandbyValue},
	}
	r.leases = newLeases(cfg, d, func(key types.NamespacedName, at time.Time) {
		r.seen.note(key, at)
		r.enqueue(key)
	})
	return r
}

// maxSwitches bounds the switches (a demotion and a promotion: two API
// writes in a row) in flight at once, whatever -workers is. The
// kube-apiserver serves 100 concurrent streams per HTTP/2 connection by
// default, and past that client-go opens more connections: in a benchmark
// of 1,000 groups failing over at once with 1,000 workers, TLS handshakes
// took 29% of the controller's CPU (and the API server's share of them)
// while every group's label waited behind every other group's demotion.
// The slot is taken after the new active has been told, so its ack is not
// held back, and a group with a slot finishes its switch before the next
// starts, so labels are committed in order rather than all at the end.
const maxSwitches = 64

// seenTimes remembers when an event for a group was first seen since its
// last reconcile: the start of the failover clock.
type seenTimes struct {
	mu sync.Mutex
	m  map[types.NamespacedName]time.Time
}

func (s *seenTimes) note(key types.NamespacedName, at time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = map[types.NamespacedName]time.Time{}
	}
	if _, ok := s.m[key]; !ok {
		s.m[key] = at
	}
}

func (s *seenTimes) take(key types.NamespacedName, now time.Time) time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	at, ok := s.m[key]
	if !ok {
		return now
	}
	delete(s.m, key)
	return at
}

// member pairs a pod with its election view.
type member struct {
	pod *corev1.Pod
	election.Member
}

// Reconcile brings one group to the state election.Decide asks for.
func (r *Reconciler) Reconcile(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	// Every line logged for this group carries "group".
	ctx = logf.IntoContext(ctx, logf.FromContext(ctx).WithValues("group", req.String()))
	now := r.Now()
	trigger := r.seen.take(req.NamespacedName, now)

	var pods corev1.PodList
	if err := r.Client.List(ctx, &pods, client.InNamespace(req.Namespace), client.MatchingFields{groupIndex: req.Name}); err != nil {
		return reconcile.Result{}, err
	}
	g := r.groups.get(req.NamespacedName)
	g.mu.Lock()
	defer g.mu.Unlock()
	// First of all, before anything that may fail: pods out of view are
	// renewed no more (lease.go).
	r.leases.inView(req.NamespacedName, pods.Items)
	if len(pods.Items) == 0 {
		// Nothing to manage; the Lease stays so the epoch survives.
		r.groups.drop(req.NamespacedName)
		return reconcile.Result{}, nil
	}
	if err := r.loadEpoch(ctx, req, g); err != nil {
		return reconcile.Result{}, err
	}

	members, present := r.assess(ctx, pods.Items, g, now)
	in := election.Input{Roles: r.roles, Epoch: g.epoch, Now: now}
	for _, m := range members {
		in.Members = append(in.Members, m.Member)
		in.Epoch = max(in.Epoch, m.Epoch)
	}
	d := election.Decide(in)
	if d.Promote != nil && d.Reason == election.Initial && g.active != "" && !present[g.active] {
		d.Reason = election.Gone
	}

	byUID := make(map[string]*member, len(members))
	for i := range members {
		byUID[members[i].UID] = &members[i]
	}
	d = r.gateLease(ctx, req, g, d, byUID, present, trigger)
	err := r.apply(ctx, req, g, d, byUID, trigger)
	r.notifyAll(ctx, req, g, d, members)
	g.forget(present)
	if err == nil && g.epoch >= g.reserved && g.active != "" {
		// Keep a reserve so that the next failover needs no Lease write.
		err = r.reserveEpochs(ctx, req, g, g.activeName, g.epoch+epochBlock)
	}
	if err != nil {
		// Returned, not logged: controller-runtime logs it once, with the
		// group, and requeues with backoff.
		return reconcile.Result{}, fmt.Errorf("group not settled, will retry: %w", err)
	}
	return reconcile.Result{RequeueAfter: d.RequeueAfter}, nil
}

// loadEpoch reads the group's Lease once after start, or again after a
// conflict showed that the memory was out of date.
func (r *Reconciler) loadEpoch(ctx context.Context, req reconcile.Request, g *groupState) error {
	if g.loaded {
		return nil
	}
	var lease coordinationv1.Lease
	err := r.APIReader.Get(ctx, types.NamespacedName{Namespace: req.Namespace, Name: LeaseName(r.Config.LeasePrefix, req.Name)}, &lease)
	switch {
	case apierrors.IsNotFound(err):
		g.lease, g.epoch, g.reserved = nil, 0, 0
	case err != nil:
		return fmt.Errorf("reading epoch lease: %w", err)
	default:
		g.lease = &lease
		if lease.Spec.LeaseTransitions != nil {
			// Every reserved epoch may have been handed out before a
			// restart: continue after the whole reservation.
			g.reserved = uint64(*lease.Spec.LeaseTransitions)
			g.epoch = g.reserved
		}
		if lease.Spec.HolderIdentity != nil && g.activeName == "" {
			g.activeName = *lease.Spec.HolderIdentity
		}
	}
	g.loaded = true
	return nil
}

// assess builds the election view of every pod, overlaying the controller's
// own recent label writes where the cache has not caught up.
func (r *Reconciler) assess(ctx context.Context, pods []corev1.Pod, g *groupState, now time.Time) ([]member, map[types.UID]bool) {
	members := make([]member, 0, len(pods))
	present := make(map[types.UID]bool, len(pods))
	for i := range pods {
		pod := &pods[i]
		present[pod.UID] = true
		var node *corev1.Node
		if r.Config.WatchNodes && pod.Spec.NodeName != "" {
			var n corev1.Node
			if err := r.Client.Get(ctx, types.NamespacedName{Name: pod.Spec.NodeName}, &n); err == nil {
				node = &n
			}
		}
		st := election.Assess(pod, node, now, r.opts)
		if w := (warning{pod.UID, ReasonUnknownCriticality}); len(st.UnknownCriticality) > 0 && !g.warned[w] {
			g.warned[w] = true
			r.Recorder.Eventf(pod, nil, corev1.EventTypeWarning, ReasonUnknownCriticality, "Assess",
				"containers %v set %s to a value other than %q; treated as non-critical",
				st.UnknownCriticality, r.Config.CriticalEnv, r.Config.CriticalValue)
		}
		m := member{pod: pod, Member: election.Member{
			Name: pod.Name, UID: string(pod.UID), Created: pod.CreationTimestamp.Time,
			Role: pod.Labels[r.Config.RoleLabel], Epoch: podEpoch(pod), Status: st,
		}}
		if w, ok := g.written[pod.UID]; ok {
			if m.Role == w.role || now.Sub(w.at) > writtenTTL {
				delete(g.written, pod.UID)
			} else {
				m.Role, m.Epoch = w.role, max(m.Epoch, w.epoch)
			}
		}
		m.Status = r.leaseStatus(pod, node, m.Role, m.Status)
		st = m.Status
		if m.Role == r.roles.Active && st.Fault == election.NoFault {
			g.active, g.activeName = pod.UID, pod.Name
		}
		members = append(members, m)
	}
	return members, present
}

func podEpoch(pod *corev1.Pod) uint64 {
	e, err := strconv.ParseUint(pod.Annotations[role.EpochAnnotation], 10, 64)
	if err != nil {
		return 0
	}
	return e
}

// apply writes a decision: demotions and the epoch Lease first, then the
// promotion, then standby labels and deletions.
func (r *Reconciler) apply(ctx context.Context, req reconcile.Request, g *groupState, d election.Decision, byUID map[string]*member, trigger time.Time) error {
	if d.Promote != nil || len(d.Demote) > 0 {
		if err := r.switchActive(ctx, req, g, d, byUID, trigger); err != nil {
			return err
		}
	}
	if d.NoCandidate && g.noStandbyAt != g.epoch+1 {
		g.noStandbyAt = g.epoch + 1
		r.Metrics.NoStandby.Inc()
		if m := anyMember(d, byUID); m != nil {
			r.Recorder.Eventf(m.pod, nil, corev1.EventTypeWarning, ReasonNoStandbyReady, "Elect",
				"group %s has no active pod and no Ready standby; the first standby to become Ready will be promoted", req.Name)
		}
	}

	var standby []*member
	for _, s := range d.LabelStandby {
		standby = append(standby, byUID[s.UID])
	}
	var errs []error
	if err := r.setStandby(ctx, g, standby); err != nil {
		errs = append(errs, err)
	}
	for _, del := range d.Delete {
		m := byUID[del.UID]
		if err := r.deleteDoomed(ctx, m); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// switchActive demotes and promotes. The new active is told first (its
// epoch is already reserved), then the old active's label is removed, and
// only then is the new one labelled, so that the Service never selects two
// pods.
func (r *Reconciler) switchActive(ctx context.Context, req reconcile.Request, g *groupState, d election.Decision, byUID map[string]*member, trigger time.Time) error {
	log := logf.FromContext(ctx)
	var promo *promotion
	var m *member
	if d.Promote != nil {
		// Epochs come from a block reserved in the Lease ahead of time, so
		// a failover normally writes nothing before telling the new active;
		// the reservation is the epoch's durable home.
		if d.Epoch > g.reserved {
			if err := r.reserveEpochs(ctx, req, g, d.Promote.Name, d.Epoch+epochBlock-1); err != nil {
				return err
			}
		}
		g.epoch = d.Epoch
		m = byUID[d.Promote.UID]
		// The app is told at once, while the old active's label is removed
		// and its own label written; the old active is told "standby" with
		// the same new epoch, which fences it.
		promo = newPromotion(trigger, d.Reason, g.activeName)
		r.startNotify(ctx, req, g, m, r.roles.Active, d.Epoch, promo)
	}
	if r.switches != nil {
		select {
		case r.switches <- struct{}{}:
			defer func() { <-r.switches }()
		case <-ctx.Done():
			if promo != nil {
				promo.finishLabel(time.Time{})
			}
			return ctx.Err()
		}
	}
	var demote []*member
	for _, dm := range d.Demote {
		demote = append(demote, byUID[dm.Member.UID])
	}
	if err := r.setStandby(ctx, g, demote); err != nil {
		if promo != nil {
			promo.finishLabel(time.Time{})
		}
		return err
	}
	for _, dm := range d.Demote {
		r.Metrics.Demotions.Inc()
		why := string(dm.Reason)
		if why == "" {
			why = "DuplicateActive"
		}
		log.Info("Demoted", "pod", dm.Member.Name, "reason", why, "epoch", g.epoch)
		// A failover's Event is the new active's Promoted, which names this
		// pod and the reason: one Event per failover instead of two halves
		// the Event writes of a mass failover (a quarter of its requests).
		if m := byUID[dm.Member.UID]; m != nil && d.Promote == nil {
			r.Recorder.Eventf(m.pod, nil, corev1.EventTypeNormal, ReasonDemoted, "Demote", "no longer active (%s)", why)
		}
	}
	if d.Promote == nil {
		return nil
	}

	old := g.activeName
	if err := r.patchRole(ctx, m.pod, r.roles.Active, d.Epoch); err != nil {
		promo.finishLabel(time.Time{})
		return fmt.Errorf("promoting %s: %w", m.Name, err)
	}
	labelled := r.Now()
	promo.finishLabel(labelled)
	g.written[m.pod.UID] = written{role: r.roles.Active, epoch: d.Epoch, at: labelled}
	g.active, g.activeName = m.pod.UID, m.Name
	m.Role = r.roles.Active
	r.Metrics.Promotions.WithLabelValues(string(d.Reason)).Inc()
	r.Metrics.FailoverSeconds.WithLabelValues("label").Observe(labelled.Sub(trigger).Seconds())
	log.Info("Promoted", "pod", m.Name, "epoch", d.Epoch, "reason", d.Reason, "replaced", old,
		"labelMs", msFloat(labelled.Sub(trigger)))
	return nil
}

// epochBlock is how many epochs one Lease write reserves. A restart skips
// what was reserved and unused, which keeps epochs increasing.
const epochBlock = 8

// setStandby labels pods standby, all at once. A pod already gone is fine:
// it selects nothing.
func (r *Reconciler) setStandby(ctx context.Context, g *groupState, ms []*member) error {
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	for _, m := range ms {
		wg.Go(func() {
			err := r.patchRole(ctx, m.pod, r.roles.Standby, 0)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case apierrors.IsNotFound(err):
			case err != nil:
				errs = append(errs, fmt.Errorf("labelling %s standby: %w", m.Name, err))
			default:
				g.written[m.pod.UID] = written{role: r.roles.Standby, at: r.Now()}
				m.Role = r.roles.Standby
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// reserveEpochs records in the group's Lease that epochs up to upTo may be
// handed out. Optimistic concurrency: a conflict means another writer (a
// previous leader) moved the epoch, so the memory is dropped and the group
// reconciled afresh.
func (r *Reconciler) reserveEpochs(ctx context.Context, req reconcile.Request, g *groupState, holder string, upTo uint64) error {
	now := metav1.NewMicroTime(r.Now())
	transitions := int32(min(upTo, uint64(1<<31-1)))
	var lease *coordinationv1.Lease
	var err error
	if g.lease == nil {
		lease = &coordinationv1.Lease{
			ObjectMeta: metav1.ObjectMeta{
				Name: LeaseName(r.Config.LeasePrefix, req.Name), Namespace: req.Namespace,
				Labels: map[string]string{managedBy: FieldOwner, role.GroupLabel: req.Name},
			},
		}
		lease.Spec = coordinationv1.LeaseSpec{HolderIdentity: &holder, LeaseTransitions: &transitions, AcquireTime: &now, RenewTime: &now}
		err = r.Client.Create(ctx, lease, client.FieldOwner(FieldOwner))
	} else {
		lease = g.lease.DeepCopy()
		lease.Spec.HolderIdentity, lease.Spec.LeaseTransitions = &holder, &transitions
		lease.Spec.RenewTime = &now
		err = r.Client.Update(ctx, lease, client.FieldOwner(FieldOwner))
	}
	if err != nil {
		if apierrors.IsConflict(err) || apierrors.IsAlreadyExists(err) {
			g.loaded = false
		}
		return fmt.Errorf("reserving epochs in lease: %w", err)
	}
	g.lease, g.reserved = lease, uint64(transitions)
	return nil
}

// patchRole sets the role label (and, for a promotion, the epoch). The uid
// in the patch makes it fail rather than touch a same-named successor.
func (r *Reconciler) patchRole(ctx context.Context, pod *corev1.Pod, value string, epoch uint64) error {
	meta := map[string]any{
		"uid":    pod.UID,
		"labels": map[string]string{r.Config.RoleLabel: value},
	}
	if epoch > 0 {
		meta["annotations"] = map[string]string{role.EpochAnnotation: strconv.FormatUint(epoch, 10)}
	}
	data, err := json.Marshal(map[string]any{"metadata": meta})
	if err != nil {
		return err
	}
	target := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: pod.Name, Namespace: pod.Namespace}}
	return r.Client.Patch(ctx, target, client.RawPatch(types.MergePatchType, data), client.FieldOwner(FieldOwner))
}

// deleteDoomed deletes a pod whose critical container died, so that its
// controller replaces it instead of the kubelet restarting the container.
func (r *Reconciler) deleteDoomed(ctx context.Context, m *member) error {
	death := m.Status.Death
	err := r.Client.Delete(ctx, m.pod, client.Preconditions{UID: &m.pod.UID})
	if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
		return nil // gone, or already replaced by a same-named pod
	}
	if err != nil {
		return fmt.Errorf("deleting %s: %w", m.Name, err)
	}
	r.Metrics.CriticalDeletions.Inc()
	logf.FromContext(ctx).Info("Deleted pod whose critical container died", "pod", m.Name,
		"container", death.Container, "exitCode", death.ExitCode, "reason", death.Reason)
	r.Recorder.Eventf(m.pod, nil, corev1.EventTypeWarning, ReasonCriticalContainerDied, "Delete",
		"critical container %s died (exit code %d, reason %s); pod deleted so that it is replaced",
		death.Container, death.ExitCode, death.Reason)
	return nil
}

func anyMember(d election.Decision, byUID map[string]*member) *member {
	if len(d.Demote) > 0 {
		return byUID[d.Demote[0].Member.UID]
	}
	for _, m := range byUID {
		return m
	}
	return nil
}

func ms(d time.Duration) string {
	return strconv.FormatFloat(msFloat(d), 'f', 2, 64)
}

// msFloat is a duration in milliseconds, for log values that tools read
// as numbers.
func msFloat(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// podAddr is where the pod's role listener is: the address in the
// role.RoleAddressAnnotation if the pod has one, else the pod IP and the role
// port.
func (r *Reconciler) podAddr(pod *corev1.Pod) (netip.AddrPort, bool) {
	if a, ok := pod.Annotations[role.RoleAddressAnnotation]; ok {
		return parseRoleAddress(a, uint16(r.Config.RolePort))
	}
	ip, err := netip.ParseAddr(pod.Status.PodIP)
	if err != nil {
		return netip.AddrPort{}, false
	}
	return netip.AddrPortFrom(ip, uint16(r.Config.RolePort)), true
}

// parseRoleAddress accepts "ip" or "ip:port".
func parseRoleAddress(s string, defaultPort uint16) (netip.AddrPort, bool) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap, ap.Port() != 0
	}
	if ip, err := netip.ParseAddr(s); err == nil {
		return netip.AddrPortFrom(ip, defaultPort), true
	}
	return netip.AddrPort{}, false
}
