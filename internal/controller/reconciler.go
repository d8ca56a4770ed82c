package controller

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
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
	// watching sets opts.WatchingSince at the first reconcile: only deaths
	// after it (or recent ones) doom a pod.
	watching sync.Once
	// leases are the active pods' role leases and their renewal loop
	// (lease.go).
	leases *leases
	// status writes HAGroup statuses (hagroup.go).
	status *statusWriter
	// promotionEvents bounds the promotions' Events (eventbudget.go).
	promotionEvents *promotionEvents
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
	// Leader gates every write and role message on this replica still
	// certainly being the leader; nil (no leader election) is always open.
	Leader *LeaderGate
	// OnPromotion, if set, is called once per promotion when the new
	// active's ack arrived or its notification gave up (from a background
	// goroutine): the failover record stream (-failover-records) and tests
	// read the timings from it.
	OnPromotion func(record.Record)
	// SendPlain sends plain-mode datagrams (plain.go); default
	// notify.SendPlain.
	SendPlain func(context.Context, notify.Plain) (int, error)
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
	if d.SendPlain == nil {
		d.SendPlain = notify.SendPlain
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
	r.promotionEvents = newPromotionEvents(d.Recorder, d.Metrics.EventsHeld)
	r.status = newStatusWriter(d.Client, d.Leader, d.Now, d.Metrics.StatusWrites.Inc)
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
	if _, ok := r.Leader.Remaining(); !ok {
		// A replica that may have lost its leadership decides nothing:
		// every write and message would be refused anyway.
		return reconcile.Result{}, errNotLeader
	}
	now := r.Now()
	trigger := r.seen.take(req.NamespacedName, now)
	r.watching.Do(func() { r.opts.WatchingSince = now })

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
	pol := r.policyOf(r.haGroup(ctx, req.NamespacedName))
	if len(pods.Items) == 0 {
		if pol.obj != nil {
			r.status.set(req.NamespacedName, statusView(pol, g, nil, g.switchover, r.roles.Active))
		}
		// Nothing to manage; the Lease stays so the epoch survives.
		if g.pending != nil {
			g.pending.promo.finishLabel(time.Time{})
			g.pending = nil
		}
		r.groups.drop(req.NamespacedName)
		return reconcile.Result{}, nil
	}
	if err := r.loadEpoch(ctx, req, g, pods.Items); err != nil {
		return reconcile.Result{}, err
	}

	opts := r.opts
	if pol.notReadyGrace > 0 {
		opts.NotReadyGrace = pol.notReadyGrace
	}
	members, present := r.assess(ctx, pods.Items, g, now, opts)
	r.confirmPending(g, members, now)
	in, swReq := r.decisionInput(pol, g, members, now)
	for _, m := range members {
		in.Members = append(in.Members, m.Member)
		in.Epoch = max(in.Epoch, m.Epoch)
	}
	d := election.Decide(in)
	if d.Promote != nil && d.Reason == election.Initial && g.active != "" && !present[g.active] {
		d.Reason = election.Gone
	}
	if d.Promote != nil && d.Epoch > maxEpoch {
		return reconcile.Result{}, r.epochsExhausted(req, g, members, d.Epoch)
	}

	byUID := make(map[string]*member, len(members))
	for i := range members {
		byUID[members[i].UID] = &members[i]
	}
	asked := d
	d = r.gatePlanned(ctx, req, g, d, swReq, byUID, present, trigger)
	err := r.apply(ctx, req, g, d, byUID, trigger)
	noteSwitch(g, d, members, err)
	r.notifyAll(ctx, req, g, d, members)
	g.forget(present)
	r.reportGroup(req.NamespacedName, g, pol, swReq, asked, d, members, err)
	if err == nil && g.epoch >= g.reserved && g.active != "" {
		// Keep a reserve so that the next failover needs no Lease write.
		err = r.reserveEpochs(ctx, req, g, g.activeName, g.epoch+epochBlock)
	}
	if ra := (*retryAfter)(nil); errors.As(err, &ra) && ra.after > 0 {
		logf.FromContext(ctx).Info("Switch waits", "reason", ra.err.Error(), "retryAfterMs", msFloat(ra.after))
		return reconcile.Result{RequeueAfter: ra.after}, nil
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
//
// A Lease that is not there is either a new group's or one deleted (by
// hand, or by a cleanup) while its reservation may still have been in use.
// Either way the epoch continues above everything known: what memory holds
// and the highest epoch any pod carries (hapod.io/epoch). A group with such
// a history also skips one whole block, because the lost reservation may
// have covered an epoch an app was told but whose annotation was never
// written; reusing it would have two apps hold "active" at one epoch (or
// an app refuse the promotion as stale). A new group (no epoch anywhere)
// starts at 1.
func (r *Reconciler) loadEpoch(ctx context.Context, req reconcile.Request, g *groupState, pods []corev1.Pod) error {
	if g.loaded {
		return nil
	}
	var lease coordinationv1.Lease
	err := r.APIReader.Get(ctx, types.NamespacedName{Namespace: req.Namespace, Name: LeaseName(r.Config.LeasePrefix, req.Name)}, &lease)
	switch {
	case apierrors.IsNotFound(err):
		known := max(g.epoch, g.reserved)
		for i := range pods {
			known = max(known, podEpoch(&pods[i]))
		}
		floor := epochAfterLostLease(known)
		if floor > 0 {
			logf.FromContext(ctx).Info("Epoch lease missing; continuing above the epochs known", "epoch", floor)
		}
		g.lease, g.epoch, g.reserved = nil, floor, floor
	case err != nil:
		return fmt.Errorf("reading epoch lease: %w", err)
	default:
		g.lease = &lease
		if t := lease.Spec.LeaseTransitions; t != nil {
			if *t < 0 {
				// hapod never writes one (reserveEpochs stops at
				// maxEpoch); guessing would risk reusing epochs.
				return fmt.Errorf("epoch lease %s holds a negative epoch %d; fix or delete it", lease.Name, *t)
			}
			// Every reserved epoch may have been handed out before a
			// restart: continue after the whole reservation.
			g.reserved = max(uint64(*t), g.reserved)
			g.epoch = max(g.reserved, g.epoch)
		}
		if lease.Spec.HolderIdentity != nil && g.activeName == "" {
			g.activeName = *lease.Spec.HolderIdentity
		}
	}
	g.loaded = true
	return nil
}

// epochAfterLostLease is the epoch handed out last, as far as anyone must
// assume, when the Lease is missing and known is the highest epoch in memory
// or on a pod: known plus the one block the lost Lease may have reserved
// beyond it; 0 (the next epoch is 1) for a group without any history.
func epochAfterLostLease(known uint64) uint64 {
	if known == 0 {
		return 0
	}
	return known + epochBlock
}

// epochsExhausted reports (the Event once per pod) that the next promotion
// would need an epoch beyond what the Lease can hold. Wrapping would
// restart epochs below what apps hold, so they would refuse every
// promotion (or, worse, a stale active would win): the group stays as it
// is and the error is returned for the retry log. Starting again needs new
// pods (apps that forgot their epochs) and the Lease deleted.
func (r *Reconciler) epochsExhausted(req reconcile.Request, g *groupState, members []member, epoch uint64) error {
	err := fmt.Errorf("group needs epoch %d, beyond the Lease's limit %d: no promotion", epoch, uint64(maxEpoch))
	if len(members) > 0 {
		m := &members[0]
		if w := (warning{m.pod.UID, ReasonEpochsExhausted}); !g.warned[w] {
			g.warned[w] = true
			r.Recorder.Eventf(m.pod, nil, corev1.EventTypeWarning, ReasonEpochsExhausted, "Elect",
				"group %s needs epoch %d, beyond the limit %d of its Lease; no pod is promoted", req.Name, epoch, uint64(maxEpoch))
		}
	}
	return err
}

// assess builds the election view of every pod, overlaying the controller's
// own recent label writes where the cache has not caught up.
func (r *Reconciler) assess(ctx context.Context, pods []corev1.Pod, g *groupState, now time.Time, opts election.Options) ([]member, map[types.UID]bool) {
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
		st := election.Assess(pod, node, now, opts)
		if w := (warning{pod.UID, ReasonUnknownCriticality}); len(st.UnknownCriticality) > 0 && !g.warned[w] {
			g.warned[w] = true
			r.Recorder.Eventf(pod, nil, corev1.EventTypeWarning, ReasonUnknownCriticality, "Assess",
				"containers %v set %s to a value other than %q; treated as non-critical",
				st.UnknownCriticality, r.Config.CriticalEnv, r.Config.CriticalValue)
		}
		if w := (warning{pod.UID, ReasonUnreadableCriticality}); len(st.UnreadableCriticality) > 0 && !g.warned[w] {
			g.warned[w] = true
			r.Recorder.Eventf(pod, nil, corev1.EventTypeWarning, ReasonUnreadableCriticality, "Assess",
				"containers %v may set %s through valueFrom or envFrom, which the controller cannot read; treated as non-critical (set it as a literal value)",
				st.UnreadableCriticality, r.Config.CriticalEnv)
		}
		if w := (warning{pod.UID, ReasonCriticalRestartPolicy}); len(st.RestartsInPlace) > 0 && !g.warned[w] {
			g.warned[w] = true
			r.Recorder.Eventf(pod, nil, corev1.EventTypeWarning, ReasonCriticalRestartPolicy, "Assess",
				"critical containers %v may be restarted in place by the kubelet when they die, before hapod fails the pod over and deletes it; set restartPolicy: Never on them",
				st.RestartsInPlace)
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
			g.active, g.activeName, g.activePod = pod.UID, pod.Name, pod
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
	var switchErr error
	if d.Promote != nil || len(d.Demote) > 0 {
		switchErr = r.switchActive(ctx, req, g, d, byUID, trigger)
		// A switch waiting for a plain-mode active's end goes on with the
		// deletions: deleting a doomed old active is what ends it.
		if switchErr != nil && !errors.Is(switchErr, errPlainWait) {
			return switchErr
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
	if len(errs) == 0 {
		return switchErr
	}
	return errors.Join(append(errs, switchErr)...)
}

// switchActive moves the active role (or, without a promotion, demotes
// duplicate actives). The order is what keeps two apps from being active:
//
//	(a) every other pod that may hold active (labelled active, or its app
//	    told active) is told standby at the new epoch, and the switch waits
//	    briefly (-demote-ack-timeout) for the acks; one that did not ack
//	    must be fenced otherwise (oldActiveFenced);
//	(b) the new active is told active at the new epoch, at once: its epoch
//	    comes from a block already reserved in the Lease (in plain mode
//	    only after (c), plain.go);
//	(c) the old actives are labelled standby, and only then the new one
//	    active, each write with a deadline, so that the Service never
//	    selects two pods.
//
// Every API write and UDP send checks that this replica is still certainly
// the leader. A switch cut short stays pending (g.pending): its retry
// promotes the same pod at the same epoch, so retries neither hand out new
// epochs nor tell two pods active at one epoch.
func (r *Reconciler) switchActive(ctx context.Context, req reconcile.Request, g *groupState, d election.Decision, byUID map[string]*member, trigger time.Time) error {
	if d.Promote == nil {
		return r.demoteDuplicates(ctx, g, d, byUID)
	}
	m := byUID[d.Promote.UID]
	epoch := d.Epoch
	if p := g.pending; p != nil && p.uid == m.pod.UID {
		epoch = p.epoch
	} else if epoch > g.reserved {
		// Epochs come from a block reserved in the Lease ahead of time, so
		// a failover normally writes nothing before telling the apps; the
		// reservation is the epoch's durable home.
		leaseCtx, cancel, err := r.callCtx(ctx, r.Config.APITimeout)
		if err != nil {
			return err
		}
		err = r.reserveEpochs(leaseCtx, req, g, d.Promote.Name, d.Epoch+epochBlock-1)
		cancel()
		if err != nil {
			return err
		}
	}
	// The epoch counts as handed out from the first message that carries it.
	g.epoch = max(g.epoch, epoch)

	olds := r.fenceTargets(g, byUID, m)
	if err := r.fenceOldActives(ctx, req, g, olds); err != nil { // (a)
		return err
	}
	fenced := r.gapStart(g)
	if b := r.plainBlocker(g, maps.Values(byUID), m); b != nil {
		r.reportStuck(g, b, epoch, plainStuck, nil)
		return &retryAfter{after: r.Config.NotifyRetry, err: fmt.Errorf("pod %s: %w", b.Name, errPlainWait)}
	}
	plain := isPlain(m.pod)

	p := g.pending
	if p == nil || p.uid != m.pod.UID {
		if p != nil {
			// Another pod's unfinished promotion is abandoned: its app was
			// just told standby at this higher epoch, in (a).
			p.promo.finishLabel(time.Time{})
		}
		p = &pending{uid: m.pod.UID, name: m.Name, epoch: epoch, promo: newPromotion(trigger, d.Reason, g.activeName)}
		g.pending = p
	}
	if p.promo.fenced.IsZero() {
		p.promo.fenced, p.promo.switchoverID = fenced, g.switchoverID
	}
	if _, ok := r.Leader.Remaining(); !ok {
		return errNotLeader
	}
	if t := g.told[m.pod.UID]; !plain && (t == nil || t.role != r.roles.Active || t.epoch != epoch || (!t.inflight && !t.acked)) { // (b)
		promo := p.promo
		if p.reported {
			promo = nil // the first send reports the promotion; a retry only repeats the message
		}
		p.reported = true
		r.startNotify(ctx, req, g, m, r.roles.Active, epoch, promo)
	}

	if r.switches != nil { // (c)
		select {
		case r.switches <- struct{}{}:
			defer func() { <-r.switches }()
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	var relabel []*member
	for _, o := range olds {
		if o.Status.Fault != election.Gone {
			relabel = append(relabel, o)
		}
	}
	if err := r.setStandby(ctx, g, relabel); err != nil {
		r.reportStuck(g, relabel[0], epoch, "the old active could not be labelled standby", err)
		return err
	}
	// A failover's Event is the new active's Promoted, which names the
	// replaced pod and the reason: one Event per failover instead of two
	// halves the Event writes of a mass failover.
	for _, o := range olds {
		r.Metrics.Demotions.Inc()
		logf.FromContext(ctx).Info("Demoted", "pod", o.Name, "reason", demotionReason(d, o), "epoch", epoch)
	}

	old := p.promo.replaced
	if err := r.writeRole(ctx, m.pod, r.roles.Active, epoch, g.switchoverID); err != nil {
		r.reportStuck(g, m, epoch, "the new active could not be labelled active", err)
		return fmt.Errorf("promoting %s: %w", m.Name, err)
	}
	labelled := r.Now()
	g.pending = nil
	p.promo.finishLabel(labelled)
	g.written[m.pod.UID] = written{role: r.roles.Active, epoch: epoch, at: labelled}
	g.active, g.activeName, g.activePod = m.pod.UID, m.Name, m.pod
	m.Role, m.Epoch = r.roles.Active, epoch
	if plain {
		// Told only now that the label is written: a plain app cannot
		// be told to give the role back if the switch were abandoned.
		r.tellPlain(ctx, req, g, m, epoch, p.promo)
	}
	r.Metrics.Promotions.WithLabelValues(string(d.Reason)).Inc()
	r.Metrics.FailoverSeconds.WithLabelValues("label").Observe(labelled.Sub(p.promo.trigger).Seconds())
	logf.FromContext(ctx).Info("Promoted", "pod", m.Name, "epoch", epoch, "reason", d.Reason, "replaced", old,
		"labelMs", msFloat(labelled.Sub(p.promo.trigger)))
	return nil
}

// demoteDuplicates labels standby the actives a decision demotes without
// promoting anyone (the kept active stays): the apps are told standby by
// notifyAll once their labels say so.
func (r *Reconciler) demoteDuplicates(ctx context.Context, g *groupState, d election.Decision, byUID map[string]*member) error {
	var demote []*member
	for _, dm := range d.Demote {
		demote = append(demote, byUID[dm.Member.UID])
	}
	if err := r.setStandby(ctx, g, demote); err != nil {
		return err
	}
	for _, o := range demote {
		why := demotionReason(d, o)
		r.Metrics.Demotions.Inc()
		logf.FromContext(ctx).Info("Demoted", "pod", o.Name, "reason", why, "epoch", g.epoch)
		r.Recorder.Eventf(o.pod, nil, corev1.EventTypeNormal, ReasonDemoted, "Demote", "no longer active (%s)", why)
	}
	return nil
}

// demotionReason is why o loses the active role, for the log.
func demotionReason(d election.Decision, o *member) string {
	if o.Status.Fault == election.Gone {
		return string(election.Gone)
	}
	for _, dm := range d.Demote {
		if dm.Member.UID == o.UID {
			if dm.Reason != "" {
				return string(dm.Reason)
			}
			return "DuplicateActive"
		}
	}
	// Not labelled active, but its app was told so: a promotion that was
	// cut short, replaced by another pod's.
	return "PromotionAbandoned"
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
			err := r.writeRole(ctx, m.pod, r.roles.Standby, 0, "")
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

// maxEpoch is the highest epoch the Lease can record: leaseTransitions is
// an int32. Epochs never wrap (see epochsExhausted).
const maxEpoch = 1<<31 - 1

// reserveEpochs records in the group's Lease that epochs up to upTo may be
// handed out (cut at maxEpoch). Optimistic concurrency: a conflict means
// another writer (a previous leader) moved the epoch, so the Lease is read
// again (loadEpoch never lowers what memory holds) and the group
// reconciled afresh. A Lease deleted under a running
// controller is recreated at once: memory holds every epoch handed out
// since it was read, so failover goes on and epochs keep increasing.
func (r *Reconciler) reserveEpochs(ctx context.Context, req reconcile.Request, g *groupState, holder string, upTo uint64) error {
	upTo = min(upTo, maxEpoch)
	if upTo <= g.reserved && g.lease != nil {
		return nil // nothing more to reserve; a promotion past maxEpoch is refused before it gets here
	}
	lease, err := r.writeLease(ctx, req, g.lease, holder, upTo)
	// An update of a deleted Lease fails with a Conflict (Leases may be
	// created by PUT, and the resourceVersion matches nothing) or NotFound.
	if g.lease != nil && (apierrors.IsConflict(err) || apierrors.IsNotFound(err)) && r.leaseGone(ctx, req) {
		logf.FromContext(ctx).Info("Epoch lease deleted; recreating it", "epoch", g.epoch, "reserved", upTo)
		lease, err = r.writeLease(ctx, req, nil, holder, max(upTo, g.reserved))
	}
	if err != nil {
		if apierrors.IsConflict(err) || apierrors.IsAlreadyExists(err) {
			g.loaded = false
		}
		return fmt.Errorf("reserving epochs in lease: %w", err)
	}
	g.lease, g.reserved = lease, uint64(*lease.Spec.LeaseTransitions)
	return nil
}

// leaseGone reports whether the group's Lease is certainly not there.
func (r *Reconciler) leaseGone(ctx context.Context, req reconcile.Request) bool {
	var lease coordinationv1.Lease
	err := r.APIReader.Get(ctx, types.NamespacedName{Namespace: req.Namespace, Name: LeaseName(r.Config.LeasePrefix, req.Name)}, &lease)
	return apierrors.IsNotFound(err)
}

// writeLease creates the Lease (old == nil) or updates old, recording
// holder and upTo (at most maxEpoch).
func (r *Reconciler) writeLease(ctx context.Context, req reconcile.Request, old *coordinationv1.Lease, holder string, upTo uint64) (*coordinationv1.Lease, error) {
	now := metav1.NewMicroTime(r.Now())
	transitions := int32(upTo)
	if old == nil {
		lease := &coordinationv1.Lease{
			ObjectMeta: metav1.ObjectMeta{
				Name: LeaseName(r.Config.LeasePrefix, req.Name), Namespace: req.Namespace,
				Labels: map[string]string{managedBy: FieldOwner, role.GroupLabel: req.Name},
			},
			Spec: coordinationv1.LeaseSpec{HolderIdentity: &holder, LeaseTransitions: &transitions, AcquireTime: &now, RenewTime: &now},
		}
		return lease, r.Client.Create(ctx, lease, client.FieldOwner(FieldOwner))
	}
	lease := old.DeepCopy()
	lease.Spec.HolderIdentity, lease.Spec.LeaseTransitions = &holder, &transitions
	lease.Spec.RenewTime = &now
	return lease, r.Client.Update(ctx, lease, client.FieldOwner(FieldOwner))
}

// patchRole sets the role label (and, for a promotion, the epoch). The uid
// in the patch makes it fail rather than touch a same-named successor.
func (r *Reconciler) patchRole(ctx context.Context, pod *corev1.Pod, value string, epoch uint64, switchoverID string) error {
	meta := map[string]any{
		"uid":    pod.UID,
		"labels": map[string]string{r.Config.RoleLabel: value},
	}
	if epoch > 0 {
		ann := map[string]string{role.EpochAnnotation: strconv.FormatUint(epoch, 10)}
		if switchoverID != "" {
			ann[role.SwitchoverAnnotation] = switchoverID
		}
		meta["annotations"] = ann
	}
	data, err := json.Marshal(map[string]any{"metadata": meta})
	if err != nil {
		return err
	}
	target := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: pod.Name, Namespace: pod.Namespace}}
	ctx, cancel, err := r.callCtx(ctx, r.Config.APITimeout)
	if err != nil {
		return err
	}
	defer cancel()
	return r.Client.Patch(ctx, target, client.RawPatch(types.MergePatchType, data), client.FieldOwner(FieldOwner))
}

// deleteDoomed deletes a pod whose critical container died, so that its
// controller replaces it instead of the kubelet restarting the container.
func (r *Reconciler) deleteDoomed(ctx context.Context, m *member) error {
	death := m.Status.Death
	callCtx, cancel, err := r.callCtx(ctx, r.Config.APITimeout)
	if err != nil {
		return err
	}
	defer cancel()
	err = r.Client.Delete(callCtx, m.pod, client.Preconditions{UID: &m.pod.UID})
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
