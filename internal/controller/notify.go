package controller

import (
	"context"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/event"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/hapod/hapod/internal/election"
	"github.com/hapod/hapod/internal/notify"
	"github.com/hapod/hapod/internal/record"
)

// promotion carries the timing of one promotion to the goroutine that
// waits for the app's ack, so the Event can report both durations.
type promotion struct {
	trigger  time.Time
	reason   election.Fault
	replaced string

	labelled  time.Time
	labelDone chan struct{} // closed once the label write ended
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
// active its epoch, standbys that they are standby. It is level-driven, so
// a restarted controller simply tells everyone again (duplicates are acked
// and ignored by pkg/role).
func (r *Reconciler) notifyAll(ctx context.Context, req reconcile.Request, g *groupState, d election.Decision, members []member) {
	now := r.Now()
	for i := range members {
		m := &members[i]
		role := m.Role
		if role != r.roles.Active && role != r.roles.Standby {
			continue
		}
		epoch := g.epoch
		if role == r.roles.Active {
			epoch = max(m.Epoch, epoch)
		}
		t := g.told[m.pod.UID]
		if t != nil && t.role == role && (role != r.roles.Active || t.epoch == epoch) {
			if t.inflight || t.acked || t.giveUp || now.Sub(t.failedAt) < r.Config.NotifyRetry {
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

// startNotify sends one role message in the background. g.mu is held by
// the caller; the goroutine takes it to record the outcome.
func (r *Reconciler) startNotify(ctx context.Context, req reconcile.Request, g *groupState, m *member, role string, epoch uint64, promo *promotion) {
	addr, ok := r.podAddr(m.pod)
	if !ok {
		return
	}
	if !r.Config.MayNotify(addr.Addr()) {
		if w := (warning{m.pod.UID, ReasonRoleAddressRefused}); !g.warned[w] {
			g.warned[w] = true
			r.Recorder.Eventf(m.pod, nil, corev1.EventTypeWarning, ReasonRoleAddressRefused, "Notify",
				"role address %s is outside -notify-cidrs; the pod is not told its role", addr)
		}
		return
	}
	deleting := m.Status.Fault == election.Deleting
	g.told[m.pod.UID] = &told{role: role, epoch: epoch, inflight: true}
	pod := m.pod
	target := notify.Target{Addr: addr, Group: req.String(), Pod: pod.Name, UID: string(pod.UID), Role: role, Epoch: epoch}
	if role == r.roles.Active {
		r.leases.prepare(req.NamespacedName, &target) // a lease grant
	}
	go func() {
		res := r.Notifier.Send(ctx, target)
		if r.leases.sent(target, role == r.roles.Active, res) {
			r.enqueue(req.NamespacedName) // a fenced old active: a promotion may proceed
		}
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
}

// reportPromotion emits the promotion's Event once the app answered (or
// did not), with the durations the user cares about.
func (r *Reconciler) reportPromotion(ctx context.Context, pod *corev1.Pod, role string, epoch uint64, p *promotion, res notify.Result, done time.Time) {
	labelled := p.labelledAt(ctx)
	labelMs := "?"
	if !labelled.IsZero() {
		labelMs = ms(labelled.Sub(p.trigger))
	}
	replaced := p.replaced
	if replaced == "" {
		replaced = "none"
	}
	if res.Acked {
		r.Metrics.FailoverSeconds.WithLabelValues("ack").Observe(done.Sub(p.trigger).Seconds())
		r.Recorder.Eventf(pod, nil, corev1.EventTypeNormal, ReasonPromoted, "Promote",
			"%s at epoch %d (reason %s, replaced %s): label committed %sms and app acked %sms after the trigger was seen",
			role, epoch, p.reason, replaced, labelMs, ms(done.Sub(p.trigger)))
		return
	}
	r.Recorder.Eventf(pod, nil, corev1.EventTypeWarning, ReasonPromotedNotAcked, "Promote",
		"%s at epoch %d (reason %s, replaced %s): label committed %sms after the trigger; the app did not ack (%s, %d attempts)",
		role, epoch, p.reason, replaced, labelMs, res.Status, res.Attempts)
}

func (r *Reconciler) enqueue(key types.NamespacedName) {
	select {
	case r.requeue <- event.TypedGenericEvent[reconcile.Request]{Object: reconcile.Request{NamespacedName: key}}:
	default:
		// The channel is full only under a storm of retries; the periodic
		// resync will come back to this group.
	}
}
