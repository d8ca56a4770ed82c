package controller

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/hapod/hapod/internal/election"
	"github.com/hapod/hapod/internal/notify"
	"github.com/hapod/hapod/pkg/role"
)

// callCtx is the context of one API call or UDP send: bounded by timeout
// and by the leader's lease, and refused (errNotLeader) once the lease may
// have run out.
func (r *Reconciler) callCtx(ctx context.Context, timeout time.Duration) (context.Context, context.CancelFunc, error) {
	left, ok := r.Leader.Remaining()
	if !ok {
		return nil, nil, errNotLeader
	}
	if r.Leader != nil && left < timeout {
		timeout = left
	}
	if timeout <= 0 {
		c, cancel := context.WithCancel(ctx)
		return c, cancel, nil
	}
	c, cancel := context.WithTimeout(ctx, timeout)
	return c, cancel, nil
}

// mayHoldActive reports whether a pod's app may hold the active role: its
// label says so, or it was told so (whatever came of the message).
func mayHoldActive(label string, t *told, active string) bool {
	return label == active || (t != nil && t.role == active)
}

// provenDead reports whether the API proves that a pod's app cannot be
// running: the kubelet reports the pod finished, or a critical container
// (the app) terminated. A pod merely deleted, or on a NotReady node, may
// still be running behind a partition.
func provenDead(pod *corev1.Pod, st election.Status) bool {
	if pod.Status.Phase == corev1.PodFailed || pod.Status.Phase == corev1.PodSucceeded {
		return true
	}
	if st.Death == nil {
		return false
	}
	for _, cs := range pod.Status.ContainerStatuses {
		if cs.Name == st.Death.Container && cs.State.Terminated != nil {
			return true
		}
	}
	return false
}

// ambiguous reports whether a failed write may nevertheless have been
// committed: the API answered with a server error or not at all (timeout,
// connection reset, a deadline). A 4xx answer is a refusal.
func ambiguous(err error) bool {
	var st apierrors.APIStatus
	if errors.As(err, &st) {
		return st.Status().Code >= 500 || st.Status().Code == 0
	}
	return true
}

// fenceTargets are the pods other than the new active whose apps may hold
// active, by name: they are told standby before the new active is told.
// The last active, if its pod vanished from the API, is one of them: a
// force-deleted pod's app may still run. Its label went with the pod: it
// gets no label write.
func (r *Reconciler) fenceTargets(g *groupState, byUID map[string]*member, promote *member) []*member {
	var out []*member
	for _, o := range byUID {
		if o.pod.UID != promote.pod.UID && mayHoldActive(o.Role, g.told[o.pod.UID], r.roles.Active) {
			out = append(out, o)
		}
	}
	if p := g.activePod; p != nil && p.UID != promote.pod.UID && byUID[string(p.UID)] == nil {
		st := election.Assess(p, nil, r.Now(), r.opts) // its last status: it may prove the app dead
		st.Fault = election.Gone
		out = append(out, &member{pod: p, Member: election.Member{Name: p.Name, UID: string(p.UID), Role: r.roles.Active, Status: st}})
	}
	slices.SortFunc(out, func(a, b *member) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// fenceOldActives tells every old active standby at g.epoch and waits, at
// most -demote-ack-timeout, for their acks; then each must be fenced
// (oldActiveFenced) before anyone is told active.
func (r *Reconciler) fenceOldActives(ctx context.Context, req reconcile.Request, g *groupState, olds []*member) error {
	type wait struct {
		uid types.UID
		ch  <-chan notify.Result
	}
	var waits []wait
	for _, o := range olds {
		if t := g.told[o.pod.UID]; t != nil && t.role == r.roles.Standby && t.epoch == g.epoch && t.acked {
			continue // fenced by an earlier try of this switch
		}
		if _, ok := r.Leader.Remaining(); !ok {
			return errNotLeader
		}
		ch := r.startNotify(ctx, req, g, o, r.roles.Standby, g.epoch, nil)
		// Nothing to wait for from an app the API proves dead, or whose
		// role lease has certainly run out (it fell silent, or refused a
		// renewal): it holds no lease and cannot be renewed into one, so
		// its ack would change nothing. Waiting for it cost a kill -9 the
		// whole -demote-ack-timeout.
		if ch != nil && !provenDead(o.pod, o.Status) && o.Status.Fault != election.LeaseLapsed {
			waits = append(waits, wait{o.pod.UID, ch})
		}
	}
	if len(waits) > 0 {
		timer := time.NewTimer(r.Config.DemoteAckTimeout)
		defer timer.Stop()
	collect:
		for _, w := range waits {
			select {
			case res := <-w.ch:
				// The sender records this too, but needs g.mu, which the
				// switch holds: record it here for oldActiveFenced.
				if t := g.told[w.uid]; t != nil && t.role == r.roles.Standby && t.epoch == g.epoch {
					t.inflight, t.acked = false, res.Acked
				}
			case <-timer.C:
				break collect
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	}
	for _, o := range olds {
		if ok, retry := r.oldActiveFenced(ctx, g, o); !ok {
			if isPlain(o.pod) {
				r.reportStuck(g, o, g.epoch, plainStuck, nil)
				return &retryAfter{after: retry, err: fmt.Errorf("old active %s: %w", o.Name, errPlainWait)}
			}
			r.reportStuck(g, o, g.epoch, "the old active neither acked standby nor is proven dead", nil)
			return &retryAfter{after: retry, err: fmt.Errorf("old active %s not fenced", o.Name)}
		}
	}
	return nil
}

// oldActiveFenced reports whether old can no longer act as active at an
// epoch below g.epoch: its app acked standby at g.epoch, or the API proves
// it dead, or, in plain mode, its pod is gone. Otherwise unfencedOldActive
// decides. retryAfter says when to
// look again if not.
func (r *Reconciler) oldActiveFenced(ctx context.Context, g *groupState, old *member) (ok bool, retryAfter time.Duration) {
	if t := g.told[old.pod.UID]; t != nil && t.role == r.roles.Standby && t.epoch == g.epoch && t.acked {
		return true, 0
	}
	if provenDead(old.pod, old.Status) {
		return true, 0
	}
	if isPlain(old.pod) {
		// Nothing can tell its app to stop (plain.go): only its end.
		return old.Status.Fault == election.Gone, r.Config.NotifyRetry
	}
	return r.unfencedOldActive(ctx, g, old)
}

// unfencedOldActive is the one place that decides about an old active
// that did not ack standby and is not proven dead: unreachable (dead node,
// partition, app hung) or just slow. The switch proceeds, because it only
// runs once gateLease (lease.go) has let the promotion through: by then no
// other pod can still hold a role lease (it lapsed by the controller's
// bound, or the pod acked standby), so the old app has fenced itself, and
// its label is removed before the new one is written.
func (r *Reconciler) unfencedOldActive(ctx context.Context, g *groupState, old *member) (ok bool, retryAfter time.Duration) {
	logf.FromContext(ctx).Info("Old active did not ack standby; switching without it", "pod", old.Name, "epoch", g.epoch,
		"waitedMs", msFloat(r.Config.DemoteAckTimeout))
	return true, 0
}

// retryAfter asks for the group to be reconciled again after a pause,
// not with the error backoff.
type retryAfter struct {
	after time.Duration
	err   error
}

func (e *retryAfter) Error() string { return e.err.Error() }
func (e *retryAfter) Unwrap() error { return e.err }

// writeRole patches a pod's role (and, for a promotion, its epoch). When
// the patch fails in a way that may have committed it anyway, the pod is
// read back from the API (uncached) to find out, instead of guessing.
func (r *Reconciler) writeRole(ctx context.Context, pod *corev1.Pod, value string, epoch uint64, switchoverID string) error {
	err := r.patchRole(ctx, pod, value, epoch, switchoverID)
	if err == nil || errors.Is(err, errNotLeader) || !ambiguous(err) {
		return err
	}
	committed, rerr := r.roleWritten(ctx, pod, value, epoch)
	switch {
	case rerr != nil:
		return fmt.Errorf("%w (and reading the pod back failed: %w)", err, rerr)
	case committed:
		logf.FromContext(ctx).Info("Role write reported an error but was committed", "pod", pod.Name, "role", value, "epoch", epoch, "err", err)
		return nil
	default:
		return err
	}
}

// roleWritten reads the pod back and reports whether it carries the role
// (and epoch). A pod gone, or replaced by a same-named one, carries a
// standby role: it selects nothing.
func (r *Reconciler) roleWritten(ctx context.Context, pod *corev1.Pod, value string, epoch uint64) (bool, error) {
	ctx, cancel, err := r.callCtx(ctx, r.Config.APITimeout)
	if err != nil {
		return false, err
	}
	defer cancel()
	var cur corev1.Pod
	err = r.APIReader.Get(ctx, types.NamespacedName{Namespace: pod.Namespace, Name: pod.Name}, &cur)
	if apierrors.IsNotFound(err) || (err == nil && cur.UID != pod.UID) {
		return value != r.roles.Active, nil
	}
	if err != nil {
		return false, err
	}
	if cur.Labels[r.Config.RoleLabel] != value {
		return false, nil
	}
	return epoch == 0 || cur.Annotations[role.EpochAnnotation] == fmt.Sprint(epoch), nil
}

// reportStuck emits one Warning Event per stuck switch (per epoch), on the
// pod it is stuck at.
func (r *Reconciler) reportStuck(g *groupState, m *member, epoch uint64, what string, err error) {
	if errors.Is(err, errNotLeader) || g.stuckAt == epoch {
		return
	}
	g.stuckAt = epoch
	why := "no answer"
	if err != nil {
		why = err.Error()
	}
	r.Recorder.Eventf(m.pod, nil, corev1.EventTypeWarning, ReasonSwitchStuck, "Switch",
		"switch to epoch %d is stuck: %s (%s); no pod is labelled active until it succeeds, retrying with backoff", epoch, what, why)
}

// confirmPending ends an unfinished promotion that the API shows
// committed after all (an ambiguous write whose read-back failed).
func (r *Reconciler) confirmPending(g *groupState, members []member, now time.Time) {
	p := g.pending
	if p == nil {
		return
	}
	for _, m := range members {
		if m.pod.UID == p.uid && m.Role == r.roles.Active && m.Epoch == p.epoch {
			g.pending = nil
			p.promo.finishLabel(now)
			return
		}
	}
}
