package controller

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"net/netip"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/hapod/hapod/internal/election"
	"github.com/hapod/hapod/internal/notify"
	"github.com/hapod/hapod/internal/record"
	"github.com/hapod/hapod/pkg/role"
)

// Plain-datagram mode (role.RoleMessagesAnnotation "plain") is for apps
// written as the seed design describes them: one UDP socket, and any
// datagram on it means "become active"; no ack, no epoch, no standby
// message. Such an app must never be sent anything but its own promotion,
// and it cannot be fenced, which shapes the rules here:
//
//   - only the new active is sent the payload, and only after its label
//     is written, so that a switch cut short (or abandoned for another
//     pod) has told no app anything;
//   - a standby, or a demoted active, is sent nothing (startNotify refuses
//     plain pods);
//   - another pod is promoted only once the API shows the old plain
//     active's app dead, or its pod gone (oldActiveFenced): nothing else
//     can stop it acting as active. A partitioned node's pod therefore
//     blocks the failover until it is deleted for good, as a StatefulSet's
//     pod does;
//   - delivery is at least once: the payload goes out Repeats times, again
//     after a controller restart and after a container restart in place,
//     which the app takes as it took the first.
const (
	plainDefaultPort    = 10001
	plainDefaultPayload = "GoActiveDuringFailover"
	plainDefaultRepeats = 3
	plainMaxRepeats     = 10
	// plainSpacing spreads the copies so that one burst of loss does not
	// take them all; only copies after the first wait for it.
	plainSpacing = 10 * time.Millisecond
	// plainMaxPayload keeps the datagram inside one unfragmented packet.
	plainMaxPayload = 1024
)

// plainSpec is how a pod in plain mode is told that it is active.
type plainSpec struct {
	port    uint16
	payload []byte
	repeats int
}

// plainMode reads a pod's role-message annotations: whether the pod is in
// plain mode and, if so, how to tell it. An unknown mode counts as plain,
// the mode that assumes the least of the app (nothing is sent that it might
// misread, and it is never taken for fenced), and like any bad plain
// annotation it is returned as err: such a pod is sent nothing.
func plainMode(ann map[string]string) (spec plainSpec, plain bool, err error) {
	switch mode := ann[role.RoleMessagesAnnotation]; mode {
	case "", "hapod":
		return plainSpec{}, false, nil
	case "plain":
	default:
		return plainSpec{}, true, fmt.Errorf("%s=%q is neither hapod nor plain", role.RoleMessagesAnnotation, mode)
	}
	spec = plainSpec{port: plainDefaultPort, payload: []byte(plainDefaultPayload), repeats: plainDefaultRepeats}
	if v, ok := ann[role.PlainPortAnnotation]; ok {
		p, err := strconv.ParseUint(v, 10, 16)
		if err != nil || p == 0 {
			return plainSpec{}, true, fmt.Errorf("%s=%q is not a port (1-65535)", role.PlainPortAnnotation, v)
		}
		spec.port = uint16(p)
	}
	if v, ok := ann[role.PlainPayloadAnnotation]; ok {
		if v == "" || len(v) > plainMaxPayload {
			return plainSpec{}, true, fmt.Errorf("%s must hold 1 to %d bytes, has %d", role.PlainPayloadAnnotation, plainMaxPayload, len(v))
		}
		spec.payload = []byte(v)
	}
	if v, ok := ann[role.PlainRepeatsAnnotation]; ok {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > plainMaxRepeats {
			return plainSpec{}, true, fmt.Errorf("%s=%q is not a number from 1 to %d", role.PlainRepeatsAnnotation, v, plainMaxRepeats)
		}
		spec.repeats = n
	}
	return spec, true, nil
}

// isPlain reports whether pod's app takes plain datagrams.
func isPlain(pod *corev1.Pod) bool {
	_, plain, _ := plainMode(pod.Annotations)
	return plain
}

// restartCount is the pod's container restarts: a restart in place of a
// plain active's app forgets that it is active, so it is told again.
func restartCount(pod *corev1.Pod) int32 {
	var n int32
	for _, cs := range pod.Status.ContainerStatuses {
		n += cs.RestartCount
	}
	return n
}

// notifyPlain is notifyAll for a pod in plain mode: the active the decision
// keeps is told once per epoch (again after a restart of its containers or
// of this controller, or a failed send), and nobody else anything.
func (r *Reconciler) notifyPlain(ctx context.Context, req reconcile.Request, g *groupState, d election.Decision, members []member, m *member, want string, epoch uint64) {
	if !g.plainWarned {
		g.plainWarned = true
		r.Recorder.Eventf(m.pod, nil, corev1.EventTypeWarning, ReasonPlainMessages, "Notify",
			"group %s uses plain role datagrams: the new active is sent a fixed payload with no confirmation that its app acted on it, and an old active cannot be fenced, so a failover waits until the API shows the old app dead or its pod gone", req.Name)
	}
	if want != r.roles.Active || d.Keep == nil || d.Keep.UID != m.UID || !election.PodReady(m.pod) {
		return
	}
	if t := g.told[m.pod.UID]; t != nil && t.role == want && t.epoch == epoch && t.restarts == restartCount(m.pod) &&
		(t.inflight || t.acked || r.Now().Sub(t.failedAt) < r.Config.NotifyRetry) {
		return
	}
	if b := r.plainBlocker(g, func(yield func(*member) bool) {
		for i := range members {
			if !yield(&members[i]) {
				return
			}
		}
	}, m); b != nil {
		r.reportStuck(g, b, epoch, plainStuck, nil)
		return
	}
	r.tellPlain(ctx, req, g, m, epoch, nil)
}

// errPlainWait: a switch waits for a plain-mode active's app to end.
var errPlainWait = errors.New("a plain-mode pod may still act as active; waiting for the API to show its app dead or its pod gone")

// plainStuck is the SwitchStuck note for a plain-mode pod in the way.
const plainStuck = "an old active in plain mode cannot be told standby; no other app is told active until the API shows its app dead or its pod gone (delete the pod to fail over)"

// plainBlocker returns a pod other than next that may still act as active
// in plain mode, if there is one: it was told active, or is labelled
// active, or carries an epoch (it was promoted once, perhaps by a
// controller process before this one), and the API does not prove its app
// dead. While there is one, no app of the group may be told active.
// A pod gone from the API is not among members: its end is the proof.
func (r *Reconciler) plainBlocker(g *groupState, members iter.Seq[*member], next *member) *member {
	for o := range members {
		if o.pod.UID == next.pod.UID || !isPlain(o.pod) || provenDead(o.pod, o.Status) {
			continue
		}
		if o.Epoch > 0 || mayHoldActive(o.Role, g.told[o.pod.UID], r.roles.Active) {
			return o
		}
	}
	return nil
}

// tellPlain sends the plain payload to m, the active labelled at epoch, in
// the background; promo, if set, is reported when the copies are out.
// g.mu is held by the caller.
func (r *Reconciler) tellPlain(ctx context.Context, req reconcile.Request, g *groupState, m *member, epoch uint64, promo *promotion) {
	pod := m.pod
	spec, _, err := plainMode(pod.Annotations)
	if err != nil {
		if w := (warning{pod.UID, ReasonPlainConfigInvalid}); !g.warned[w] {
			g.warned[w] = true
			r.Recorder.Eventf(pod, nil, corev1.EventTypeWarning, ReasonPlainConfigInvalid, "Notify",
				"%v; the pod is treated as plain and its app is sent nothing", err)
		}
		return
	}
	addr, ok := r.podAddr(pod)
	if !ok {
		return
	}
	addr = netip.AddrPortFrom(addr.Addr(), spec.port)
	if !r.mayNotify(g, pod, addr) {
		return
	}
	sendCtx, cancel, err := r.callCtx(ctx, r.Config.NotifyDeadline)
	if err != nil {
		return // not certainly the leader: nothing may leave
	}
	g.told[pod.UID] = &told{role: r.roles.Active, epoch: epoch, inflight: true, restarts: restartCount(pod)}
	active := r.roles.Active
	go func() {
		n, err := r.SendPlain(sendCtx, notify.Plain{Addr: addr, Payload: spec.payload, Repeats: spec.repeats, Spacing: plainSpacing})
		cancel()
		done := r.Now()
		result := "plain-sent"
		if err != nil {
			result = "plain-error"
		}
		r.Metrics.Notifications.WithLabelValues(active, result).Inc()

		g.mu.Lock()
		if t := g.told[pod.UID]; t != nil && t.role == active && t.epoch == epoch {
			t.inflight, t.acked = false, err == nil
			if err != nil {
				t.failedAt = done
			}
		}
		g.mu.Unlock()

		log := logf.FromContext(ctx).WithValues("pod", pod.Name, "role", active, "epoch", epoch, "addr", addr.String())
		if err != nil {
			log.Info("Plain role datagrams not all sent", "sent", n, "of", spec.repeats, "err", err)
			if ctx.Err() == nil {
				time.AfterFunc(r.Config.NotifyRetry, func() { r.enqueue(req.NamespacedName) })
			}
		} else {
			log.V(1).Info("Plain role datagrams sent", "copies", n)
		}
		if promo != nil {
			r.reportPlainPromotion(ctx, req, pod, epoch, promo, addr, n, spec.repeats, err)
		}
	}()
}

// reportPlainPromotion is reportPromotion for plain mode: there is no ack,
// only the copies that left.
func (r *Reconciler) reportPlainPromotion(ctx context.Context, req reconcile.Request, pod *corev1.Pod, epoch uint64, p *promotion, addr netip.AddrPort, sent, repeats int, err error) {
	labelled := p.labelledAt(ctx)
	replaced := p.replaced
	if replaced == "" {
		replaced = "none"
	}
	status := "plain-sent"
	if err != nil {
		status = "plain-error"
		r.promotionEvents.record(pod, r.Now(), string(p.reason), corev1.EventTypeWarning, ReasonPromotedNotAcked,
			"active at epoch %d (reason %s, replaced %s): label committed %sms after the trigger; only %d of %d plain datagrams to %s left: %v",
			epoch, p.reason, replaced, ms(labelled.Sub(p.trigger)), sent, repeats, addr, err)
	} else {
		r.promotionEvents.record(pod, r.Now(), string(p.reason), corev1.EventTypeNormal, ReasonPromoted,
			"active at epoch %d (reason %s, replaced %s): label committed %sms after the trigger; %d plain datagrams sent to %s (plain mode: the app does not ack)",
			epoch, p.reason, replaced, ms(labelled.Sub(p.trigger)), sent, addr)
	}
	if r.OnPromotion != nil {
		r.OnPromotion(record.Record{Kind: record.Promoted, Group: req.String(), Pod: pod.Name, UID: string(pod.UID),
			Epoch: epoch, Reason: string(p.reason), Replaced: p.replaced,
			Seen: p.trigger, Labelled: labelled, Status: status, Attempts: sent})
	}
}
