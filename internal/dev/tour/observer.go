package tour

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
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/hapod/hapod/internal/controller"
	"github.com/hapod/hapod/internal/election"
	"github.com/hapod/hapod/internal/record"
	"github.com/hapod/hapod/pkg/role"
)

// labelChange is a change of a pod's role label or epoch annotation, as the tour saw it.
type labelChange struct {
	At    time.Time
	Role  string
	Epoch uint64
}

// appChange is a role change that a pod's process reported (-role-records), timed by
// the process: when its listener accepted the message.
type appChange struct {
	At    time.Time
	Role  string
	Epoch uint64
}

// podView is what the tour knows of one pod: what its watch saw (each time is when the
// tour saw it) and what its kubelet did.
type podView struct {
	Name     string
	UID      types.UID
	Seen     time.Time // first seen
	Running  time.Time // first seen Running with an IP
	IP       string    // the API's pod IP (never a destination)
	Role     string
	Epoch    uint64
	Labels   []labelChange
	Ready    bool       // the API's Ready condition
	Loopback netip.Addr // the host of its role-address annotation
	Deleting time.Time  // deletionTimestamp first seen
	Gone     time.Time  // seen deleted from the API

	// The tour's kubelet.
	// ReadyWritten is when the Ready status write was sent.
	ProcStarted, ProbeOK, ReadyWritten, ProcExited time.Time
	App                                            []appChange
}

// alive: neither deleting nor deleted.
func (p *podView) alive() bool { return p.Deleting.IsZero() && p.Gone.IsZero() }

// labelledAt is when the tour first saw the pod labelled role with epoch (any epoch if
// epoch is 0), or zero.
func (p *podView) labelledAt(role string, epoch uint64) time.Time {
	for _, c := range p.Labels {
		if c.Role == role && (epoch == 0 || c.Epoch == epoch) {
			return c.At
		}
	}
	return time.Time{}
}

// appSaidAt is when the pod's process first reported role (at epoch, any if 0), or zero.
func (p *podView) appSaidAt(role string, epoch uint64) time.Time {
	for _, c := range p.App {
		if c.Role == role && (epoch == 0 || c.Epoch == epoch) {
			return c.At
		}
	}
	return time.Time{}
}

// appRole is the last role the pod's process reported ("" before any).
func (p *podView) appRole() (string, uint64) {
	if len(p.App) == 0 {
		return "", 0
	}
	c := p.App[len(p.App)-1]
	return c.Role, c.Epoch
}

func (p *podView) clone() podView {
	c := *p
	c.Labels = slices.Clone(p.Labels)
	c.App = slices.Clone(p.App)
	return c
}

// sliceSnap is the union of the Service's EndpointSlices at one moment.
type sliceSnap struct {
	At        time.Time
	Endpoints []endpoint // sorted by IP
	Port      int
}

// readyIPs are the ready endpoints' IPs, sorted.
func (s sliceSnap) readyIPs() []string {
	var ips []string
	for _, e := range s.Endpoints {
		if e.Ready {
			ips = append(ips, e.IP)
		}
	}
	return ips
}

// listsOnly: the snapshot has exactly one endpoint, ip, and it is ready.
func (s sliceSnap) listsOnly(ip string) bool {
	return len(s.Endpoints) == 1 && s.Endpoints[0].IP == ip && s.Endpoints[0].Ready
}

// ctrlEvent is an Event the controller wrote.
type ctrlEvent struct {
	Seen   time.Time // when the tour saw it
	At     time.Time // its eventTime: when the controller recorded it
	Reason string
	Pod    string
	UID    types.UID
	Note   string
}

// observer keeps what the tour's watches saw, with the time it saw each thing, and lets
// the scenes wait for conditions on it.
type observer struct {
	roleLabel  string
	service    string
	controller string // the reportingController of the controller's Events

	mu       sync.Mutex
	pods     map[types.UID]*podView
	order    []types.UID // first-seen order
	parts    map[string]sliceSnap
	slices   []sliceSnap // every change of the union, in order
	events   []ctrlEvent
	records  []record.Record // the controller's failover records, as written
	problems []string
	changed  chan struct{} // closed and replaced on every change

	// onPod is called, outside the lock, for every pod event.
	onPod func(pod *corev1.Pod, deleted bool)

	factory informers.SharedInformerFactory
}

func newObserver(roleLabel, service string) *observer {
	return &observer{
		roleLabel:  roleLabel,
		service:    service,
		controller: controller.FieldOwner,
		pods:       map[types.UID]*podView{},
		parts:      map[string]sliceSnap{},
		changed:    make(chan struct{}),
	}
}

// start watches the namespace's pods, the Service's EndpointSlices and Events until ctx
// ends, and returns once the caches are synced.
func (o *observer) start(ctx context.Context, cs kubernetes.Interface, ns string) error {
	f := informers.NewSharedInformerFactoryWithOptions(cs, 0, informers.WithNamespace(ns))
	handlers := []struct {
		inf cache.SharedIndexInformer
		h   cache.ResourceEventHandlerFuncs
	}{
		{f.Core().V1().Pods().Informer(), cache.ResourceEventHandlerFuncs{
			AddFunc:    func(obj any) { o.podEvent(obj, false) },
			UpdateFunc: func(_, obj any) { o.podEvent(obj, false) },
			DeleteFunc: func(obj any) { o.podEvent(obj, true) },
		}},
		{f.Discovery().V1().EndpointSlices().Informer(), cache.ResourceEventHandlerFuncs{
			AddFunc:    func(obj any) { o.sliceEvent(obj, false) },
			UpdateFunc: func(_, obj any) { o.sliceEvent(obj, false) },
			DeleteFunc: func(obj any) { o.sliceEvent(obj, true) },
		}},
		{f.Events().V1().Events().Informer(), cache.ResourceEventHandlerFuncs{
			AddFunc: o.eventAdded,
		}},
	}
	for _, h := range handlers {
		if _, err := h.inf.AddEventHandler(h.h); err != nil {
			return err
		}
	}
	f.Start(ctx.Done())
	for typ, ok := range f.WaitForCacheSync(ctx.Done()) {
		if !ok {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("watching %v in namespace %s: cache did not sync", typ, ns)
		}
	}
	o.factory = f
	return nil
}

// shutdown waits for the watches to end; their context must be done.
func (o *observer) shutdown() {
	if o.factory != nil {
		o.factory.Shutdown()
	}
}

// changedLocked wakes the waiters.
func (o *observer) changedLocked() {
	close(o.changed)
	o.changed = make(chan struct{})
}

func (o *observer) podEvent(obj any, deleted bool) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return
	}
	now := time.Now()
	o.mu.Lock()
	p := o.pods[pod.UID]
	if p == nil {
		p = &podView{Name: pod.Name, UID: pod.UID, Seen: now}
		o.pods[pod.UID] = p
		o.order = append(o.order, pod.UID)
	}
	if deleted {
		if p.Gone.IsZero() {
			p.Gone = now
		}
	} else {
		p.IP = pod.Status.PodIP
		if p.Running.IsZero() && pod.Status.Phase == corev1.PodRunning && p.IP != "" {
			p.Running = now
		}
		label := pod.Labels[o.roleLabel]
		epoch, _ := strconv.ParseUint(pod.Annotations[role.EpochAnnotation], 10, 64)
		if len(p.Labels) == 0 || label != p.Role || epoch != p.Epoch {
			p.Labels = append(p.Labels, labelChange{At: now, Role: label, Epoch: epoch})
			p.Role, p.Epoch = label, epoch
		}
		p.Ready = election.PodReady(pod)
		if pod.DeletionTimestamp != nil && p.Deleting.IsZero() {
			p.Deleting = now
		}
		if ap, err := netip.ParseAddrPort(pod.Annotations[role.RoleAddressAnnotation]); err == nil {
			p.Loopback = ap.Addr()
		}
	}
	o.changedLocked()
	o.mu.Unlock()
	if o.onPod != nil {
		o.onPod(pod, deleted)
	}
}

func (o *observer) sliceEvent(obj any, deleted bool) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	s, ok := obj.(*discoveryv1.EndpointSlice)
	if !ok || s.Labels[discoveryv1.LabelServiceName] != o.service {
		return
	}
	now := time.Now()
	o.mu.Lock()
	defer o.mu.Unlock()
	if deleted {
		delete(o.parts, s.Name)
	} else {
		part := sliceSnap{}
		for _, p := range s.Ports {
			if p.Port != nil {
				part.Port = int(*p.Port)
				break
			}
		}
		for _, e := range s.Endpoints {
			ready := e.Conditions.Ready == nil || *e.Conditions.Ready
			for _, a := range e.Addresses {
				part.Endpoints = append(part.Endpoints, endpoint{IP: a, Ready: ready})
			}
		}
		o.parts[s.Name] = part
	}
	union := sliceSnap{At: now}
	for _, p := range o.parts {
		union.Endpoints = append(union.Endpoints, p.Endpoints...)
		if union.Port == 0 {
			union.Port = p.Port
		}
	}
	slices.SortFunc(union.Endpoints, func(a, b endpoint) int { return strings.Compare(a.IP, b.IP) })
	if n := len(o.slices); n > 0 && slices.Equal(o.slices[n-1].Endpoints, union.Endpoints) && o.slices[n-1].Port == union.Port {
		return
	}
	o.slices = append(o.slices, union)
	o.changedLocked()
}

func (o *observer) eventAdded(obj any) {
	e, ok := obj.(*eventsv1.Event)
	if !ok || e.ReportingController != o.controller {
		return
	}
	now := time.Now()
	o.mu.Lock()
	defer o.mu.Unlock()
	o.events = append(o.events, ctrlEvent{Seen: now, At: e.EventTime.Time, Reason: e.Reason,
		Pod: e.Regarding.Name, UID: e.Regarding.UID, Note: e.Note})
	o.changedLocked()
}

// recorded adds one of the controller's failover records.
func (o *observer) recorded(r record.Record) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.records = append(o.records, r)
	o.changedLocked()
}

// recordLocked is the controller's record of pod uid's promotion to epoch.
func (o *observer) recordLocked(uid types.UID, epoch uint64) (record.Record, bool) {
	for _, r := range o.records {
		if types.UID(r.UID) == uid && r.Epoch == epoch {
			return r, true
		}
	}
	return record.Record{}, false
}

// promotionsSinceLocked are the controller's records of promotions it saw the trigger
// of after t.
func (o *observer) promotionsSinceLocked(t time.Time) []record.Record {
	var rs []record.Record
	for _, r := range o.records {
		if r.Seen.After(t) {
			rs = append(rs, r)
		}
	}
	return rs
}

// problem records something that went wrong outside the scenes' own steps (a process
// that died by itself, a write that failed), for the error of a wait that then fails.
func (o *observer) problem(format string, args ...any) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.problems = append(o.problems, fmt.Sprintf(format, args...))
	o.changedLocked()
}

// mark changes the kubelet's part of a pod's view.
func (o *observer) mark(uid types.UID, f func(p *podView)) {
	o.mu.Lock()
	defer o.mu.Unlock()
	p := o.pods[uid]
	if p == nil {
		return
	}
	f(p)
	o.changedLocked()
}

// appSaid records a role change that a pod's process reported.
func (o *observer) appSaid(uid types.UID, at time.Time, role string, epoch uint64) {
	o.mark(uid, func(p *podView) { p.App = append(p.App, appChange{At: at, Role: role, Epoch: epoch}) })
}

// errInterrupted wraps the context's error when the tour is stopped during a wait.
var errInterrupted = errors.New("interrupted")

// waitFor evaluates cond under the lock now and after every change until it returns
// true. why says what is missing; it ends the error when timeout passes first.
func (o *observer) waitFor(ctx context.Context, timeout time.Duration, what string, cond func() (ok bool, why string)) error {
	tctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		o.mu.Lock()
		ok, why := cond()
		ch := o.changed
		problems := slices.Clone(o.problems)
		o.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-ch:
		case <-tctx.Done():
			if ctx.Err() != nil {
				return fmt.Errorf("%w while waiting for %s", errInterrupted, what)
			}
			msg := fmt.Sprintf("%s: not within %s", what, timeout)
			if why != "" {
				msg += " (" + why + ")"
			}
			if len(problems) > 0 {
				msg += "; meanwhile: " + strings.Join(problems, "; ")
			}
			return errors.New(msg)
		}
	}
}

// read runs f under the lock, for a consistent look at several things.
func (o *observer) read(f func()) {
	o.mu.Lock()
	defer o.mu.Unlock()
	f()
}

// pod returns a copy of a pod's view.
func (o *observer) pod(uid types.UID) (podView, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	p, ok := o.pods[uid]
	if !ok {
		return podView{}, false
	}
	return p.clone(), true
}

// activeLocked is the live pod labelled active (the highest epoch if several), or nil.
func (o *observer) activeLocked(activeValue string) *podView {
	var best *podView
	for _, uid := range o.order {
		p := o.pods[uid]
		if p.alive() && p.Role == activeValue && (best == nil || p.Epoch > best.Epoch) {
			best = p
		}
	}
	return best
}

// liveLocked are the pods neither deleting nor deleted, in first-seen order.
func (o *observer) liveLocked() []*podView {
	var ps []*podView
	for _, uid := range o.order {
		if p := o.pods[uid]; p.alive() {
			ps = append(ps, p)
		}
	}
	return ps
}

func (o *observer) lastSliceLocked() sliceSnap {
	if len(o.slices) == 0 {
		return sliceSnap{}
	}
	return o.slices[len(o.slices)-1]
}

// slicesSince are the snapshots from the one current at t on.
func (o *observer) slicesSinceLocked(t time.Time) []sliceSnap {
	i := 0
	for j, s := range o.slices {
		if !s.At.After(t) {
			i = j
		}
	}
	return slices.Clone(o.slices[i:])
}

// eventsSince are the controller's Events seen after t with the given reason.
func (o *observer) eventsSinceLocked(t time.Time, reason string) []ctrlEvent {
	var es []ctrlEvent
	for _, e := range o.events {
		if e.Seen.After(t) && (reason == "" || e.Reason == reason) {
			es = append(es, e)
		}
	}
	return es
}

// routeTable is what the load needs: the Service's endpoints, its port, and the
// loopback address of each pod IP.
func (o *observer) routeTable() ([]endpoint, int, map[string]netip.Addr) {
	o.mu.Lock()
	defer o.mu.Unlock()
	s := o.lastSliceLocked()
	m := make(map[string]netip.Addr, len(o.pods))
	for _, p := range o.pods {
		// A pod's process listens once it was started; the IP of a deleted pod may
		// have been handed to another.
		if p.Gone.IsZero() && p.IP != "" && p.Loopback.IsValid() && !p.ProcStarted.IsZero() {
			m[p.IP] = p.Loopback
		}
	}
	return s.Endpoints, s.Port, m
}

// describeLocked summarises the state for error messages.
func (o *observer) describeLocked() string {
	var parts []string
	for _, p := range o.liveLocked() {
		r, e := p.appRole()
		parts = append(parts, fmt.Sprintf("%s[label %s epoch %d, ready %t, app %s/%d]", p.Name, p.Role, p.Epoch, p.Ready, r, e))
	}
	return fmt.Sprintf("pods %s; EndpointSlice ready %v", strings.Join(parts, " "), o.lastSliceLocked().readyIPs())
}
