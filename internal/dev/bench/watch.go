package bench

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	watchtools "k8s.io/client-go/tools/watch"

	"github.com/hapod/hapod/pkg/role"
)

// board tells waiters that something changed: wait returns a channel that
// is closed by the next bump.
type board struct {
	mu sync.Mutex
	ch chan struct{}
}

func (b *board) wait() <-chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.ch == nil {
		b.ch = make(chan struct{})
	}
	return b.ch
}

func (b *board) bump() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.ch != nil {
		close(b.ch)
		b.ch = nil
	}
}

// errTimeout: a wait's condition did not hold in time.
var errTimeout = errors.New("timed out")

// waitUntil returns when cond holds, checking it whenever one of the wakers'
// channels closes (a board's wait, the controller's Changed) and every 100 ms
// regardless, or fails after timeout.
func waitUntil(ctx context.Context, timeout time.Duration, what string, cond func() bool, wakers ...func() <-chan struct{}) error {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		// Take the channels before checking, so a change in between is not missed.
		chans := make([]<-chan struct{}, len(wakers))
		for i, w := range wakers {
			chans[i] = w()
		}
		if cond() {
			return nil
		}
		var any <-chan struct{}
		if len(chans) > 0 {
			any = mergeOne(chans)
		}
		select {
		case <-any:
		case <-tick.C:
		case <-deadline.C:
			return fmt.Errorf("%s: %w after %s", what, errTimeout, timeout)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// mergeOne returns the only channel, or one closed when any of them is.
func mergeOne(chans []<-chan struct{}) <-chan struct{} {
	if len(chans) == 1 {
		return chans[0]
	}
	out := make(chan struct{})
	var once sync.Once
	for _, c := range chans {
		go func() {
			select {
			case <-c:
				once.Do(func() { close(out) })
			case <-out:
			}
		}()
	}
	return out
}

// podWatch follows the bench's pods in one namespace, stamping each event
// with the time it arrived.
type podWatch struct {
	mu   sync.Mutex
	pods map[string]*corev1.Pod // by name; deleted pods removed
	// activeAt is when a pod (by UID) was first seen labelled active.
	activeAt map[types.UID]time.Time
	// readyAt is when a pod was first seen Running and Ready.
	readyAt map[types.UID]time.Time
	at      map[string]time.Time // arrival of each pod's latest event
	board   board
	w       watch.Interface
}

func watchPods(ctx context.Context, cs kubernetes.Interface, ns, sel string) (*podWatch, error) {
	list, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: sel})
	if err != nil {
		return nil, err
	}
	pw := &podWatch{pods: map[string]*corev1.Pod{}, activeAt: map[types.UID]time.Time{}, readyAt: map[types.UID]time.Time{}, at: map[string]time.Time{}}
	now := time.Now()
	for i := range list.Items {
		pw.apply(watch.Added, &list.Items[i], now)
	}
	rw, err := watchtools.NewRetryWatcherWithContext(ctx, list.ResourceVersion, &cache.ListWatch{
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			o.LabelSelector = sel
			return cs.CoreV1().Pods(ns).Watch(ctx, o)
		},
	})
	if err != nil {
		return nil, err
	}
	pw.w = rw
	go func() {
		for ev := range rw.ResultChan() {
			at := time.Now()
			if p, ok := ev.Object.(*corev1.Pod); ok {
				pw.apply(ev.Type, p, at)
			}
		}
	}()
	return pw, nil
}

func (pw *podWatch) apply(t watch.EventType, p *corev1.Pod, at time.Time) {
	pw.mu.Lock()
	pw.at[p.Name] = at
	switch t {
	case watch.Deleted:
		if cur, ok := pw.pods[p.Name]; ok && cur.UID == p.UID {
			delete(pw.pods, p.Name)
		}
	case watch.Added, watch.Modified:
		pw.pods[p.Name] = p
		if p.Labels[roleLabel] == activeRole && p.DeletionTimestamp == nil {
			if _, ok := pw.activeAt[p.UID]; !ok {
				pw.activeAt[p.UID] = at
			}
		}
		if runningReady(p) {
			if _, ok := pw.readyAt[p.UID]; !ok {
				pw.readyAt[p.UID] = at
			}
		}
	}
	pw.mu.Unlock()
	pw.board.bump()
}

func (pw *podWatch) stop() { pw.w.Stop() }

// get returns the latest state of the named pod.
func (pw *podWatch) get(name string) (*corev1.Pod, bool) {
	pw.mu.Lock()
	defer pw.mu.Unlock()
	p, ok := pw.pods[name]
	return p, ok
}

// activeSince returns when the pod was first seen labelled active.
func (pw *podWatch) activeSince(uid types.UID) (time.Time, bool) {
	pw.mu.Lock()
	defer pw.mu.Unlock()
	t, ok := pw.activeAt[uid]
	return t, ok
}

// updated returns when the pod's latest event arrived.
func (pw *podWatch) updated(name string) time.Time {
	pw.mu.Lock()
	defer pw.mu.Unlock()
	return pw.at[name]
}

// readySince returns when the pod was first seen Running and Ready.
func (pw *podWatch) readySince(uid types.UID) (time.Time, bool) {
	pw.mu.Lock()
	defer pw.mu.Unlock()
	t, ok := pw.readyAt[uid]
	return t, ok
}

// all returns every pod.
func (pw *podWatch) all() []*corev1.Pod {
	pw.mu.Lock()
	defer pw.mu.Unlock()
	out := make([]*corev1.Pod, 0, len(pw.pods))
	for _, p := range pw.pods {
		out = append(out, p)
	}
	return out
}

// group returns the pods of a group, by name.
func (pw *podWatch) group(g string) []*corev1.Pod {
	pw.mu.Lock()
	defer pw.mu.Unlock()
	var out []*corev1.Pod
	for _, p := range pw.pods {
		if p.Labels["app"] == g {
			out = append(out, p)
		}
	}
	return out
}

// sliceWatch follows a Service's EndpointSlices and keeps the history of
// its ready addresses.
type sliceWatch struct {
	mu      sync.Mutex
	slices  map[string]*discoveryv1.EndpointSlice
	history []endpointsAt
	board   board
	w       watch.Interface
}

// endpointsAt is the set of ready addresses from a moment on.
type endpointsAt struct {
	at    time.Time
	ready []string // sorted
}

func watchSlices(ctx context.Context, cs kubernetes.Interface, ns, service string) (*sliceWatch, error) {
	sel := discoveryv1.LabelServiceName + "=" + service
	list, err := cs.DiscoveryV1().EndpointSlices(ns).List(ctx, metav1.ListOptions{LabelSelector: sel})
	if err != nil {
		return nil, err
	}
	sw := &sliceWatch{slices: map[string]*discoveryv1.EndpointSlice{}}
	now := time.Now()
	for i := range list.Items {
		sw.apply(watch.Added, &list.Items[i], now)
	}
	rw, err := watchtools.NewRetryWatcherWithContext(ctx, list.ResourceVersion, &cache.ListWatch{
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			o.LabelSelector = sel
			return cs.DiscoveryV1().EndpointSlices(ns).Watch(ctx, o)
		},
	})
	if err != nil {
		return nil, err
	}
	sw.w = rw
	go func() {
		for ev := range rw.ResultChan() {
			at := time.Now()
			if s, ok := ev.Object.(*discoveryv1.EndpointSlice); ok {
				sw.apply(ev.Type, s, at)
			}
		}
	}()
	return sw, nil
}

func (sw *sliceWatch) apply(t watch.EventType, s *discoveryv1.EndpointSlice, at time.Time) {
	sw.mu.Lock()
	if t == watch.Deleted {
		delete(sw.slices, s.Name)
	} else if t == watch.Added || t == watch.Modified {
		sw.slices[s.Name] = s
	}
	var ready []string
	for _, sl := range sw.slices {
		for _, ep := range sl.Endpoints {
			// What kube-proxy routes to: ready endpoints (nil means ready).
			if ep.Conditions.Ready == nil || *ep.Conditions.Ready {
				ready = append(ready, ep.Addresses...)
			}
		}
	}
	slices.Sort(ready)
	ready = slices.Compact(ready)
	if n := len(sw.history); n == 0 || !slices.Equal(sw.history[n-1].ready, ready) {
		sw.history = append(sw.history, endpointsAt{at: at, ready: ready})
	}
	sw.mu.Unlock()
	sw.board.bump()
}

func (sw *sliceWatch) stop() { sw.w.Stop() }

// onlySince returns when the ready addresses became exactly {ip}, if they
// are that now.
func (sw *sliceWatch) onlySince(ip string) (time.Time, bool) {
	sw.mu.Lock()
	defer sw.mu.Unlock()
	n := len(sw.history)
	if n == 0 || !slices.Equal(sw.history[n-1].ready, []string{ip}) {
		return time.Time{}, false
	}
	return sw.history[n-1].at, true
}

// apps are the role listeners of the bench's pods: one per pod, bound to
// the pod's own address.
type apps struct {
	mu    sync.Mutex
	byPod map[string]*app
	board board
}

// app is one pod's listener and what it was told.
type app struct {
	l        *role.Listener
	state    role.State
	activeAt time.Time // first time it accepted the active role
}

func newApps() *apps { return &apps{byPod: map[string]*app{}} }

// listen binds the listener of a pod that is about to be created. It
// refuses messages addressed to another pod name.
func (a *apps) listen(ctx context.Context, pod string, addr netip.AddrPort) error {
	if !addr.Addr().IsLoopback() {
		return fmt.Errorf("listener address %s is not loopback", addr)
	}
	ap := &app{}
	l, err := role.Listen(ctx, role.Config{
		Addr:    addr.String(),
		PodName: pod,
		OnChange: func(s role.State) {
			a.mu.Lock()
			ap.state = s
			if s.Role == role.Active && ap.activeAt.IsZero() {
				ap.activeAt = s.Changed
			}
			a.mu.Unlock()
			a.board.bump()
		},
	})
	if err != nil {
		return err
	}
	ap.l = l
	a.mu.Lock()
	a.byPod[pod] = ap
	a.mu.Unlock()
	return nil
}

// state returns what the pod's app holds, and when it first became active.
func (a *apps) state(pod string) (role.State, time.Time, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	ap, ok := a.byPod[pod]
	if !ok {
		return role.State{}, time.Time{}, false
	}
	return ap.state, ap.activeAt, true
}

// close stops a pod's app: the process is gone.
func (a *apps) close(pod string) {
	a.mu.Lock()
	ap, ok := a.byPod[pod]
	delete(a.byPod, pod)
	a.mu.Unlock()
	if ok {
		_ = ap.l.Close()
	}
}

func (a *apps) closeAll() {
	a.mu.Lock()
	all := a.byPod
	a.byPod = map[string]*app{}
	a.mu.Unlock()
	for _, ap := range all {
		_ = ap.l.Close()
	}
}
