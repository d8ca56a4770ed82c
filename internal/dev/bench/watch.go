package bench

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/hapod/hapod/internal/dev/observe"
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

// podWatch is the bench's view of its pods in one namespace and, if it
// follows a Service, of that Service's EndpointSlices (internal/dev/observe,
// the tour's observer too): each event stamped with the time it arrived.
type podWatch struct {
	o *observe.Observer[struct{}]
}

// watchPods follows the pods of ns that sel selects, and service's
// EndpointSlices if service is not "".
func watchPods(ctx context.Context, cs kubernetes.Interface, ns, sel, service string) (*podWatch, error) {
	o, err := observe.Start[struct{}](ctx, cs, observe.Config{
		Namespace: ns, PodSelector: sel, Service: service,
		RoleLabel: roleLabel, ActiveValue: activeRole,
	})
	if err != nil {
		return nil, err
	}
	return &podWatch{o: o}, nil
}

func (pw *podWatch) stop() { pw.o.Stop() }

// changed is closed at the next change: a waker for waitUntil.
func (pw *podWatch) changed() <-chan struct{} { return pw.o.Changed() }

// get returns the latest state of the named pod.
func (pw *podWatch) get(name string) (*corev1.Pod, bool) {
	p, ok := pw.o.PodByName(name)
	return p.Object, ok && p.Object != nil
}

// activeAfter returns when the pod was first seen labelled active at or
// after t.
func (pw *podWatch) activeAfter(uid types.UID, t time.Time) (time.Time, bool) {
	p, ok := pw.o.Pod(uid)
	if !ok {
		return time.Time{}, false
	}
	at := p.LabelledAfter(activeRole, t)
	return at, !at.IsZero()
}

// updated returns when the named pod's latest event arrived.
func (pw *podWatch) updated(name string) time.Time {
	p, _ := pw.o.PodByName(name)
	return p.Updated
}

// readySince returns when the pod was first seen Running and Ready.
func (pw *podWatch) readySince(uid types.UID) (time.Time, bool) {
	p, ok := pw.o.Pod(uid)
	return p.ReadyAt, ok && !p.ReadyAt.IsZero()
}

// all returns every pod.
func (pw *podWatch) all() []*corev1.Pod {
	var out []*corev1.Pod
	for _, p := range pw.o.Pods() {
		if p.Object != nil {
			out = append(out, p.Object)
		}
	}
	return out
}

// group returns the pods of a group.
func (pw *podWatch) group(g string) []*corev1.Pod {
	var out []*corev1.Pod
	for _, p := range pw.all() {
		if p.Labels["app"] == g {
			out = append(out, p)
		}
	}
	return out
}

// onlySince returns when the Service's ready addresses became exactly {ip},
// if they are that now.
func (pw *podWatch) onlySince(ip string) (time.Time, bool) { return pw.o.ReadyOnlySince(ip) }

// apps are the role listeners of the bench's pods: one per pod, bound to
// the pod's own address.
type apps struct {
	mu    sync.Mutex
	byPod map[string]*app
	board board
	// fenced and changes count, over every app, the states with Fenced
	// set and every state change delivered.
	fenced, changes int
}

// app is one pod's listener and what it was told.
type app struct {
	l     *role.Listener
	state role.State
	// activations are the moments it took the active role, in order.
	activations []time.Time
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
			if s.Role == role.Active && ap.state.Role != role.Active {
				ap.activations = append(ap.activations, s.Changed)
			}
			ap.state = s
			a.changes++
			if s.Fenced {
				a.fenced++
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

// state returns what the pod's app holds (the zero State if it has no app).
func (a *apps) state(pod string) role.State {
	a.mu.Lock()
	defer a.mu.Unlock()
	if ap, ok := a.byPod[pod]; ok {
		return ap.state
	}
	return role.State{}
}

// activeAfter returns the first moment at or after t at which the pod's app
// took the active role (zero if it has not). Measured from a trigger at t,
// this is the failover's; an app that was active before t (a failover the
// bench did not cause) does not count until it takes the role again.
func (a *apps) activeAfter(pod string, t time.Time) time.Time {
	a.mu.Lock()
	defer a.mu.Unlock()
	if ap, ok := a.byPod[pod]; ok {
		for _, at := range ap.activations {
			if !at.Before(t) {
				return at
			}
		}
	}
	return time.Time{}
}

// activeBefore reports whether the pod's app took the active role before t.
func (a *apps) activeBefore(pod string, t time.Time) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	ap, ok := a.byPod[pod]
	return ok && len(ap.activations) > 0 && ap.activations[0].Before(t)
}

// counts returns how many Fenced states and state changes the apps have had.
func (a *apps) counts() (fenced, changes int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.fenced, a.changes
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
