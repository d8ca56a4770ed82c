package chaos

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/hapod/hapod/internal/dev/apifault"
	"github.com/hapod/hapod/internal/dev/appproc"
	"github.com/hapod/hapod/internal/dev/localcluster"
	"github.com/hapod/hapod/internal/dev/podstatus"
	"github.com/hapod/hapod/internal/dev/poll"
	"github.com/hapod/hapod/internal/dev/udprelay"
	"github.com/hapod/hapod/internal/rolekey"
	"github.com/hapod/hapod/internal/wire"
)

// scope is what a fault may run beside.
type scope int

const (
	// inGroup faults hit one group; each worker owns a group, so they
	// run in parallel across groups, and beside conditions.
	inGroup scope = iota
	// condition faults change the whole cluster's network or API for a
	// while, beside the groups' faults.
	condition
	// cluster faults run alone: nothing else is in flight.
	cluster
)

// kind is one kind of fault.
type kind struct {
	name   string
	weight int
	scope  scope
	// do injects the fault into group g and returns a heal that takes it
	// away (nil if there is nothing to heal).
	do func(ctx context.Context, r *run, f *Fault, g string, rng *mrand.Rand) (heal func(), err error)
}

// Kinds lists the fault kinds a run mixes, by name.
func Kinds() []string {
	var out []string
	for _, k := range kinds {
		out = append(out, k.name)
	}
	return out
}

var kinds = []kind{
	{"active-deleted", 3, inGroup, activeDeleted},
	{"critical-container-died", 3, inGroup, criticalDied},
	{"app-sigkilled", 3, inGroup, appKilled},
	{"app-sigstopped", 2, inGroup, appStopped},
	{"standby-died", 1, inGroup, standbyDied},
	{"active-cut-off", 2, inGroup, activeCutOff},
	{"udp-loss-dup-reorder", 2, inGroup, lossyFailover},
	{"forged-datagrams", 1, inGroup, forged},
	{"replayed-datagrams", 1, inGroup, replayed},
	{"api-writes-failing", 2, condition, apiWritesFailing},
	{"api-partitioned", 1, condition, apiPartitioned},
	{"node-lost", 1, cluster, nodeLost},
	{"controller-killed-mid-failover", 1, cluster, controllerKilledMidFailover},
	{"leader-handover", 1, cluster, leaderHandover},
	{"apiserver-restarted", 1, cluster, apiserverRestarted},
}

// inject runs the faults from one worker per group.
func (r *run) inject(ctx context.Context) error {
	var enabled []kind
	for _, k := range kinds {
		if (len(r.o.Kinds) == 0 || slices.Contains(r.o.Kinds, k.name)) && (k.name != "apiserver-restarted" || r.o.APIServer != nil) {
			enabled = append(enabled, k)
		}
	}
	if len(enabled) == 0 {
		return errors.New("chaos: no fault kind enabled")
	}
	var count sync.WaitGroup
	var next int64
	var mu sync.Mutex
	for w, ns := range r.groups {
		rng := mrand.New(mrand.NewPCG(r.o.Seed, uint64(w)))
		count.Go(func() {
			for ctx.Err() == nil {
				mu.Lock()
				next++
				id := next
				mu.Unlock()
				if id > int64(r.o.Faults) {
					return
				}
				r.one(ctx, int(id), pick(enabled, rng), ns+"/"+appName, rng)
				if id%50 == 0 {
					r.o.Log.Info("chaos: faults injected", "n", id, "of", r.o.Faults)
				}
			}
		})
	}
	count.Wait()
	if err := ctx.Err(); err != nil {
		mu.Lock()
		defer mu.Unlock()
		return fmt.Errorf("chaos: stopped after %d of %d faults were begun: %w", min(next, int64(r.o.Faults)), r.o.Faults, err)
	}
	return nil
}

func pick(ks []kind, rng *mrand.Rand) kind {
	total := 0
	for _, k := range ks {
		total += k.weight
	}
	n := rng.IntN(total)
	for _, k := range ks {
		if n < k.weight {
			return k
		}
		n -= k.weight
	}
	return ks[len(ks)-1]
}

// one injects one fault and records how the groups it touched recovered.
func (r *run) one(ctx context.Context, id int, k kind, g string, rng *mrand.Rand) {
	groups := []string{g}
	if k.scope == cluster {
		r.exclusive.Lock()
		defer r.exclusive.Unlock()
	} else {
		r.exclusive.RLock()
		defer r.exclusive.RUnlock()
	}
	if k.scope != inGroup {
		groups = r.allGroups()
	}
	// The fault meets whole groups: the previous one's replacement in.
	for _, gg := range groups {
		if err := r.sync(ctx, namespaceOf(gg)); err != nil {
			r.o.Log.Warn("chaos: before a fault", "fault", id, "err", err)
		}
		if _, err := r.view.waitFor(ctx, time.Minute, gg+" whole", func() (bool, string) { return r.view.wholeLocked(gg, r.o.Replicas) }); err != nil {
			r.o.Log.Warn("chaos: a group is not whole before a fault", "fault", id, "err", err)
		}
	}
	before := map[string]uint64{}
	r.view.mu.Lock()
	for _, gg := range groups {
		before[gg] = r.view.topEpochLocked(gg)
	}
	r.view.mu.Unlock()

	f := Fault{ID: id, Kind: k.name, Group: g, Start: time.Now()}
	if k.scope != inGroup {
		f.Group = ""
	}
	heal, err := k.do(ctx, r, &f, g, rng)
	if err != nil {
		f.Err = err.Error()
	}
	if heal != nil {
		heal()
	}
	f.Healed = time.Now()
	for _, gg := range groups {
		if err := r.sync(ctx, namespaceOf(gg)); err != nil {
			f.Err = errors.Join(errorsOf(f.Err), err).Error()
		}
		at, err := r.view.waitFor(ctx, r.o.SettleBound, gg+" settled", func() (bool, string) { return r.view.settledLocked(gg) })
		if err != nil {
			f.Settled = time.Time{}
			f.Err = errors.Join(errorsOf(f.Err), err).Error()
			break
		}
		if at.After(f.Settled) {
			f.Settled = at
		}
	}
	// A failover is this fault's in its own group; in the whole cluster's
	// only for a fault of the whole cluster (the others run beside the
	// groups' own faults).
	failGroups := []string{g}
	if k.scope == cluster {
		failGroups = groups
	}
	for _, gg := range failGroups {
		if pod, at := r.view.tookOver(gg, before[gg]); pod != "" {
			f.FailedOver, f.To = true, pod
			if f.TookOver.IsZero() || at.Before(f.TookOver) {
				f.TookOver = at
			}
		}
	}
	r.rec.Fault(f)
	if f.Err != "" {
		r.o.Log.Warn("chaos: fault", "id", id, "kind", k.name, "group", g, "err", f.Err)
	}
}

func errorsOf(s string) error {
	if s == "" {
		return nil
	}
	return errors.New(s)
}

func (r *run) allGroups() []string {
	var out []string
	for _, ns := range r.groups {
		out = append(out, ns+"/"+appName)
	}
	return out
}

// targetOf is the group's active and standbys now.
func (r *run) targetOf(g string) (target, error) {
	r.view.mu.Lock()
	defer r.view.mu.Unlock()
	t, ok := r.view.targetLocked(g)
	if !ok {
		return t, fmt.Errorf("%s has no single active to hit", g)
	}
	return t, nil
}

// proc is the app process of a pod.
func (r *run) proc(s *podState) (*appproc.Proc, error) {
	r.kmu.Lock()
	k := r.kubelets[s.namespace()+"/"+s.node]
	r.kmu.Unlock()
	if k == nil {
		return nil, fmt.Errorf("no kubelet for %s on %s", s.name, s.node)
	}
	p := k.Proc(s.uid)
	if p == nil {
		return nil, fmt.Errorf("pod %s has no process", s.name)
	}
	return p, nil
}

func (s *podState) namespace() string { return namespaceOf(s.group) }

// namespaceOf is a group's namespace (groups are namespace/name).
func namespaceOf(group string) string {
	ns, _, _ := strings.Cut(group, "/")
	return ns
}

// reportDead writes the critical container terminated, as the kubelet
// reports a dead container.
func (r *run) reportDead(ctx context.Context, s *podState) error {
	_, err := podstatus.Write(ctx, r.cs, s.namespace(), s.name, s.uid, fieldManager, podstatus.Terminated(critical, 137, "Error"))
	return err
}

// activeDeleted: the active pod is deleted (graceful: its app is told by
// SIGTERM, as a kubelet stops a deleted pod's containers).
func activeDeleted(ctx context.Context, r *run, f *Fault, g string, _ *mrand.Rand) (func(), error) {
	t, err := r.targetOf(g)
	if err != nil {
		return nil, err
	}
	f.Target, f.From = t.active.name, t.active.name
	return nil, r.cs.CoreV1().Pods(t.active.namespace()).Delete(ctx, t.active.name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &t.active.uid}})
}

// criticalDied: the active's critical process dies and the kubelet
// reports it at once.
func criticalDied(ctx context.Context, r *run, f *Fault, g string, _ *mrand.Rand) (func(), error) {
	t, err := r.killActive(f, g)
	if err != nil {
		return nil, err
	}
	return nil, r.reportDead(ctx, t.active)
}

// killActive SIGKILLs the app of g's active and returns what the group
// was.
func (r *run) killActive(f *Fault, g string) (target, error) {
	t, err := r.targetOf(g)
	if err != nil {
		return t, err
	}
	f.Target, f.From = t.active.name, t.active.name
	p, err := r.proc(t.active)
	if err != nil {
		return t, err
	}
	_, err = p.Kill()
	r.killed(t.active, p)
	return t, err
}

// killed records a SIGKILLed app's end at the moment the signal was sent:
// it acts no more from then on, and its exit (the reaping, which the
// kubelet reports) can come a few hundred milliseconds later on a loaded
// machine. The first full run counted three overlaps that were that delay.
func (r *run) killed(s *podState, p *appproc.Proc) {
	if at := p.KilledAt(); !at.IsZero() {
		ac := AppChange{At: at, Role: Exited}
		if ac.Group, ac.Pod = r.view.app(s.uid, ac); ac.Pod != "" {
			r.rec.App(ac)
		}
	}
}

// appKilled: the active's app is SIGKILLed and nothing tells the API until
// a standby has taken over (the role lease finds it); then the kubelet's
// late report.
func appKilled(ctx context.Context, r *run, f *Fault, g string, _ *mrand.Rand) (func(), error) {
	t, err := r.killActive(f, g)
	if err != nil {
		return nil, err
	}
	_, werr := r.view.waitFor(ctx, r.o.SettleBound, "a standby takes over from the killed app", func() (bool, string) {
		ok, why := r.view.settledLocked(g)
		return ok && r.view.topEpochLocked(g) > t.epoch, why
	})
	return nil, errors.Join(werr, r.reportDead(ctx, t.active))
}

// appStopped: the active's app is frozen (SIGSTOP) past its lease, then
// resumed: it must find its lease lapsed and act as standby.
func appStopped(ctx context.Context, r *run, f *Fault, g string, rng *mrand.Rand) (func(), error) {
	t, err := r.targetOf(g)
	if err != nil {
		return nil, err
	}
	f.Target, f.From = t.active.name, t.active.name
	p, err := r.proc(t.active)
	if err != nil {
		return nil, err
	}
	if err := p.Signal(syscall.SIGSTOP); err != nil {
		return nil, err
	}
	resume := func() { _ = p.Signal(syscall.SIGCONT) }
	// The freeze's length is drawn: it is the fault, not a wait for anything.
	return resume, poll.Pause(ctx, 250*time.Millisecond+upTo(rng, 750*time.Millisecond))
}

// standbyDied: a standby's critical process dies and is reported.
func standbyDied(ctx context.Context, r *run, f *Fault, g string, rng *mrand.Rand) (func(), error) {
	t, err := r.targetOf(g)
	if err != nil {
		return nil, err
	}
	if len(t.standbys) == 0 {
		return nil, fmt.Errorf("%s has no standby", g)
	}
	s := t.standbys[rng.IntN(len(t.standbys))]
	f.Target = s.name
	p, err := r.proc(s)
	if err != nil {
		return nil, err
	}
	_, err = p.Kill()
	r.killed(s, p)
	if err != nil {
		return nil, err
	}
	return nil, r.reportDead(ctx, s)
}

// activeCutOff: the active's role datagrams are cut both ways (a
// partition between it and the controllers; the API still sees it Ready).
func activeCutOff(ctx context.Context, r *run, f *Fault, g string, rng *mrand.Rand) (func(), error) {
	t, err := r.targetOf(g)
	if err != nil {
		return nil, err
	}
	f.Target, f.From = t.active.name, t.active.name
	rl := r.relay(t.active.uid)
	if rl == nil {
		return nil, fmt.Errorf("%s has no relay", t.active.name)
	}
	rl.Cut(true)
	return func() { rl.Cut(false) }, poll.Pause(ctx, 300*time.Millisecond+upTo(rng, 1200*time.Millisecond))
}

// lossy is the network of udp-loss-dup-reorder: 30% of datagrams lost,
// 30% duplicated, 30% reordered, both ways.
var lossy = udprelay.Faults{Loss: 0.3, Dup: 0.3, Reorder: 0.3}

// lossyFailover: every datagram of the group crosses a lossy network, and
// the active's critical process dies meanwhile: the promotion and the
// renewals must get through it.
func lossyFailover(ctx context.Context, r *run, f *Fault, g string, rng *mrand.Rand) (func(), error) {
	t, err := r.targetOf(g)
	if err != nil {
		return nil, err
	}
	var rls []*udprelay.Relay
	for _, s := range append([]*podState{t.active}, t.standbys...) {
		if rl := r.relay(s.uid); rl != nil {
			if err := rl.SetFaults(udprelay.Both, lossy); err != nil {
				return nil, err
			}
			rls = append(rls, rl)
		}
	}
	heal := func() {
		for _, rl := range rls {
			rl.Reset()
		}
	}
	if rng.IntN(2) == 0 {
		// Half the time the network alone: no failover is called for.
		return heal, poll.Pause(ctx, 2*time.Second)
	}
	f.Target, f.From = t.active.name, t.active.name
	if _, err := criticalDied(ctx, r, f, g, rng); err != nil {
		return heal, err
	}
	_, err = r.view.waitFor(ctx, r.o.SettleBound, "a standby takes over through the lossy network", func() (bool, string) {
		ok, why := r.view.settledLocked(g)
		return ok && r.view.topEpochLocked(g) > t.epoch, why
	})
	return heal, err
}

// forged: an attacker next to the pods sends every app of the group
// grants of the active role at epochs the controller never hands out:
// unauthenticated, under a wrong key, and under another group's key, each
// after the listener's nonce handshake. None may take.
func forged(ctx context.Context, r *run, f *Fault, g string, _ *mrand.Rand) (func(), error) {
	t, err := r.targetOf(g)
	if err != nil {
		return nil, err
	}
	other := r.allGroups()[0]
	if other == g {
		other = r.allGroups()[len(r.groups)-1]
	}
	wrong := make([]byte, 32)
	_, _ = rand.Read(wrong)
	keys := [][]byte{nil, wrong, rolekey.GroupKey(r.masterKey, other)}
	var errs []error
	for _, s := range append([]*podState{t.active}, t.standbys...) {
		rl := r.relay(s.uid)
		if rl == nil {
			continue
		}
		f.Target += s.name + " "
		for i, key := range keys {
			m := wire.Message{Type: wire.TypeRole, Group: g, Pod: s.name, UID: string(s.uid), Role: wire.RoleActive,
				Epoch: forgedEpochs + uint64(f.ID)*4 + uint64(i), Seq: uint64(f.ID), TTLMillis: 10_000}
			errs = append(errs, sendForged(ctx, rl, m, key))
		}
	}
	return nil, errors.Join(errs...)
}

// sendForged sends m (sealed with key, if any) and, if the app answers
// with a nonce to echo, sends it again echoing it: the whole handshake a
// sender without the group's key can do.
func sendForged(ctx context.Context, rl *udprelay.Relay, m wire.Message, key []byte) error {
	for range 2 {
		b, err := seal(m, key)
		if err != nil {
			return err
		}
		if err := rl.SendToApp(b); err != nil {
			return err
		}
		rctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		reply, err := rl.ForgedReply(rctx)
		cancel()
		if err != nil {
			return nil // refused without a word: as it should be
		}
		body, _ := wire.Open(reply)
		var ack wire.Message
		if json.Unmarshal(body, &ack) != nil || ack.Nonce == 0 {
			return nil
		}
		m.Echo, m.Seq = ack.Nonce, m.Seq+1
	}
	return nil
}

func seal(m wire.Message, key []byte) ([]byte, error) {
	if key != nil {
		var b [8]byte
		_, _ = rand.Read(b[:])
		m.Kid, m.Boot, m.Ctr, m.TS = "k1", uint64(b[0])<<8|uint64(b[1])|1, m.Seq, wire.StampMillis(time.Now())
	}
	b, err := wire.Encode(m)
	if err != nil || key == nil {
		return b, err
	}
	return wire.Seal(b, key)
}

// replayed: the datagrams the controllers sent each app of the group
// lately (grants and renewals included) are sent to it again, out of
// order.
func replayed(_ context.Context, r *run, f *Fault, g string, _ *mrand.Rand) (func(), error) {
	t, err := r.targetOf(g)
	if err != nil {
		return nil, err
	}
	var errs []error
	for _, s := range append([]*podState{t.active}, t.standbys...) {
		if rl := r.relay(s.uid); rl != nil {
			f.Target += s.name + " "
			_, err := rl.Replay(32)
			errs = append(errs, err)
		}
	}
	return nil, errors.Join(errs...)
}

// apiWritesFailing: 30% of the controllers' API writes fail (500 or 429)
// and every write is slowed by 100 ms, for 3 s, while the active of the
// worker's group is deleted.
func apiWritesFailing(ctx context.Context, r *run, f *Fault, g string, rng *mrand.Rand) (func(), error) {
	r.proxy.SetFaults(apifault.Faults{WriteFailure: 0.3, Failure: apifault.Mixed, Delay: 100 * time.Millisecond})
	heal := func() { r.proxy.Reset() }
	_, err := activeDeleted(ctx, r, f, g, rng)
	if perr := poll.Pause(ctx, 3*time.Second); perr != nil {
		return heal, perr
	}
	return heal, err
}

// apiPartitioned: the controllers cannot reach the API server at all for
// 1 to 3 s (their watches cut too); the apps and the role datagrams are
// fine.
func apiPartitioned(ctx context.Context, r *run, _ *Fault, _ string, rng *mrand.Rand) (func(), error) {
	r.proxy.Partition(true)
	heal := func() { r.proxy.Partition(false) }
	return heal, poll.Pause(ctx, time.Second+upTo(rng, 2*time.Second))
}

// nodeLost: the node of the worker's group's active stops heartbeating and
// every app on it is cut off; once the groups have failed over, its pods
// are force-deleted (as the node lifecycle controller's eviction would,
// minutes later in a real cluster) and the node comes back.
func nodeLost(ctx context.Context, r *run, f *Fault, g string, _ *mrand.Rand) (func(), error) {
	t, err := r.targetOf(g)
	if err != nil {
		return nil, err
	}
	node := t.active.node
	f.Target, f.From = node, t.active.name
	r.view.mu.Lock()
	on := r.view.podsOnLocked(node)
	r.view.mu.Unlock()
	for _, s := range on {
		if rl := r.relay(s.uid); rl != nil {
			rl.Cut(true)
		}
	}
	if _, err := localcluster.FailNode(ctx, r.cs, node); err != nil {
		return nil, err
	}
	heal := func() {
		// Bounded: every other worker waits for this cluster fault to end,
		// so a node that never comes back must fail the fault, not hang the
		// run (the taint it carries is lifted by kube-controller-manager,
		// which can be slow after an API server restart).
		ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		defer cancel()
		var errs []error
		for _, s := range on {
			err := r.cs.CoreV1().Pods(s.namespace()).Delete(ctx, s.name, metav1.DeleteOptions{GracePeriodSeconds: new(int64), Preconditions: &metav1.Preconditions{UID: &s.uid}})
			if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
				errs = append(errs, err)
			}
		}
		patch := []byte(`{"metadata":{"annotations":{"` + localcluster.KwokNodeAnnotation + `":"fake"}}}`)
		if _, err := r.cs.CoreV1().Nodes().Patch(ctx, node, types.MergePatchType, patch, metav1.PatchOptions{FieldManager: fieldManager}); err != nil {
			errs = append(errs, err)
		} else if _, err := localcluster.WaitNodeReady(ctx, r.cs, node); err != nil {
			errs = append(errs, err)
		}
		if len(errs) > 0 {
			f.Err = errors.Join(append([]error{errorsOf(f.Err), errors.New("healing the lost node")}, errs...)...).Error()
		}
	}
	// The groups whose active was there fail over while the node is lost.
	var errs []error
	for _, s := range on {
		if !s.labelledActive {
			continue
		}
		_, err := r.view.waitFor(ctx, r.o.SettleBound, s.group+" fails over from the lost node", func() (bool, string) {
			tt, ok := r.view.targetLocked(s.group)
			if !ok || tt.active.node == node {
				return false, "active still on " + node
			}
			return true, ""
		})
		errs = append(errs, err)
	}
	return heal, errors.Join(errs...)
}

// controllerKilledMidFailover: the active of the worker's group is deleted
// and the leading controller is SIGKILLed 0 to 30 ms later, in the middle
// of the switch; the other replica must finish it.
func controllerKilledMidFailover(ctx context.Context, r *run, f *Fault, g string, rng *mrand.Rand) (func(), error) {
	l := r.leader()
	if l == nil {
		return nil, errors.New("no controller leads")
	}
	if _, err := activeDeleted(ctx, r, f, g, rng); err != nil {
		return nil, err
	}
	err := poll.Pause(ctx, upTo(rng, 30*time.Millisecond))
	l.end(true)
	return nil, err
}

// leaderHandover: the leading controller is stopped cleanly (it releases
// the leader lease) and restarted; the other replica takes over.
func leaderHandover(_ context.Context, r *run, f *Fault, _ string, _ *mrand.Rand) (func(), error) {
	l := r.leader()
	if l == nil {
		return nil, errors.New("no controller leads")
	}
	f.Target = fmt.Sprintf("controller %d", l.slot)
	l.end(false)
	return nil, nil
}

// apiserverRestarted: kube-apiserver is SIGKILLed and started again.
func apiserverRestarted(ctx context.Context, r *run, f *Fault, _ string, _ *mrand.Rand) (func(), error) {
	f.Target = "kube-apiserver"
	_, err := r.o.APIServer.RestartAPIServer(ctx)
	return nil, err
}

// upTo draws a duration in [0, d).
func upTo(rng *mrand.Rand, d time.Duration) time.Duration { return time.Duration(rng.Int64N(int64(d))) }
