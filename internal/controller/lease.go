package controller

import (
	"container/heap"
	"context"
	"errors"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/hapod/hapod/internal/config"
	"github.com/hapod/hapod/internal/election"
	"github.com/hapod/hapod/internal/notify"
	"github.com/hapod/hapod/internal/wire"
)

// The role lease, controller side (docs/protocol.md has the protocol, its
// guarantee and the bound).
//
// Every pod this controller process makes active is granted a lease of
// -lease-ttl, which one goroutine renews every -lease-renew for as long as
// the pod is the group's active one: one datagram per group and interval,
// no API call, no goroutine or ticker per group. The pod's listener
// fences itself when a TTL passes without a valid renewal. Two facts follow
// that the rest of the controller uses:
//
//   - a failure signal of its own: an active whose app stops acking is
//     seen as lapsed (election.LeaseLapsed) once its lease has certainly
//     run out, about one TTL after its death, without waiting for the
//     kubelet or the node controller to tell the API;
//   - a bound on every lease: before a lease is granted to a pod (a
//     promotion, or the active told its role again), every other pod that
//     may hold one must have acked standby, be proven down by the API, or
//     be past its bound (election.GrantWait). The wait holds back no other
//     group: the reconcile requeues itself, and a standby ack requeues at
//     once.

// Renewer sends lease renewals and hands their acks over;
// *notify.Notifier is one. A Notifier that is not a Renewer (the unit
// tests' fakes) still gets grants tracked, but nothing renews them.
type Renewer interface {
	Renew(t notify.Target, echo uint64) (uint64, error)
	SetAckHandler(func(notify.Ack) notify.AckVerdict)
}

// backlogger is a Renewer that can tell whether acks are waiting unread
// (*notify.Notifier can): while they are, no lease is declared lapsed,
// since the silence may be the controller's own, not the app's.
type backlogger interface{ Backlog() bool }

// leaseState is where a lease is in its life.
type leaseState int

const (
	// granting: a Send telling the pod active is in flight. Its echoes
	// (if any) move echoedAt.
	granting leaseState = iota
	// renewing: the pod acked; the loop renews it.
	renewing
	// stopped: nothing more is echoed to the pod (the grant failed, the
	// pod was demoted, left the view, lapsed, or another pod is being
	// granted a lease). It may still hold the lease until its bound.
	stopped
)

// lease is one pod's lease, as this controller process knows it.
type lease struct {
	group  types.NamespacedName
	target notify.Target
	state  leaseState

	// echoedAt is when the ack carrying the newest nonce echoed to the pod
	// was received: the pod's lease ends before LeaseBound(echoedAt).
	echoedAt time.Time
	nonce    uint64    // the newest nonce seen, for the next renewal
	nonceAt  time.Time // when it arrived
	honoured bool      // the pod's acks say it enforces the TTL

	lapsed   bool // the loop saw it lapse (or the pod refused a renewal)
	refused  bool // ... by a refusal ("stale"): it holds another role
	reported bool // the LeaseLapsed Event was recorded
	fenced   bool // the pod acked standby at an epoch >= target.Epoch
	down     bool // the API proves its processes stopped
	gone     bool // the pod left the controller's view

	next     time.Time // the loop's next look at it
	sent     bool      // a renewal was sent ...
	answered bool      // ... and acked
	index    int       // in the loop's heap; -1 when not in it
	fencing  uint64    // epoch of a standby message in flight to it (fence), 0 if none
}

// leases is the set of leases and the renewal loop.
type leases struct {
	renew, ttl time.Duration
	margin     time.Duration
	now        func() time.Time
	renewer    Renewer
	metrics    *Metrics
	// leader gates the loop: a replica that may have lost its leadership
	// renews nothing (nil: no leader election, always open).
	leader *LeaderGate
	// lapsed is told (outside the lock) of each group whose active lapsed
	// or whose gated grant may now proceed.
	lapsed func(types.NamespacedName, time.Time)

	mu      sync.Mutex
	started time.Time // this process's first reconcile
	byUID   map[types.UID]*lease
	byGroup map[types.NamespacedName]map[types.UID]*lease
	queue   leaseHeap
	waiting map[types.NamespacedName]time.Time // groups whose grant waits, since when
	wake    chan struct{}
	lastGC  time.Time
}

func newLeases(cfg config.Config, d Deps, lapsed func(types.NamespacedName, time.Time)) *leases {
	ls := &leases{
		renew: cfg.LeaseRenew,
		// The TTL as it goes on the wire, in whole milliseconds.
		ttl:     time.Duration(wire.TTLMillisOf(cfg.LeaseTTL)) * time.Millisecond,
		margin:  cfg.LeaseMargin,
		now:     d.Now,
		metrics: d.Metrics,
		leader:  d.Leader,
		lapsed:  lapsed,
		byUID:   map[types.UID]*lease{},
		byGroup: map[types.NamespacedName]map[types.UID]*lease{},
		waiting: map[types.NamespacedName]time.Time{},
		wake:    make(chan struct{}, 1),
	}
	if ls.renew <= 0 || ls.ttl <= 0 {
		// A Config that skipped Validate (a unit test's literal): the
		// defaults, rather than a loop that spins or leases that never
		// expire.
		def := config.Default()
		ls.renew, ls.ttl = def.LeaseRenew, def.LeaseTTL
	}
	if rn, ok := d.Notifier.(Renewer); ok {
		ls.renewer = rn
		rn.SetAckHandler(ls.onAck)
	}
	return ls
}

// bound is the controller's bound on a lease echoed at echoedAt.
func (ls *leases) bound(echoedAt time.Time) time.Time {
	return election.LeaseBound(echoedAt, ls.ttl, config.LeaseDrift, ls.margin)
}

// boundOf is l's bound; zero if nothing was ever echoed to it.
func (ls *leases) boundOf(l *lease) time.Time { return ls.bound(l.echoedAt) }

// --- called by the reconciler (with the group's lock held) ---

// prepare makes t (an active role) a lease grant: it records the grant and
// sets the TTL and the Grant hook that records each echo.
func (ls *leases) prepare(key types.NamespacedName, t *notify.Target) {
	t.TTL = ls.ttl
	uid := types.UID(t.UID)
	ls.mu.Lock()
	l := ls.byUID[uid]
	if l == nil || l.target.Epoch != t.Epoch || l.group != key {
		old := l
		l = &lease{group: key, index: -1}
		if old != nil {
			// The same listener: what was echoed before still bounds it.
			l.echoedAt, l.honoured = old.echoedAt, old.honoured
			ls.unlink(old)
		}
		ls.link(uid, l)
	}
	ls.unqueue(l)
	l.target, l.state = *t, granting
	l.lapsed, l.refused, l.reported, l.fenced, l.gone = false, false, false, false, false
	ls.mu.Unlock()
	t.Grant = func(at time.Time, honoured bool) bool {
		ls.mu.Lock()
		defer ls.mu.Unlock()
		if ls.byUID[uid] != l || l.state != granting {
			return false // revoked: another pod is being made active
		}
		if at.After(l.echoedAt) {
			l.echoedAt = at
		}
		l.honoured = honoured
		return true
	}
}

// sent records how a Send of t (an active role if active) ended. It
// reports whether it fenced a pod that a waiting grant in its group waits
// for, so that the caller requeues the group.
func (ls *leases) sent(t notify.Target, active bool, res notify.Result) bool {
	uid := types.UID(t.UID)
	ls.mu.Lock()
	defer ls.mu.Unlock()
	l := ls.byUID[uid]
	if l == nil {
		return false
	}
	if !active {
		if res.Acked && t.Epoch >= l.target.Epoch && !l.fenced {
			l.fenced = true
			ls.stop(l)
			_, waiting := ls.waiting[l.group]
			return waiting
		}
		return false
	}
	if l.target.Epoch != t.Epoch || l.state != granting {
		return false
	}
	if res.Echoed.After(l.echoedAt) {
		l.echoedAt = res.Echoed
	}
	// Both found by make chaos: without them, the group was left without
	// an active app until the API reported the pod dead, or for good.
	switch {
	case res.Status == wire.StatusStale:
		// The app refuses the grant: it holds a newer epoch, or standby at
		// this one (a switch cut off half-way, its label writes lost,
		// leaves the old active labelled but told standby). It is not
		// active, whatever its label says, and never will be at this
		// epoch: as with a refused renewal, the group fails over to a new
		// one.
		l.state, l.lapsed, l.refused, l.fenced = stopped, true, true, true
		ls.metrics.LeaseLapses.WithLabelValues("refused").Inc()
		return true
	case errors.Is(res.Err, notify.ErrTimeout) && ls.renewer != nil && ls.silentLocked(l):
		// An active whose app died while no lease of this process was on
		// it (a new leader, a restarted controller: it is told its role
		// again, unanswered).
		l.state, l.lapsed = stopped, true
		ls.metrics.LeaseLapses.WithLabelValues("silent").Inc()
		return true
	}
	if !res.Acked || res.Nonce == 0 || ls.renewer == nil {
		// No lease to renew (or nothing to renew it with); whatever was
		// echoed still bounds it.
		l.state = stopped
		return false
	}
	l.state, l.honoured = renewing, res.Lease
	l.nonce, l.nonceAt = res.Nonce, res.NonceAt
	l.sent, l.answered = false, false
	ls.schedule(l, ls.now().Add(ls.renew))
	return false
}

// silentLocked: a grant to l's pod went unanswered for a whole send (every
// retry until -notify-deadline), and every lease the app may hold has
// certainly run out: those this process granted (its last echo) and those
// a previous process did (this one's start). Its app is as silent as one
// whose renewals go unanswered, and counts as lapsed. The bound keeps it
// safe; a promotion still waits for it (grantWait).
func (ls *leases) silentLocked(l *lease) bool {
	now := ls.now()
	return !ls.started.IsZero() && !now.Before(ls.bound(ls.started)) && !now.Before(ls.boundOf(l))
}

// status adds the lease's verdict to an active pod's status, and keeps
// the API's proof of its death for the grant's wait.
func (ls *leases) status(uid types.UID, active bool, st election.Status, node *corev1.Node) election.Status {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	l := ls.byUID[uid]
	if l == nil {
		return st
	}
	l.down = election.ProvenDown(st, node)
	return election.WithLease(st, active, election.Lease{Lapsed: l.lapsed})
}

// noteStart records this process's first reconcile: leases a previous
// process granted are unknown, so grants wait out the bound from here.
func (ls *leases) noteStart(now time.Time) {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	if ls.started.IsZero() {
		ls.started = now
	}
}

// holders stops every lease of the group but uid's and returns what the
// grant to uid must wait for (election.GrantWait).
func (ls *leases) holdersLocked(key types.NamespacedName, uid types.UID) []election.Holder {
	var hs []election.Holder
	for u, l := range ls.byGroup[key] {
		if u == uid {
			continue
		}
		ls.stop(l)
		hs = append(hs, election.Holder{Bound: ls.boundOf(l), Fenced: l.fenced, Down: l.down, Honoured: l.honoured, Gone: l.gone})
	}
	return hs
}

// grantWait says how long a grant to uid must wait, having stopped every
// other lease of the group; see election.GrantWait. While it must wait it
// also returns the pods worth fencing meanwhile, as standby messages at
// epoch (at least the group's) that are not in flight yet: an app that is
// alive and acks lets the grant proceed at once.
func (ls *leases) grantWait(key types.NamespacedName, uid types.UID, now time.Time, epoch uint64) (time.Duration, bool, []notify.Target) {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	wait, blocked := election.GrantWait(now, ls.bound(ls.started), ls.holdersLocked(key, uid))
	if wait == 0 && !blocked {
		if since, ok := ls.waiting[key]; ok {
			delete(ls.waiting, key)
			ls.metrics.LeaseWait.Observe(now.Sub(since).Seconds())
		}
		return 0, false, nil
	}
	if _, ok := ls.waiting[key]; !ok {
		ls.waiting[key] = now
	}
	var fence []notify.Target
	for u, l := range ls.byGroup[key] {
		if u == uid || l.fenced || l.down || l.echoedAt.IsZero() {
			continue
		}
		if l.honoured && !now.Before(ls.boundOf(l)) {
			continue // lapsed for certain: nothing to gain
		}
		e := max(epoch, l.target.Epoch)
		if l.fencing >= e {
			continue // in flight
		}
		l.fencing = e
		t := l.target
		t.Role, t.Epoch, t.TTL, t.Grant = wire.RoleStandby, e, 0, nil
		fence = append(fence, t)
	}
	return wait, blocked, fence
}

// fenced records the end of a fence (a standby message from grantWait) and
// reports whether a waiting grant should look again.
func (ls *leases) fenced(t notify.Target, res notify.Result) bool {
	ls.mu.Lock()
	if l := ls.byUID[types.UID(t.UID)]; l != nil && l.fencing == t.Epoch {
		l.fencing = 0
	}
	ls.mu.Unlock()
	return ls.sent(t, false, res)
}

// renewing reports whether uid's lease at epoch is being renewed: the pod
// then needs no new grant (a listener restarted in place is granted one by
// the renewals themselves).
func (ls *leases) renewing(uid types.UID, epoch uint64) bool {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	l := ls.byUID[uid]
	return l != nil && l.state == renewing && l.target.Epoch == epoch
}

// inView stops the renewals of the group's leases whose pod is not among
// pods: deleted (even force-deleted while its node still runs it) or out of
// the selector. Such a pod fences itself; its lease still holds up grants
// to others until its bound. Stopping at once matters: a new pod that got
// the old one's IP must not be granted the old one's lease (a listener
// given its PodUID refuses it anyway).
func (ls *leases) inView(key types.NamespacedName, pods []corev1.Pod) {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	g := ls.byGroup[key]
	if len(g) == 0 {
		return
	}
	present := make(map[types.UID]bool, len(pods))
	for i := range pods {
		present[pods[i].UID] = true
	}
	for uid, l := range g {
		if !present[uid] {
			l.gone = true
			ls.stop(l)
		}
	}
}

// sweep brings the group's leases in line with what the reconciler sees:
// pods that left the view are no longer renewed (they fence themselves);
// pods no longer labelled active neither; leases nobody needs are dropped.
// It returns the pods whose lapse is to be reported.
func (ls *leases) sweep(key types.NamespacedName, present map[types.UID]bool, active map[types.UID]bool, now time.Time) []types.UID {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	var report []types.UID
	for uid, l := range ls.byGroup[key] {
		switch {
		case !present[uid]:
			l.gone = true
			ls.stop(l)
		case !active[uid] && l.state == renewing:
			// Demoted by someone else, or this controller's label write:
			// the renewals end, and the told-standby path fences it.
			ls.stop(l)
		}
		if l.lapsed && !l.reported && present[uid] && active[uid] {
			l.reported = true
			report = append(report, uid)
		}
		if ls.droppable(l, present[uid] && active[uid], now) {
			ls.unlink(l)
		}
	}
	return report
}

// droppable: a stopped lease that can hold nothing any more, and whose
// lapse no longer needs to be seen (its pod is not labelled active).
func (ls *leases) droppable(l *lease, labelledActive bool, now time.Time) bool {
	if l.state != stopped || (l.lapsed && labelledActive) {
		return false
	}
	return l.fenced || l.down || l.echoedAt.IsZero() || !now.Before(ls.boundOf(l))
}

// --- the renewal loop ---

// Start runs the renewal loop until ctx is done. As a manager Runnable it
// runs only on the leader, like the reconciler.
func (ls *leases) Start(ctx context.Context) error {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		wait := ls.pass()
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return nil
		case <-ls.wake:
			if !timer.Stop() {
				select {
				case <-timer.C:
				default:
				}
			}
		case <-timer.C:
		}
	}
}

type renewal struct {
	t    notify.Target
	echo uint64
}

// pass renews what is due, declares what has lapsed, and returns how long
// to sleep.
func (ls *leases) pass() time.Duration {
	if _, ok := ls.leader.Remaining(); !ok {
		// A deposed (or paused) leader must not keep an app's lease alive
		// while the new leader waits it out to promote another pod: it
		// renews nothing, so its apps fence themselves within the TTL.
		return ls.renew
	}
	var due []renewal
	var lapsed []*lease
	ls.mu.Lock()
	now := ls.now()
	// A pass that runs late (the controller was starved of CPU, or paused)
	// declares no lapse: its own renewals were late, so the apps' silence
	// proves nothing yet. It renews, and looks again shortly, when the acks
	// queued meanwhile have been read. Likewise while acks wait unread.
	late := len(ls.queue) > 0 && now.Sub(ls.queue[0].next) > ls.renew/2
	// Leases due within a small horizon are renewed in this pass, a little
	// early (which is always safe), so that thousands of leases with
	// scattered phases cost a few hundred wake-ups a second, not one per
	// renewal.
	horizon := now.Add(ls.renew / 25)
	var popped []*lease
	for len(ls.queue) > 0 && !ls.queue[0].next.After(horizon) {
		popped = append(popped, heap.Pop(&ls.queue).(*lease))
	}
	if !late {
		late = ls.acksUnread(popped, now)
	}
	for _, l := range popped {
		scheduled := l.next
		if l.state != renewing {
			continue
		}
		fresh := l.nonceAt.After(l.echoedAt) // an ack since the last echo
		if !fresh && !late && !now.Before(ls.boundOf(l)) {
			l.lapsed = true
			ls.stop(l)
			lapsed = append(lapsed, l)
			ls.metrics.LeaseLapses.WithLabelValues("silent").Inc()
			continue
		}
		if l.sent && !l.answered {
			ls.metrics.LeaseRenewals.WithLabelValues("missed").Inc()
		}
		if fresh {
			l.echoedAt = l.nonceAt
		}
		due = append(due, renewal{t: l.target, echo: l.nonce})
		l.sent, l.answered = true, false
		// Look again at the next renewal, on the lease's own cadence (a
		// late wake-up does not stretch the interval), or at the bound if
		// that comes first (an app that stopped acking). A bound already
		// past (this pass is late) is looked at again shortly: long enough
		// for the reading goroutine to take in the acks queued meanwhile.
		next := scheduled.Add(ls.renew)
		if !next.After(now) {
			next = now.Add(ls.renew)
		}
		switch b := ls.boundOf(l); {
		case fresh:
		case !b.After(now):
			next = now.Add(ls.renew / 5)
		case b.Before(next):
			next = b
		}
		ls.schedule(l, next)
	}
	ls.collect(now)
	wait := time.Hour
	if len(ls.queue) > 0 {
		wait = max(ls.queue[0].next.Sub(now), 0)
	}
	ls.metrics.LeasesRenewed.Set(float64(len(ls.queue)))
	ls.mu.Unlock()

	// Sent outside the lock: echoedAt was moved before, so a grant that
	// reads it meanwhile already accounts for these renewals.
	for _, r := range due {
		if _, err := ls.renewer.Renew(r.t, r.echo); err != nil {
			ls.metrics.LeaseRenewals.WithLabelValues("error").Inc()
			continue
		}
		ls.metrics.LeaseRenewals.WithLabelValues("sent").Inc()
	}
	for _, l := range lapsed {
		ls.lapsed(l.group, now)
	}
	return wait
}

// acksUnread reports, when one of the popped leases is due to lapse,
// whether acks are still waiting unread in the controller's socket (the
// controller starved of CPU): then its silence proves nothing yet.
func (ls *leases) acksUnread(popped []*lease, now time.Time) bool {
	for _, l := range popped {
		if l.state == renewing && !l.nonceAt.After(l.echoedAt) && !now.Before(ls.boundOf(l)) {
			bl, ok := ls.renewer.(backlogger)
			return ok && bl.Backlog()
		}
	}
	return false
}

// collect drops, once a minute, the leases of pods gone from view whose
// leases can no longer matter.
func (ls *leases) collect(now time.Time) {
	if now.Sub(ls.lastGC) <= time.Minute {
		return
	}
	ls.lastGC = now
	for _, l := range ls.byUID {
		if l.gone && ls.droppable(l, false, now) {
			ls.unlink(l)
		}
	}
}

// onAck takes the acks that no Send waits for (renewals' and late ones),
// on the notifier's reading goroutine.
func (ls *leases) onAck(a notify.Ack) notify.AckVerdict {
	ls.mu.Lock()
	l := ls.byUID[types.UID(a.UID)]
	if l == nil || a.Group != l.group.String() {
		ls.mu.Unlock()
		return notify.AckUnexpected
	}
	if a.From.IsValid() && !notify.SameAddr(a.From, l.target.Addr) {
		// Not the pod's: another pod of the group (it holds the same
		// subkey) must not keep a dead active's lease alive, nor fence it
		// for it.
		ls.mu.Unlock()
		return notify.AckWrongSource
	}
	if a.Role == wire.RoleStandby {
		if a.Status != wire.StatusOK || a.Epoch < l.target.Epoch {
			ls.mu.Unlock()
			return notify.AckExpected
		}
		l.fenced = true
		_, waiting := ls.waiting[l.group]
		if a.Seq != 0 {
			// A standby ack that came after its Send gave up.
			ls.stop(l)
		}
		// Seq 0: the app released its lease as it closed its listener
		// (pkg/role's Close). A grant waiting for it may proceed; the
		// renewals go on, in case the pod's app comes back in place, and
		// a lapse follows if it does not.
		ls.mu.Unlock()
		if waiting {
			ls.lapsed(l.group, a.At)
		}
		return notify.AckExpected
	}
	if a.Epoch != l.target.Epoch {
		ls.mu.Unlock()
		return notify.AckUnexpected
	}
	var refused bool
	switch a.Status {
	case wire.StatusOK, wire.StatusRetry:
		// Someone listens there again (a released app restarted in
		// place): what is echoed to it may make it active.
		l.fenced = false
		if a.Nonce != 0 && a.At.After(l.nonceAt) {
			l.nonce, l.nonceAt = a.Nonce, a.At
		}
		l.honoured = a.Lease
		if a.Status == wire.StatusOK {
			l.answered = true
			ls.metrics.LeaseRenewals.WithLabelValues("acked").Inc()
			// An ack after a silence (the app was paused or starved, or
			// its acks were held up) carries the first fresh nonce in a
			// while: echo it at once, not at the next tick, which may come
			// after the app's lease has run out. This is what lets an app
			// pause for up to TTL minus one renew interval (less a round
			// trip) unnoticed; waiting for the tick, a pause of one
			// interval in the wrong phase fenced it.
			if l.state == renewing && a.At.Sub(l.echoedAt) > ls.renew*3/2 {
				ls.schedule(l, a.At)
				ls.kick()
			}
		} else {
			ls.metrics.LeaseRenewals.WithLabelValues("retry").Inc()
			// The app lost its lease (it was paused, or restarted in
			// place) but is there: answer at once with its nonce.
			if l.state == renewing {
				ls.schedule(l, a.At)
				ls.kick()
			}
		}
	case wire.StatusStale:
		// The app holds a newer epoch or was told standby at this one:
		// it is not active, whatever the label says.
		if l.state == renewing {
			l.lapsed, l.refused, l.fenced = true, true, true
			ls.stop(l)
			refused = true
			ls.metrics.LeaseLapses.WithLabelValues("refused").Inc()
		}
	}
	ls.mu.Unlock()
	if refused {
		ls.lapsed(l.group, a.At)
	}
	return notify.AckExpected
}

func (ls *leases) kick() {
	select {
	case ls.wake <- struct{}{}:
	default:
	}
}

// --- bookkeeping (ls.mu held) ---

func (ls *leases) link(uid types.UID, l *lease) {
	ls.byUID[uid] = l
	g := ls.byGroup[l.group]
	if g == nil {
		g = map[types.UID]*lease{}
		ls.byGroup[l.group] = g
	}
	g[uid] = l
}

func (ls *leases) unlink(l *lease) {
	uid := types.UID(l.target.UID)
	ls.unqueue(l)
	l.state = stopped
	if ls.byUID[uid] == l {
		delete(ls.byUID, uid)
	}
	if g := ls.byGroup[l.group]; g != nil && g[uid] == l {
		delete(g, uid)
		if len(g) == 0 {
			delete(ls.byGroup, l.group)
			delete(ls.waiting, l.group)
		}
	}
}

func (ls *leases) stop(l *lease) {
	l.state = stopped
	ls.unqueue(l)
}

func (ls *leases) unqueue(l *lease) {
	if l.index >= 0 {
		heap.Remove(&ls.queue, l.index)
	}
}

func (ls *leases) schedule(l *lease, at time.Time) {
	l.next = at
	if l.index >= 0 {
		heap.Fix(&ls.queue, l.index)
	} else {
		heap.Push(&ls.queue, l)
	}
	if ls.queue[0] == l {
		ls.kick()
	}
}

// leaseHeap orders leases by their next look.
type leaseHeap []*lease

func (h leaseHeap) Len() int           { return len(h) }
func (h leaseHeap) Less(i, j int) bool { return h[i].next.Before(h[j].next) }
func (h leaseHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index, h[j].index = i, j
}
func (h *leaseHeap) Push(x any) {
	l := x.(*lease)
	l.index = len(*h)
	*h = append(*h, l)
}
func (h *leaseHeap) Pop() any {
	old := *h
	l := old[len(old)-1]
	old[len(old)-1] = nil
	l.index = -1
	*h = old[:len(old)-1]
	return l
}

// --- the reconciler's hooks ---

// leaseStatus is the assess hook: the lease's verdict on one pod.
func (r *Reconciler) leaseStatus(pod *corev1.Pod, node *corev1.Node, role string, st election.Status) election.Status {
	return r.leases.status(pod.UID, role == r.roles.Active, st, node)
}

// gateLease runs between the decision and its application. It keeps the
// leases in line with the group (who is present, who is labelled active),
// reports lapses, and holds back a promotion until no other pod may hold a
// lease: if one may, the promotion and the demotions that go with it are
// left for a later reconcile (the labels stay as they are meanwhile), the
// pods in the way are told standby at once, and the group is requeued for
// when their leases have certainly run out.
func (r *Reconciler) gateLease(ctx context.Context, req reconcile.Request, g *groupState, d election.Decision, byUID map[string]*member, present map[types.UID]bool, trigger time.Time) election.Decision {
	now := r.Now()
	r.leases.noteStart(now)
	active := map[types.UID]bool{}
	for uid, m := range byUID {
		if m.Role == r.roles.Active {
			active[types.UID(uid)] = true
		}
	}
	for _, uid := range r.leases.sweep(req.NamespacedName, present, active, now) {
		if g.plannedMove != nil && string(uid) == g.plannedMove.from {
			continue // told standby for a planned move: not a lapse to warn of
		}
		if m := byUID[string(uid)]; m != nil {
			r.Recorder.Eventf(m.pod, nil, corev1.EventTypeWarning, ReasonLeaseLapsed, "Failover",
				"the app stopped acking its role lease (renewed every %s, TTL %s) until it had certainly lapsed; failing over",
				r.leases.renew, r.leases.ttl)
		}
	}
	if d.Promote == nil {
		return d
	}
	wait, blocked, fence := r.leases.grantWait(req.NamespacedName, types.UID(d.Promote.UID), now, g.epoch)
	if wait == 0 && !blocked {
		return d
	}
	if planned(d) && len(fence) > 0 && r.fenceNow(ctx, fence) {
		// The old active of a planned move is alive and acked standby
		// here: the switch goes on in this reconcile instead of the next,
		// so no app is active for one round trip rather than a requeue.
		if wait, blocked, _ = r.leases.grantWait(req.NamespacedName, types.UID(d.Promote.UID), r.Now(), g.epoch); wait == 0 && !blocked {
			return d
		}
		fence = nil
	}
	for _, t := range fence {
		r.fence(ctx, req, t)
	}
	logf.FromContext(ctx).V(1).Info("Promotion waits for the old active's lease", "pod", d.Promote.Name,
		"waitMs", msFloat(wait), "blocked", blocked)
	// The failover clock keeps running from the trigger.
	r.seen.note(req.NamespacedName, trigger)
	held := map[string]bool{}
	for _, dm := range d.Demote {
		held[dm.Member.UID] = true
	}
	var del []election.Member
	for _, m := range d.Delete {
		if !held[m.UID] {
			del = append(del, m)
		}
	}
	d.Promote, d.Epoch, d.Demote, d.Delete, d.NoCandidate = nil, 0, nil, del, false
	if blocked {
		// A standby ack, the API proving the pod down, or its leaving
		// requeues the group; this is the fallback.
		wait = r.Config.NotifyRetry
	}
	if d.RequeueAfter == 0 || wait < d.RequeueAfter {
		d.RequeueAfter = max(wait, time.Millisecond)
	}
	return d
}

// fence tells a pod that may hold a lease that it is standby (t, from
// grantWait), so that a promotion need not wait out its lease if its app is
// alive; the ack requeues the group. Nothing is recorded in g.told: once
// the switch has happened the pod is told standby at the new epoch as
// usual.
func (r *Reconciler) fence(ctx context.Context, req reconcile.Request, t notify.Target) {
	sendCtx, cancel, err := r.callCtx(ctx, r.Config.NotifyDeadline)
	if err != nil {
		return // not certainly leader: no message may leave
	}
	go func() {
		defer cancel()
		res := r.Notifier.Send(sendCtx, t)
		r.Metrics.Notifications.WithLabelValues(wire.RoleStandby, resultOf(res)).Inc()
		if r.leases.fenced(t, res) {
			r.enqueue(req.NamespacedName)
		}
	}()
}

// fenceNow tells the pods that may hold a lease that they are standby, as
// fence does, but waits for their acks (at most -demote-ack-timeout) and
// reports whether every one acked.
func (r *Reconciler) fenceNow(ctx context.Context, ts []notify.Target) bool {
	sendCtx, cancel, err := r.callCtx(ctx, r.Config.DemoteAckTimeout)
	if err != nil {
		return false
	}
	defer cancel()
	acked := make(chan bool, len(ts))
	for _, t := range ts {
		go func() {
			res := r.Notifier.Send(sendCtx, t)
			r.Metrics.Notifications.WithLabelValues(wire.RoleStandby, resultOf(res)).Inc()
			r.leases.fenced(t, res)
			acked <- res.Acked
		}()
	}
	all := true
	for range ts {
		all = <-acked && all
	}
	return all
}

func resultOf(res notify.Result) string {
	if !res.Acked && res.Status == "" {
		return "timeout"
	}
	return res.Status
}

// mayGrant is notifyAll's hook before it tells a pod active. Only the
// active the decision keeps is granted a lease: a pod still labelled active
// for want of a label write (already deleted, say) is not, and its grant
// must not stop the leases of the pod that is. A lease that is being
// renewed needs no new grant, and a grant waits, like a promotion, until no
// other pod may hold a lease (after a restart, until the previous
// process's leases have certainly run out).
func (r *Reconciler) mayGrant(ctx context.Context, req reconcile.Request, g *groupState, d election.Decision, m *member, epoch uint64) bool {
	uid := m.pod.UID
	if d.Keep == nil || d.Keep.UID != string(uid) || r.leases.renewing(uid, epoch) {
		return false
	}
	wait, blocked, fence := r.leases.grantWait(req.NamespacedName, uid, r.Now(), g.epoch)
	if wait == 0 && !blocked {
		return true
	}
	for _, t := range fence {
		r.fence(ctx, req, t)
	}
	if blocked {
		wait = r.Config.NotifyRetry
	}
	key := req.NamespacedName
	time.AfterFunc(max(wait, time.Millisecond), func() { r.enqueue(key) })
	return false
}

// Lease metrics.
func (m *Metrics) addLease() {
	m.LeaseRenewals = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "hapod_lease_renewals_total",
		Help: "Role lease renewals: sent, acked, retry (the app had lost its lease and was granted a fresh one), missed (no ack before the next renewal), error (not sent).",
	}, []string{"result"})
	for _, r := range []string{"sent", "acked", "retry", "missed", "error"} {
		m.LeaseRenewals.WithLabelValues(r)
	}
	m.LeaseLapses = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "hapod_lease_lapses_total",
		Help: "Active pods whose role lease lapsed: silent (no ack until it had certainly run out), refused (the app holds another role).",
	}, []string{"cause"})
	for _, c := range []string{"silent", "refused"} {
		m.LeaseLapses.WithLabelValues(c)
	}
	m.LeasesRenewed = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "hapod_leases_renewed",
		Help: "Role leases the renewal loop keeps alive (one per group with an acked active).",
	})
	m.LeaseWait = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "hapod_lease_grant_wait_seconds",
		Help: "Time a promotion (or re-grant) waited until no other pod could hold the role lease.",
		// 0.25 ms .. ~8 s.
		Buckets: prometheus.ExponentialBuckets(0.00025, 2, 16),
	})
}
