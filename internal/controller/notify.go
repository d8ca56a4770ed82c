package controller

import (
	"context"
	"net/netip"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/event"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/hapod/hapod/internal/election"
	"github.com/hapod/hapod/internal/notify"
	"github.com/hapod/hapod/internal/record"
	"github.com/hapod/hapod/internal/wire"
)

// promotion carries the timing of one promotion to the goroutine that
// waits for the app's ack, so the Event can report both durations.
type promotion struct {
	trigger  time.Time
	reason   election.Fault
	replaced string

	labelled  time.Time
	labelDone chan struct{} // closed once the label write ended

	// fenced is when every old active was fenced (acked standby, or known
	// unable to act): the start of a switchover's gap.
	fenced       time.Time
	switchoverID string
}

func newPromotion(trigger time.Time, reason election.Fault, replaced string) *promotion {
	return &promotion{trigger: trigger, reason: reason, replaced: replaced, labelDone: make(chan struct{})}
}

// finishLabel records the label write's end; zero means it failed.
func (p *promotion) finishLabel(at time.Time) {
	p.labelled = at
	close(p.labelDone)
}

// labelledAt waits for the label write to end, which happens within one
// API round trip of the ack, so the report has both times.
func (p *promotion) labelledAt(ctx context.Context) time.Time {
	select {
	case <-p.labelDone:
		return p.labelled
	case <-ctx.Done():
		return time.Time{}
	}
}

// notifyAll makes sure every reachable pod has been told its role: the
// active its own epoch, standbys that they are standby. It is level-driven, so
// a restarted controller simply tells everyone again (duplicates are acked
// and ignored by pkg/role).
//
// Only the active the decision keeps (or the one just labelled) is told
// active, at the epoch it was promoted with: a pod still labelled active
// because its demotion failed is never told active again (it was told
// standby at the new epoch), and a pod whose promotion is unfinished
// (g.pending) is left alone: telling it standby at its own epoch would make
// it refuse its own promotion as stale.
func (r *Reconciler) notifyAll(ctx context.Context, req reconcile.Request, g *groupState, d election.Decision, members []member) {
	now := r.Now()
	if p := g.pending; p != nil && d.Keep != nil {
		// Another pod is active after all (labelled by hand, say): the
		// unfinished promotion is over, and its app is told what its label
		// says.
		p.promo.finishLabel(time.Time{})
		g.pending = nil
	}
	for i := range members {
		m := &members[i]
		if g.pending != nil && g.pending.uid == m.pod.UID {
			continue
		}
		role, epoch := r.roles.Standby, g.epoch
		if m.Role == r.roles.Active && (d.Keep == nil || d.Keep.UID == m.UID) && !demoted(d, m) {
			role, epoch = r.roles.Active, m.Epoch
			if epoch == 0 {
				epoch = g.epoch // labelled active by hand, without an epoch
			}
		} else if m.Role != r.roles.Active && m.Role != r.roles.Standby {
			continue
		}
		if isPlain(m.pod) {
			r.notifyPlain(ctx, req, g, d, members, m, role, epoch)
			continue
		}
		t := g.told[m.pod.UID]
		if t != nil && t.role == role && (role != r.roles.Active || t.epoch == epoch) {
			// An acked active whose lease is no longer renewed (it lapsed
			// while its label write was retried, or its app restarted)
			// holds standby now: it is granted the role again below.
			regrant := role == r.roles.Active && t.acked && !r.leases.renewing(m.pod.UID, epoch)
			if !regrant && (t.inflight || t.acked || t.giveUp || now.Sub(t.failedAt) < r.Config.NotifyRetry) {
				continue
			}
		}
		// A pod that was never told anything and is not Ready may not be
		// listening yet: it is told once it turns Ready. A pod told before
		// (a demoted active, say) is told even when not Ready: it may still
		// be running and must be fenced.
		if t == nil && !election.PodReady(m.pod) && m.Status.Fault != election.Deleting {
			continue
		}
		if role == r.roles.Active && !r.mayGrant(ctx, req, g, d, m, epoch) {
			continue // not the kept active, renewed already, or the grant must wait (lease.go)
		}
		r.startNotify(ctx, req, g, m, role, epoch, nil)
	}
}

// demoted reports whether the decision demotes m.
func demoted(d election.Decision, m *member) bool {
	for _, dm := range d.Demote {
		if dm.Member.UID == m.UID {
			return true
		}
	}
	return false
}

// startNotify sends one role message in the background (never to a pod in
// plain mode). g.mu is held by
// the caller; the goroutine takes it to record the outcome, after it has
// put the result on the returned channel (so a caller holding g.mu may wait
// on it). It returns nil when nothing was sent: no usable address, or this
// replica is no longer certainly the leader.
func (r *Reconciler) startNotify(ctx context.Context, req reconcile.Request, g *groupState, m *member, role string, epoch uint64, promo *promotion) <-chan notify.Result {
	if isPlain(m.pod) {
		// Its app would take any datagram as "become active" (plain.go).
		return nil
	}
	addr, ok := r.podAddr(m.pod)
	if !ok {
		return nil
	}
	if !r.mayNotify(g, m.pod, addr) {
		return nil
	}
	// No message may leave after the leader's lease could have run out:
	// resends stop at the lease's end too.
	sendCtx, cancel, err := r.callCtx(ctx, r.Config.NotifyDeadline)
	if err != nil {
		return nil
	}
	deleting := m.Status.Fault == election.Deleting
	g.told[m.pod.UID] = &told{role: role, epoch: epoch, inflight: true}
	pod := m.pod
	// The wire speaks "active"/"standby" whatever the label values are
	// (-active-value, -standby-value).
	wireRole := wire.RoleStandby
	if role == r.roles.Active {
		wireRole = wire.RoleActive
	}
	target := notify.Target{Addr: addr, Group: req.String(), Pod: pod.Name, UID: string(pod.UID), Role: wireRole, Epoch: epoch}
	if role == r.roles.Active {
		r.leases.prepare(req.NamespacedName, &target) // a lease grant
	}
	done := make(chan notify.Result, 1)
	go func() {
		res := r.Notifier.Send(sendCtx, target)
		cancel()
		if r.leases.sent(target, role == r.roles.Active, res) {
			r.enqueue(req.NamespacedName) // a fenced old active: a promotion may proceed
		}
		done <- res
		acked := r.Now()
		result := res.Status
		if !res.Acked && result == "" {
			result = "timeout"
		}
		r.Metrics.Notifications.WithLabelValues(role, result).Inc()

		g.mu.Lock()
		if t := g.told[pod.UID]; t != nil && t.role == role && t.epoch == epoch {
			t.inflight, t.acked = false, res.Acked
			if !res.Acked {
				t.failedAt, t.giveUp = acked, deleting
			}
		}
		g.mu.Unlock()

		log := logf.FromContext(ctx).WithValues("pod", pod.Name, "role", role, "epoch", epoch)
		if promo != nil {
			r.reportPromotion(ctx, pod, role, epoch, promo, res, acked)
			r.status.promoted(types.NamespacedName{Namespace: pod.Namespace, Name: GroupOf(pod, r.Config.GroupLabel)},
				failoverStatus(pod.Name, epoch, promo, res, acked, promo.labelledAt(ctx), result), promo.switchoverID, switchoverGap(promo, res, acked))
			if r.OnPromotion != nil {
				p := record.Record{Kind: record.Promoted, Group: req.String(), Pod: pod.Name, UID: string(pod.UID),
					Epoch: epoch, Reason: string(promo.reason), Replaced: promo.replaced,
					Seen: promo.trigger, Labelled: promo.labelledAt(ctx), Status: result, Attempts: res.Attempts}
				if res.Acked {
					p.Acked = acked
				}
				r.OnPromotion(p)
			}
		}
		if res.Acked {
			log.V(1).Info("Role acknowledged", "attempts", res.Attempts, "latencyMs", msFloat(res.Latency))
			return
		}
		log.Info("Role not acknowledged", "result", result, "attempts", res.Attempts, "err", res.Err)
		if !deleting && ctx.Err() == nil {
			time.AfterFunc(r.Config.NotifyRetry, func() { r.enqueue(req.NamespacedName) })
		}
	}()
	return done
}

// reportPromotion emits the promotion's Event once the app answered (or
// did not), with the durations the user cares about.
func (r *Reconciler) reportPromotion(ctx context.Context, pod *corev1.Pod, role string, epoch uint64, p *promotion, res notify.Result, done time.Time) {
	labelled := p.labelledAt(ctx)
	if labelled.IsZero() {
		if ctx.Err() == nil {
			// The label was never written (the switch was cut short and
			// another pod promoted, or the group vanished): the Event
			// must not claim a promotion.
			r.Recorder.Eventf(pod, nil, corev1.EventTypeWarning, ReasonSwitchStuck, "Promote",
				"%s at epoch %d (reason %s) was abandoned: the label was never written; the app was told standby at a higher epoch if another pod was promoted", role, epoch, p.reason)
		}
		return
	}
	labelMs := ms(labelled.Sub(p.trigger))
	replaced := p.replaced
	if replaced == "" {
		replaced = "none"
	}
	if res.Acked {
		r.Metrics.FailoverSeconds.WithLabelValues("ack").Observe(done.Sub(p.trigger).Seconds())
		r.promotionEvents.record(pod, done, string(p.reason), corev1.EventTypeNormal, ReasonPromoted,
			"%s at epoch %d (reason %s, replaced %s): label committed %sms and app acked %sms after the trigger was seen",
			role, epoch, p.reason, replaced, labelMs, ms(done.Sub(p.trigger)))
		return
	}
	r.promotionEvents.record(pod, done, string(p.reason), corev1.EventTypeWarning, ReasonPromotedNotAcked,
		"%s at epoch %d (reason %s, replaced %s): label committed %sms after the trigger; the app did not ack (%s, %d attempts)",
		role, epoch, p.reason, replaced, labelMs, res.Status, res.Attempts)
}

// mayNotify reports whether addr is inside -notify-cidrs, and warns once
// per pod when it is not.
func (r *Reconciler) mayNotify(g *groupState, pod *corev1.Pod, addr netip.AddrPort) bool {
	if r.Config.MayNotify(addr.Addr()) {
		return true
	}
	if w := (warning{pod.UID, ReasonRoleAddressRefused}); !g.warned[w] {
		g.warned[w] = true
		r.Recorder.Eventf(pod, nil, corev1.EventTypeWarning, ReasonRoleAddressRefused, "Notify",
			"role address %s is outside -notify-cidrs; the pod is not told its role", addr)
	}
	return false
}

func (r *Reconciler) enqueue(key types.NamespacedName) {
	select {
	case r.requeue <- event.TypedGenericEvent[reconcile.Request]{Object: reconcile.Request{NamespacedName: key}}:
	default:
		// The channel is full only under a storm of retries; the periodic
		// resync will come back to this group.
	}
}
