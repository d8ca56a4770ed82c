// Package observe is the timestamped cluster observer of the tour and the
// bench: it watches a namespace's pods (and, if asked, a Service's
// EndpointSlices and a controller's Events) and keeps what it saw with the
// time it saw each thing, so that a timeline or a latency sample is read from
// one history, and waits for conditions on that history without polling.
//
// Its lock also guards what a caller keeps next to it: a caller's per-pod
// data (the type parameter X: the tour's kubelet and app accounts) and
// anything it changes inside Update. Methods ending in Locked are for use
// inside Read, Update and WaitFor callbacks.
package observe

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	coreinformers "k8s.io/client-go/informers/core/v1"
	discoveryinformers "k8s.io/client-go/informers/discovery/v1"
	eventsinformers "k8s.io/client-go/informers/events/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/hapod/hapod/internal/election"
	"github.com/hapod/hapod/pkg/role"
)

// Config says what to observe.
type Config struct {
	Namespace string
	// PodSelector selects the pods (a label selector; empty: every pod).
	PodSelector string
	// Service, if set, has its EndpointSlices followed.
	Service string
	// EventsFrom, if set, keeps the Events whose reportingController it is.
	EventsFrom string
	// RoleLabel is the label each pod's history follows (with its epoch
	// annotation); a pod's Active time is when it was first seen labelled
	// ActiveValue.
	RoleLabel, ActiveValue string
	// OnPod, if set, is called outside the lock for every pod event; it must
	// not block.
	OnPod func(pod *corev1.Pod, deleted bool)
}

// LabelChange is a change of a pod's role label or epoch annotation.
type LabelChange struct {
	At    time.Time
	Role  string
	Epoch uint64
}

// Pod is what the observer saw of one pod (by UID); every time is when it saw
// the thing. X is the caller's own data about the pod, copied by value.
type Pod[X any] struct {
	Name   string
	UID    types.UID
	Object *corev1.Pod // the latest version seen
	// Seen: first seen. Updated: its latest event. Running: first Running
	// with an IP. ReadyAt: first Running, Ready, with an IP and not being
	// deleted. Active: first labelled active while not being deleted.
	// Deleting: deletionTimestamp first seen. Gone: seen deleted.
	Seen, Updated, Running, ReadyAt, Active, Deleting, Gone time.Time
	IP                                                      string // the API's pod IP
	Role                                                    string
	Epoch                                                   uint64
	Labels                                                  []LabelChange
	Ready                                                   bool       // the Ready condition now
	Loopback                                                netip.Addr // the host of its role-address annotation
	X                                                       X
}

// Alive reports whether the pod is neither deleting nor deleted.
func (p *Pod[X]) Alive() bool { return p.Deleting.IsZero() && p.Gone.IsZero() }

// LabelledAt is when the pod was first seen labelled role with epoch (any
// epoch if 0), or zero.
func (p *Pod[X]) LabelledAt(role string, epoch uint64) time.Time {
	for _, c := range p.Labels {
		if c.Role == role && (epoch == 0 || c.Epoch == epoch) {
			return c.At
		}
	}
	return time.Time{}
}

// LabelledAfter is when the pod was first seen labelled role at or after t,
// or zero: a failover's label, measured from its trigger at t, even for a
// pod that held the role once before.
func (p *Pod[X]) LabelledAfter(role string, t time.Time) time.Time {
	for _, c := range p.Labels {
		if c.Role == role && !c.At.Before(t) {
			return c.At
		}
	}
	return time.Time{}
}

// Clone copies the pod's view (X by value).
func (p *Pod[X]) Clone() Pod[X] {
	c := *p
	c.Labels = slices.Clone(p.Labels)
	return c
}

// Endpoint is one address of a Service's EndpointSlices.
type Endpoint struct {
	IP    string
	Ready bool
}

// Snapshot is the union of the Service's EndpointSlices from a moment on.
type Snapshot struct {
	At        time.Time
	Endpoints []Endpoint // sorted by IP
	Port      int
}

// ReadyIPs are the ready endpoints' IPs, sorted: what kube-proxy routes to.
func (s Snapshot) ReadyIPs() []string {
	var ips []string
	for _, e := range s.Endpoints {
		if e.Ready {
			ips = append(ips, e.IP)
		}
	}
	return ips
}

// ListsOnly reports whether the snapshot has exactly one endpoint, ip, and it is ready.
func (s Snapshot) ListsOnly(ip string) bool {
	return len(s.Endpoints) == 1 && s.Endpoints[0].IP == ip && s.Endpoints[0].Ready
}

// Event is an Event of the controller named by Config.EventsFrom.
type Event struct {
	Seen   time.Time // when the observer saw it
	At     time.Time // its eventTime: when the controller recorded it
	Reason string
	Pod    string
	UID    types.UID
	Note   string
}

// Observer keeps the history. Its methods are safe for concurrent use.
type Observer[X any] struct {
	cfg Config

	mu      sync.Mutex
	pods    map[types.UID]*Pod[X]
	order   []types.UID          // first-seen order
	byName  map[string]types.UID // the latest pod seen with each name
	parts   map[string]Snapshot
	slices  []Snapshot // every change of the union, in order
	events  []Event
	changed chan struct{} // closed and replaced on every change

	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// Start watches what cfg names until Stop (or ctx's end) and returns once the
// caches are synced.
func Start[X any](ctx context.Context, cs kubernetes.Interface, cfg Config) (*Observer[X], error) {
	o := &Observer[X]{cfg: cfg, pods: map[types.UID]*Pod[X]{}, byName: map[string]types.UID{}, parts: map[string]Snapshot{}, changed: make(chan struct{})}
	ctx, o.cancel = context.WithCancel(ctx)
	ns := cfg.Namespace
	infs := []cache.SharedIndexInformer{coreinformers.NewFilteredPodInformer(cs, ns, 0, nil, func(l *metav1.ListOptions) {
		l.LabelSelector = cfg.PodSelector
	})}
	handlers := []cache.ResourceEventHandlerFuncs{{
		AddFunc:    func(obj any) { o.podEvent(obj, false) },
		UpdateFunc: func(_, obj any) { o.podEvent(obj, false) },
		DeleteFunc: func(obj any) { o.podEvent(obj, true) },
	}}
	if cfg.Service != "" {
		infs = append(infs, discoveryinformers.NewFilteredEndpointSliceInformer(cs, ns, 0, nil, func(l *metav1.ListOptions) {
			l.LabelSelector = discoveryv1.LabelServiceName + "=" + cfg.Service
		}))
		handlers = append(handlers, cache.ResourceEventHandlerFuncs{
			AddFunc:    func(obj any) { o.sliceEvent(obj, false) },
			UpdateFunc: func(_, obj any) { o.sliceEvent(obj, false) },
			DeleteFunc: func(obj any) { o.sliceEvent(obj, true) },
		})
	}
	if cfg.EventsFrom != "" {
		infs = append(infs, eventsinformers.NewEventInformer(cs, ns, 0, nil))
		handlers = append(handlers, cache.ResourceEventHandlerFuncs{AddFunc: o.eventAdded})
	}
	var synced []cache.InformerSynced
	for i, inf := range infs {
		if _, err := inf.AddEventHandler(handlers[i]); err != nil {
			o.Stop()
			return nil, err
		}
		o.wg.Go(func() { inf.Run(ctx.Done()) })
		synced = append(synced, inf.HasSynced)
	}
	if !cache.WaitForCacheSync(ctx.Done(), synced...) {
		err := ctx.Err()
		o.Stop()
		return nil, fmt.Errorf("watching namespace %s: caches did not sync: %w", ns, err)
	}
	return o, nil
}

// Stop ends the watches and waits for them.
func (o *Observer[X]) Stop() {
	o.cancel()
	o.wg.Wait()
}

// changedLocked wakes the waiters.
func (o *Observer[X]) changedLocked() {
	close(o.changed)
	o.changed = make(chan struct{})
}

// unwrap returns the object of a delete whose final state the informer missed.
func unwrap(obj any) any {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		return d.Obj
	}
	return obj
}

func (o *Observer[X]) podEvent(obj any, deleted bool) {
	pod, ok := unwrap(obj).(*corev1.Pod)
	if !ok {
		return
	}
	now := time.Now()
	o.mu.Lock()
	p := o.pods[pod.UID]
	if p == nil {
		p = &Pod[X]{Name: pod.Name, UID: pod.UID, Seen: now}
		o.pods[pod.UID] = p
		o.order = append(o.order, pod.UID)
		o.byName[pod.Name] = pod.UID
	}
	p.Updated = now
	if deleted {
		if p.Gone.IsZero() {
			p.Gone = now
		}
	} else {
		o.applyLocked(p, pod, now)
	}
	o.changedLocked()
	o.mu.Unlock()
	if o.cfg.OnPod != nil {
		o.cfg.OnPod(pod, deleted)
	}
}

func (o *Observer[X]) applyLocked(p *Pod[X], pod *corev1.Pod, now time.Time) {
	p.Object, p.IP = pod, pod.Status.PodIP
	running := pod.Status.Phase == corev1.PodRunning && p.IP != ""
	if p.Running.IsZero() && running {
		p.Running = now
	}
	p.Ready = election.PodReady(pod)
	if p.ReadyAt.IsZero() && running && p.Ready && pod.DeletionTimestamp == nil {
		p.ReadyAt = now
	}
	label := pod.Labels[o.cfg.RoleLabel]
	epoch, _ := strconv.ParseUint(pod.Annotations[role.EpochAnnotation], 10, 64)
	if len(p.Labels) == 0 || label != p.Role || epoch != p.Epoch {
		p.Labels = append(p.Labels, LabelChange{At: now, Role: label, Epoch: epoch})
		p.Role, p.Epoch = label, epoch
	}
	if p.Active.IsZero() && label == o.cfg.ActiveValue && pod.DeletionTimestamp == nil {
		p.Active = now
	}
	if pod.DeletionTimestamp != nil && p.Deleting.IsZero() {
		p.Deleting = now
	}
	if ap, err := netip.ParseAddrPort(pod.Annotations[role.RoleAddressAnnotation]); err == nil {
		p.Loopback = ap.Addr()
	}
}

func (o *Observer[X]) sliceEvent(obj any, deleted bool) {
	s, ok := unwrap(obj).(*discoveryv1.EndpointSlice)
	if !ok {
		return
	}
	now := time.Now()
	o.mu.Lock()
	defer o.mu.Unlock()
	if deleted {
		delete(o.parts, s.Name)
	} else {
		o.parts[s.Name] = snapshotOf(s)
	}
	union := Snapshot{At: now}
	for _, p := range o.parts {
		union.Endpoints = append(union.Endpoints, p.Endpoints...)
		if union.Port == 0 {
			union.Port = p.Port
		}
	}
	slices.SortFunc(union.Endpoints, func(a, b Endpoint) int { return strings.Compare(a.IP, b.IP) })
	if n := len(o.slices); n > 0 && slices.Equal(o.slices[n-1].Endpoints, union.Endpoints) && o.slices[n-1].Port == union.Port {
		return
	}
	o.slices = append(o.slices, union)
	o.changedLocked()
}

// snapshotOf is one EndpointSlice's endpoints (nil ready counts as ready, as
// kube-proxy counts it) and its first port.
func snapshotOf(s *discoveryv1.EndpointSlice) Snapshot {
	var part Snapshot
	for _, p := range s.Ports {
		if p.Port != nil {
			part.Port = int(*p.Port)
			break
		}
	}
	for _, e := range s.Endpoints {
		ready := e.Conditions.Ready == nil || *e.Conditions.Ready
		for _, a := range e.Addresses {
			part.Endpoints = append(part.Endpoints, Endpoint{IP: a, Ready: ready})
		}
	}
	return part
}

func (o *Observer[X]) eventAdded(obj any) {
	e, ok := obj.(*eventsv1.Event)
	if !ok || e.ReportingController != o.cfg.EventsFrom {
		return
	}
	now := time.Now()
	o.mu.Lock()
	defer o.mu.Unlock()
	o.events = append(o.events, Event{Seen: now, At: e.EventTime.Time, Reason: e.Reason,
		Pod: e.Regarding.Name, UID: e.Regarding.UID, Note: e.Note})
	o.changedLocked()
}

// Changed returns a channel that is closed at the next change.
func (o *Observer[X]) Changed() <-chan struct{} {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.changed
}

// Read runs f under the lock, for a consistent look at several things.
func (o *Observer[X]) Read(f func()) {
	o.mu.Lock()
	defer o.mu.Unlock()
	f()
}

// Update runs f under the lock and wakes the waiters: for the caller's own
// data next to the history.
func (o *Observer[X]) Update(f func()) {
	o.mu.Lock()
	defer o.mu.Unlock()
	f()
	o.changedLocked()
}

// Mark changes the caller's data (or anything else) of pod uid, if seen.
func (o *Observer[X]) Mark(uid types.UID, f func(p *Pod[X])) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if p := o.pods[uid]; p != nil {
		f(p)
		o.changedLocked()
	}
}

// ErrTimeout is returned when a WaitFor's condition did not hold in time.
var ErrTimeout = errors.New("not within")

// WaitFor evaluates cond under the lock now and after every change until it
// returns true. why says what is missing; it ends the error when timeout
// passes first (wrapping ErrTimeout), which names what.
func (o *Observer[X]) WaitFor(ctx context.Context, timeout time.Duration, what string, cond func() (ok bool, why string)) error {
	return o.WaitForEvery(ctx, timeout, 0, what, cond)
}

// WaitForEvery is WaitFor for a condition that also reads what the observer
// does not see (files, say): it evaluates cond every interval as well as
// after every change (interval 0: after changes only). A condition that
// became true through such a read, with no change of the cluster after it,
// would otherwise wait until timeout.
func (o *Observer[X]) WaitForEvery(ctx context.Context, timeout, every time.Duration, what string, cond func() (ok bool, why string)) error {
	tctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var tick <-chan time.Time
	if every > 0 {
		t := time.NewTicker(every)
		defer t.Stop()
		tick = t.C
	}
	for {
		o.mu.Lock()
		ok, why := cond()
		ch := o.changed
		o.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-ch:
		case <-tick:
		case <-tctx.Done():
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if why != "" {
				why = " (" + why + ")"
			}
			return fmt.Errorf("%s: %w %s%s", what, ErrTimeout, timeout, why)
		}
	}
}

// PodLocked is the pod with uid, or nil.
func (o *Observer[X]) PodLocked(uid types.UID) *Pod[X] { return o.pods[uid] }

// PodByNameLocked is the latest pod named name that is still in the API, or nil.
func (o *Observer[X]) PodByNameLocked(name string) *Pod[X] {
	if p := o.pods[o.byName[name]]; p != nil && p.Gone.IsZero() {
		return p
	}
	return nil
}

// PodsLocked are the pods still in the API (deleting ones included), in
// first-seen order.
func (o *Observer[X]) PodsLocked() []*Pod[X] {
	var ps []*Pod[X]
	for _, uid := range o.order {
		if p := o.pods[uid]; p.Gone.IsZero() {
			ps = append(ps, p)
		}
	}
	return ps
}

// LiveLocked are the pods neither deleting nor deleted, in first-seen order.
func (o *Observer[X]) LiveLocked() []*Pod[X] {
	var ps []*Pod[X]
	for _, uid := range o.order {
		if p := o.pods[uid]; p.Alive() {
			ps = append(ps, p)
		}
	}
	return ps
}

// ActiveLocked is the live pod labelled active (the highest epoch if
// several), or nil.
func (o *Observer[X]) ActiveLocked() *Pod[X] {
	var best *Pod[X]
	for _, p := range o.LiveLocked() {
		if p.Role == o.cfg.ActiveValue && (best == nil || p.Epoch > best.Epoch) {
			best = p
		}
	}
	return best
}

// LastSliceLocked is the current union of the Service's EndpointSlices.
func (o *Observer[X]) LastSliceLocked() Snapshot {
	if len(o.slices) == 0 {
		return Snapshot{}
	}
	return o.slices[len(o.slices)-1]
}

// SlicesSinceLocked are the snapshots from the one current at t on.
func (o *Observer[X]) SlicesSinceLocked(t time.Time) []Snapshot {
	i := 0
	for j, s := range o.slices {
		if !s.At.After(t) {
			i = j
		}
	}
	return slices.Clone(o.slices[i:])
}

// EventsSinceLocked are the Events seen after t with reason (any if "").
func (o *Observer[X]) EventsSinceLocked(t time.Time, reason string) []Event {
	var es []Event
	for _, e := range o.events {
		if e.Seen.After(t) && (reason == "" || e.Reason == reason) {
			es = append(es, e)
		}
	}
	return es
}

// Pod returns a copy of the pod with uid.
func (o *Observer[X]) Pod(uid types.UID) (Pod[X], bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if p := o.pods[uid]; p != nil {
		return p.Clone(), true
	}
	return Pod[X]{}, false
}

// PodByName returns a copy of the latest pod named name still in the API.
func (o *Observer[X]) PodByName(name string) (Pod[X], bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if p := o.PodByNameLocked(name); p != nil {
		return p.Clone(), true
	}
	return Pod[X]{}, false
}

// Pods returns copies of the pods still in the API.
func (o *Observer[X]) Pods() []Pod[X] {
	o.mu.Lock()
	defer o.mu.Unlock()
	var out []Pod[X]
	for _, p := range o.PodsLocked() {
		out = append(out, p.Clone())
	}
	return out
}

// ReadyOnlySince returns when the Service's ready addresses became exactly
// {ip}, if they are that now.
func (o *Observer[X]) ReadyOnlySince(ip string) (time.Time, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	var since time.Time
	for i := len(o.slices) - 1; i >= 0 && slices.Equal(o.slices[i].ReadyIPs(), []string{ip}); i-- {
		since = o.slices[i].At
	}
	return since, !since.IsZero()
}
