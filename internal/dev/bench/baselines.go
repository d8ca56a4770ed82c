package bench

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/go-logr/logr"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"k8s.io/klog/v2"
	"k8s.io/utils/ptr"

	"github.com/hapod/hapod/internal/dev/netplan"
	"github.com/hapod/hapod/internal/dev/poll"
)

// Timings of client-go leader election.
type Timings struct {
	LeaseDuration time.Duration `json:"leaseDuration"`
	RenewDeadline time.Duration `json:"renewDeadline"`
	RetryPeriod   time.Duration `json:"retryPeriod"`
}

func (t Timings) String() string {
	return fmt.Sprintf("%v/%v/%v", t.LeaseDuration, t.RenewDeadline, t.RetryPeriod)
}

// Timings compared.
var (
	// DefaultTimings are client-go's and controller-runtime's defaults.
	DefaultTimings = Timings{15 * time.Second, 10 * time.Second, 2 * time.Second}
	// AggressiveTimings are about as short as the library's validation and
	// a loaded API server allow.
	AggressiveTimings = Timings{2 * time.Second, time.Second, 200 * time.Millisecond}
)

// ElectionRun is how many leader-election failovers to measure: Groups
// independent groups (two replicas each, one Lease each) in parallel, each
// failed over Rounds times in a row.
type ElectionRun struct {
	Groups, Rounds int
}

// leaderElection measures the usual alternative to hapod: each replica of
// the app runs client-go leader election on a Lease, and the leader labels
// its own pod active. A failover is the leader crashing: its context is
// canceled without releasing the Lease (ReleaseOnCancel false). Measured
// from the crash to the new leader holding the Lease and to its pod's label
// committed; the new leader then relabels the old pod standby (not timed).
func (e *Env) leaderElection(ctx context.Context, t Timings, run ElectionRun) (acquired, labelled []time.Duration, err error) {
	ns, delNS, err := e.namespace(ctx, "bench-le")
	if err != nil {
		return nil, nil, err
	}
	defer delNS()
	node, delNode, err := e.node(ctx, "bench-le", netplan.BenchElection.String())
	if err != nil {
		return nil, nil, err
	}
	defer delNode()
	ips := newAddrs(netplan.BenchElection)

	var (
		mu   sync.Mutex
		errs []error
	)
	var wg sync.WaitGroup
	for g := range run.Groups {
		wg.Go(func() {
			a, l, err := e.electionGroup(ctx, ns, node, fmt.Sprintf("le-%d", g), ips, t, run.Rounds)
			mu.Lock()
			defer mu.Unlock()
			acquired, labelled = append(acquired, a...), append(labelled, l...)
			if err != nil {
				errs = append(errs, err)
			}
		})
	}
	wg.Wait()
	return acquired, labelled, errors.Join(errs...)
}

// leading is a replica's report that it became leader.
type leading struct {
	id                 string
	acquired, labelled time.Time
	labelErr           error
}

func (e *Env) electionGroup(ctx context.Context, ns, node, group string, ips *addrs, t Timings, rounds int) (acquired, labelled []time.Duration, err error) {
	ids := []string{group + "-0", group + "-1"}
	for _, id := range ids {
		p := newPod(podSpec{name: id, group: group, node: node, ip: ips.take()})
		delete(p.Labels, benchLabel) // not hapod's to manage
		if _, err := e.cs.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{FieldManager: fieldManager}); err != nil {
			return nil, nil, err
		}
	}
	events := make(chan leading, 4)
	replicas := map[string]*replica{}
	defer func() {
		for _, r := range replicas {
			r.kill()
		}
	}()
	for _, id := range ids {
		r, err := e.startReplica(ctx, ns, group, id, ids, t, events)
		if err != nil {
			return nil, nil, err
		}
		replicas[id] = r
	}
	wait := func(not string) (leading, error) {
		timeout := time.NewTimer(3*t.LeaseDuration + 10*time.Second)
		defer timeout.Stop()
		for {
			select {
			case ev := <-events:
				if ev.id == not {
					continue // the old leader's own acquisition, before the crash
				}
				return ev, ev.labelErr
			case <-timeout.C:
				return leading{}, fmt.Errorf("group %s: no new leader within %v", group, 3*t.LeaseDuration+10*time.Second)
			case <-ctx.Done():
				return leading{}, ctx.Err()
			}
		}
	}
	first, err := wait("")
	if err != nil {
		return nil, nil, err
	}
	leader := first.id
	for range rounds {
		// Crash at a random moment of the renewal cycle.
		if err := poll.Pause(ctx, t.RetryPeriod+rand.N(2*t.RetryPeriod)); err != nil {
			return acquired, labelled, err
		}
		crashed := replicas[leader]
		t0 := time.Now()
		crashed.kill()
		ev, err := wait(leader)
		if err != nil {
			return acquired, labelled, err
		}
		acquired = append(acquired, ev.acquired.Sub(t0))
		labelled = append(labelled, ev.labelled.Sub(t0))
		// The crashed replica restarts and joins as a candidate.
		r, err := e.startReplica(ctx, ns, group, crashed.id, ids, t, events)
		if err != nil {
			return acquired, labelled, err
		}
		replicas[crashed.id] = r
		leader = ev.id
	}
	return acquired, labelled, nil
}

// replica is one app process running leader election.
type replica struct {
	id     string
	cancel context.CancelFunc
	done   chan struct{}
}

// kill crashes the replica: its elector stops without releasing the Lease.
func (r *replica) kill() {
	r.cancel()
	<-r.done
}

func (e *Env) startReplica(ctx context.Context, ns, lease, id string, peers []string, t Timings, events chan<- leading) (*replica, error) {
	// Its own client and connection, as a separate process would have: a
	// Proxy function makes client-go build a transport just for it.
	rc := rest.CopyConfig(e.REST)
	rc.Proxy = func(*http.Request) (*url.URL, error) { return nil, nil }
	rc.UserAgent = "bench-app/" + id
	// Above what 200 ms renewals and retries need: client-go's default
	// (5 requests/s) would throttle the aggressive timings' own writes.
	rc.QPS, rc.Burst = 50, 100
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, err
	}
	le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
		Lock: &resourcelock.LeaseLock{
			LeaseMeta:  metav1.ObjectMeta{Namespace: ns, Name: lease},
			Client:     cs.CoordinationV1(),
			LockConfig: resourcelock.ResourceLockConfig{Identity: id},
		},
		LeaseDuration:   t.LeaseDuration,
		RenewDeadline:   t.RenewDeadline,
		RetryPeriod:     t.RetryPeriod,
		ReleaseOnCancel: false,
		Name:            lease,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: func(ctx context.Context) {
				ev := leading{id: id, acquired: time.Now()}
				ev.labelErr = patchRole(ctx, cs, ns, id, activeRole)
				ev.labelled = time.Now()
				select {
				case events <- ev:
				case <-ctx.Done():
					return
				}
				for _, p := range peers {
					if p != id {
						_ = patchRole(ctx, cs, ns, p, standbyRole)
					}
				}
			},
			OnStoppedLeading: func() {},
		},
	})
	if err != nil {
		return nil, err
	}
	rctx, cancel := context.WithCancel(klog.NewContext(ctx, logr.Discard()))
	r := &replica{id: id, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		le.Run(rctx)
	}()
	return r, nil
}

func patchRole(ctx context.Context, cs kubernetes.Interface, ns, pod, role string) error {
	patch := fmt.Appendf(nil, `{"metadata":{"labels":{%q:%q}}}`, roleLabel, role)
	_, err := cs.CoreV1().Pods(ns).Patch(ctx, pod, types.MergePatchType, patch, metav1.PatchOptions{FieldManager: fieldManager})
	return err
}

// noStandby measures the other alternative: a single replica, replaced by
// its ReplicaSet when it dies. Each sample is the time from the pod's
// deletion to its replacement being Ready on a watch: the ReplicaSet
// controller, the scheduler and kwok's start of the pod. kwok starts pods
// at once, so a real kubelet (image pull, container start) would only add
// to it; the app's own initialisation (initDelay) is added by arithmetic.
func (e *Env) noStandby(ctx context.Context, n int) ([]time.Duration, error) {
	ns, delNS, err := e.namespace(ctx, "bench-rs")
	if err != nil {
		return nil, err
	}
	defer delNS()
	node, delNode, err := e.node(ctx, "bench-rs", netplan.BenchNoStandby.String())
	if err != nil {
		return nil, err
	}
	defer delNode()
	const group = "solo"
	pw, err := watchPods(ctx, e.cs, ns, "app="+group, "")
	if err != nil {
		return nil, err
	}
	defer pw.stop()
	if err := e.soloReplicaSet(ctx, ns, group, node); err != nil {
		return nil, err
	}
	var out []time.Duration
	for i := range n {
		// One replacement at a time, as a lone pod's death is:
		// kube-controller-manager's client is limited to 20 requests/s
		// (burst 30) by default, and back to back the replacements (a
		// pod create and ReplicaSet status writes each) measured that
		// throttle instead, about 150 ms each once the burst was spent.
		if i > 0 {
			if err := poll.Pause(ctx, time.Second); err != nil {
				return nil, err
			}
		}
		d, err := e.replaceOnce(ctx, pw, ns)
		if err != nil {
			return nil, fmt.Errorf("no standby %d: %w", i, err)
		}
		out = append(out, d)
	}
	return out, nil
}

// soloReplicaSet creates a one-replica ReplicaSet of the seed's pod, scheduled
// onto node, not hapod's to manage.
func (e *Env) soloReplicaSet(ctx context.Context, ns, group, node string) error {
	tmpl := newPod(podSpec{group: group})
	delete(tmpl.Labels, benchLabel)
	tmpl.Annotations = nil // kwok picks the IP from the node's pod CIDR
	tmpl.Spec.NodeName = ""
	tmpl.Spec.NodeSelector = map[string]string{corev1.LabelHostname: node} // through the scheduler
	rs := &appsv1.ReplicaSet{
		ObjectMeta: metav1.ObjectMeta{Name: group},
		Spec: appsv1.ReplicaSetSpec{
			Replicas: ptr.To(int32(1)),
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": group}},
			Template: corev1.PodTemplateSpec{ObjectMeta: tmpl.ObjectMeta, Spec: tmpl.Spec},
		},
	}
	_, err := e.cs.AppsV1().ReplicaSets(ns).Create(ctx, rs, metav1.CreateOptions{FieldManager: fieldManager})
	return err
}

// replaceOnce waits for the one Ready pod, deletes it and returns the time to
// its replacement Ready on the watch.
func (e *Env) replaceOnce(ctx context.Context, pw *podWatch, ns string) (time.Duration, error) {
	var only *corev1.Pod
	if err := waitUntil(ctx, 30*time.Second, "one Ready pod", func() bool {
		all := pw.all()
		if len(all) != 1 || !runningReady(all[0]) {
			return false
		}
		only = all[0]
		return true
	}, pw.changed); err != nil {
		return 0, err
	}
	uid := only.UID
	t0 := time.Now()
	if err := e.cs.CoreV1().Pods(ns).Delete(ctx, only.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}}); err != nil {
		return 0, err
	}
	var ready time.Time
	if err := waitUntil(ctx, 30*time.Second, "replacement Ready", func() bool {
		for _, p := range pw.all() {
			if p.UID == uid {
				continue
			}
			if at, ok := pw.readySince(p.UID); ok {
				ready = at
				return true
			}
		}
		return false
	}, pw.changed); err != nil {
		return 0, err
	}
	return ready.Sub(t0), nil
}
