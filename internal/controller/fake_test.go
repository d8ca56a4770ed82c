package controller

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/hapod/hapod/internal/config"
	"github.com/hapod/hapod/internal/notify"
	"github.com/hapod/hapod/pkg/role"
)

// This file runs the reconciler against controller-runtime's fake client
// (faults injected with interceptor.Funcs) and real pkg/role listeners on
// 127.0.0.1, and checks what the apps held over the whole test.

// AppHistory (exported for the cluster tests) records every state change of every app (listener) and
// checks the protocol's promise over the whole history.
type AppHistory struct {
	mu      sync.Mutex
	changes []appChange
}

type appChange struct {
	pod string
	s   role.State
}

func (h *AppHistory) Record(pod string) func(role.State) {
	return func(s role.State) {
		h.mu.Lock()
		defer h.mu.Unlock()
		h.changes = append(h.changes, appChange{pod, s})
	}
}

// Check fails the test if two apps were ever active at once, or two apps
// were ever told active at the same epoch. Changes are ordered by the time
// each listener accepted them (before its ack), not by when OnChange ran.
func (h *AppHistory) Check(t testing.TB) {
	t.Helper()
	h.mu.Lock()
	cs := slices.Clone(h.changes)
	h.mu.Unlock()
	slices.SortStableFunc(cs, func(a, b appChange) int { return a.s.Changed.Compare(b.s.Changed) })
	active := map[string]uint64{}
	activeAt := map[uint64]string{}
	for _, c := range cs {
		if c.s.Role == role.Active {
			if p, ok := activeAt[c.s.Epoch]; ok && p != c.pod {
				t.Errorf("apps %s and %s both active at epoch %d", p, c.pod, c.s.Epoch)
			}
			activeAt[c.s.Epoch] = c.pod
			active[c.pod] = c.s.Epoch
		} else {
			delete(active, c.pod)
		}
		if len(active) > 1 {
			t.Errorf("two apps active at once after %s took %s@%d: %v", c.pod, c.s.Role, c.s.Epoch, active)
		}
	}
}

// writeLog records the API writes the reconciler makes.
type writeLog struct {
	mu     sync.Mutex
	writes []string // "patch pod role=active epoch=2", "create Lease", ...
}

func (w *writeLog) add(s string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.writes = append(w.writes, s)
}

func (w *writeLog) take() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := w.writes
	w.writes = nil
	return out
}

// eventLog is an events.EventRecorder that keeps "Type Reason pod".
type eventLog struct {
	mu     sync.Mutex
	events []string
}

func (e *eventLog) Eventf(regarding, _ runtime.Object, eventtype, reason, _, note string, args ...any) {
	e.mu.Lock()
	defer e.mu.Unlock()
	name := ""
	if o, ok := regarding.(client.Object); ok {
		name = o.GetName()
	}
	e.events = append(e.events, eventtype+" "+reason+" "+name+": "+fmt.Sprintf(note, args...))
}

func (e *eventLog) list() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.events)
}

func (e *eventLog) count(reason string) int {
	n := 0
	for _, ev := range e.list() {
		if strings.Fields(ev)[1] == reason {
			n++
		}
	}
	return n
}

// rolePatch decodes the role and epoch a pod patch writes.
func rolePatch(obj client.Object, p client.Patch) (roleValue, epoch string) {
	data, _ := p.Data(obj)
	var m struct {
		Metadata struct {
			Labels      map[string]string `json:"labels"`
			Annotations map[string]string `json:"annotations"`
		} `json:"metadata"`
	}
	_ = json.Unmarshal(data, &m)
	return m.Metadata.Labels["role"], m.Metadata.Annotations[role.EpochAnnotation]
}

// fakeWorld is one group of pods on the fake client, each with a real
// listener, and a reconciler.
type fakeWorld struct {
	t       testing.TB
	cfg     config.Config
	c       client.WithWatch // the fake client, without the faults
	r       *Reconciler
	req     reconcile.Request
	apps    map[string]*role.Listener
	history *AppHistory
	writes  *writeLog
	events  *eventLog
	// patch, if set, runs instead of each pod PATCH; next does the real one.
	patch func(ctx context.Context, pod, roleValue, epoch string, next func() error) error
	// get, if set, runs instead of each uncached GET of a pod.
	get func(ctx context.Context, next func() error) error
}

// worldOptions adjust a fakeWorld's listeners and Notifier before they
// start.
type worldOptions struct {
	listener func(*role.Config)
	notifier func(*notify.Config)
}

// newFakeWorld creates pods (oldest first; none labelled active) with
// listeners, and a reconciler whose Deps may be adjusted by deps.
func newFakeWorld(t testing.TB, names []string, deps func(*Deps), opts ...worldOptions) *fakeWorld {
	t.Helper()
	w := &fakeWorld{t: t, history: &AppHistory{}, writes: &writeLog{}, events: &eventLog{}, apps: map[string]*role.Listener{}}
	w.cfg = config.Default()
	w.cfg.WatchNodes = false
	w.cfg.NotifyDeadline = 2 * time.Second
	w.cfg.NotifyRetry = 100 * time.Millisecond
	w.cfg.DemoteAckTimeout = 2 * time.Second // generous: the machine is shared; a live app acks in microseconds
	w.req = reconcile.Request{NamespacedName: types.NamespacedName{Namespace: "ns", Name: "hapod"}}

	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	base := time.Now().Add(-time.Hour)
	var objs []client.Object
	for i, name := range names {
		uid := types.UID("uid-" + name)
		lc := role.Config{Addr: "127.0.0.1:0", PodUID: string(uid), OnChange: w.history.Record(name)}
		for _, o := range opts {
			if o.listener != nil {
				o.listener(&lc)
			}
		}
		l, err := role.Listen(t.Context(), lc)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		w.apps[name] = l
		objs = append(objs, testPod(name, uid, base.Add(time.Duration(i)*time.Minute), l.Addr()))
	}
	w.c = fake.NewClientBuilder().WithScheme(scheme).WithObjects(objs...).
		WithIndex(&corev1.Pod{}, groupIndex, func(o client.Object) []string {
			return []string{GroupOf(o.(*corev1.Pod), w.cfg.GroupLabel)}
		}).Build()
	faulty := interceptor.NewClient(w.c, interceptor.Funcs{
		Patch: func(ctx context.Context, c client.WithWatch, obj client.Object, p client.Patch, opts ...client.PatchOption) error {
			rv, ep := rolePatch(obj, p)
			if _, ok := ctx.Deadline(); !ok {
				t.Errorf("PATCH of %s without a deadline", obj.GetName())
			}
			next := func() error { return c.Patch(ctx, obj, p, opts...) }
			var err error
			if w.patch != nil {
				err = w.patch(ctx, obj.GetName(), rv, ep, next)
			} else {
				err = next()
			}
			w.writes.add(fmt.Sprintf("patch %s role=%s epoch=%s err=%v", obj.GetName(), rv, ep, err != nil))
			return err
		},
		Create: func(ctx context.Context, c client.WithWatch, obj client.Object, opts ...client.CreateOption) error {
			w.writes.add(fmt.Sprintf("create %T %s", obj, obj.GetName()))
			return c.Create(ctx, obj, opts...)
		},
		Update: func(ctx context.Context, c client.WithWatch, obj client.Object, opts ...client.UpdateOption) error {
			w.writes.add(fmt.Sprintf("update %T %s", obj, obj.GetName()))
			return c.Update(ctx, obj, opts...)
		},
		Delete: func(ctx context.Context, c client.WithWatch, obj client.Object, opts ...client.DeleteOption) error {
			w.writes.add(fmt.Sprintf("delete %T %s", obj, obj.GetName()))
			return c.Delete(ctx, obj, opts...)
		},
	})
	reader := interceptor.NewClient(w.c, interceptor.Funcs{
		Get: func(ctx context.Context, c client.WithWatch, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
			next := func() error { return c.Get(ctx, key, obj, opts...) }
			if _, isPod := obj.(*corev1.Pod); isPod {
				w.writes.add("get pod " + key.Name)
				if w.get != nil {
					return w.get(ctx, next)
				}
			}
			return next()
		},
	})
	nc := notify.Config{ListenAddr: "127.0.0.1:0", Deadline: w.cfg.NotifyDeadline}
	for _, o := range opts {
		if o.notifier != nil {
			o.notifier(&nc)
		}
	}
	n, err := notify.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	d := Deps{Client: faulty, APIReader: reader, Recorder: w.events, Notifier: n}
	if deps != nil {
		deps(&d)
	}
	w.r = New(w.cfg, d)
	// The role-lease renewal loop, as the manager runs it: without it every
	// granted lease would lapse and the group fail over again.
	go func() { _ = w.r.leases.Start(t.Context()) }()
	return w
}

// testPod is a Running, Ready pod with a critical app container whose
// role listener is at addr.
func testPod(name string, uid types.UID, created time.Time, addr net.Addr) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: "ns", Name: name, UID: uid, CreationTimestamp: metav1.NewTime(created),
			Labels:      map[string]string{"app": "hapod", "role": "standby"},
			Annotations: map[string]string{role.RoleAddressAnnotation: addr.String()},
			// A finalizer keeps a deleted pod (with its deletionTimestamp)
			// in the fake client, as graceful termination does.
			Finalizers: []string{"test.hapod.io/keep"},
		},
		// restartPolicy Never, as deploy/example ships it: the kubelet
		// leaves a dead critical container dead (no CriticalRestartPolicy
		// warning).
		Spec: corev1.PodSpec{Containers: []corev1.Container{{
			Name: "app", Env: []corev1.EnvVar{{Name: "pwcriticality", Value: "critical"}},
			RestartPolicy: ptr.To(corev1.ContainerRestartPolicyNever),
		}}},
		Status: corev1.PodStatus{
			Phase: corev1.PodRunning, PodIP: "127.0.0.1",
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: metav1.NewTime(created)}},
			ContainerStatuses: []corev1.ContainerStatus{{Name: "app", Ready: true,
				State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: metav1.NewTime(created)}}}},
		},
	}
}

// reconcile runs one reconcile, as a worker would.
func (w *fakeWorld) reconcile() (reconcile.Result, error) {
	return w.r.Reconcile(w.t.Context(), w.req)
}

// settle reconciles until cond holds, as the work queue would retry (with
// a short pause for a retry; the wait itself is a poll with a deadline).
func (w *fakeWorld) settle(what string, cond func() bool) {
	w.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			w.t.Fatalf("not settled within 20s: %s; writes %v; events %v", what, w.writes.take(), w.events.list())
		}
		_, _ = w.reconcile()
		time.Sleep(20 * time.Millisecond)
	}
}

func (w *fakeWorld) pod(name string) *corev1.Pod {
	w.t.Helper()
	var p corev1.Pod
	if err := w.c.Get(w.t.Context(), types.NamespacedName{Namespace: "ns", Name: name}, &p); err != nil {
		w.t.Fatal(err)
	}
	return &p
}

func (w *fakeWorld) labelled(name, roleValue string, epoch uint64) bool {
	p := w.pod(name)
	return p.Labels["role"] == roleValue && (epoch == 0 || podEpoch(p) == epoch)
}

func (w *fakeWorld) holds(name string, r role.Role, epoch uint64) bool {
	s := w.apps[name].State()
	return s.Role == r && s.Epoch == epoch
}

// elect runs the initial election: a is active at epoch 1, b standby.
func (w *fakeWorld) elect() {
	w.t.Helper()
	w.settle("a elected", func() bool {
		return w.labelled("a", "active", 1) && w.holds("a", role.Active, 1) && w.apps["b"].State().Role == role.Standby
	})
	w.writes.take()
}

// deleteActive starts the graceful deletion of a (the finalizer keeps it).
func (w *fakeWorld) deleteActive() {
	w.t.Helper()
	if err := w.c.Delete(w.t.Context(), w.pod("a")); err != nil {
		w.t.Fatal(err)
	}
}

// TestFailoverWrites pins a normal failover's API writes: the demotion
// PATCH, then the promotion PATCH, and one Event; no Lease write, no
// read-back. The old active's app acked standby before the new one was
// told active.
func TestFailoverWrites(t *testing.T) {
	w := newFakeWorld(t, []string{"a", "b"}, nil)
	w.elect()
	w.deleteActive()
	w.settle("b promoted", func() bool { return w.labelled("b", "active", 2) && w.holds("b", role.Active, 2) })
	got := w.writes.take()
	want := []string{"patch a role=standby epoch= err=false", "patch b role=active epoch=2 err=false"}
	if !slices.Equal(got, want) {
		t.Errorf("failover wrote %q, want %q", got, want)
	}
	if !w.holds("a", role.Standby, 2) {
		t.Errorf("old active holds %+v, want standby@2", w.apps["a"].State())
	}
	if a, b := w.apps["a"].State().Changed, w.apps["b"].State().Changed; !a.Before(b) {
		t.Errorf("old active took standby at %v, new active took active at %v: want the old first", a, b)
	}
	clusterPoll(t, func() bool { return w.events.count(ReasonPromoted) == 2 }) // initial election's and the failover's
	if evs := w.events.list(); len(evs) != 2 {
		t.Errorf("events %q, want the two Promoted only", evs)
	}
	w.history.Check(t)
}

// clusterPoll polls cond with a deadline.
func clusterPoll(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 20s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// errConnReset is what client-go returns when the connection drops after
// the request was sent: the write may or may not have been committed.
var errConnReset = fmt.Errorf("read tcp 127.0.0.1:40000->127.0.0.1:6443: read: connection reset by peer")

// Defect 1: the promotion PATCH commits but the client gets an error. The
// new active's app must end active at the epoch its label carries (before
// the fix it was told standby at that epoch and refused every later
// "active" as stale, while the Service routed to it).
func TestAmbiguousPromotionWrite(t *testing.T) {
	for _, tc := range []struct {
		name string
		// readBackFails: the uncached read-back fails too, so only the
		// next reconcile's view of the pod tells what happened.
		readBackFails bool
	}{
		{"read back", false},
		{"read back fails", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newFakeWorld(t, []string{"a", "b"}, nil)
			w.elect()
			var once sync.Once
			w.patch = func(_ context.Context, pod, rv, _ string, next func() error) error {
				err := next()
				if pod == "b" && rv == "active" {
					once.Do(func() { err = errConnReset })
				}
				return err
			}
			if tc.readBackFails {
				w.get = func(context.Context, func() error) error { return errConnReset }
			}
			w.deleteActive()
			_, err := w.reconcile()
			if !tc.readBackFails && err != nil {
				t.Errorf("reconcile with a committed promotion: %v", err)
			}
			w.get = nil
			w.settle("b active", func() bool { return w.labelled("b", "active", 2) })
			// What the app holds converges to the label, and stays there.
			clusterPoll(t, func() bool { return w.holds("b", role.Active, 2) })
			for range 5 {
				if _, err := w.reconcile(); err != nil {
					t.Fatal(err)
				}
			}
			if !w.holds("b", role.Active, 2) || !w.labelled("b", "active", 2) {
				t.Errorf("b holds %+v, labelled %q@%d; want active@2 for both", w.apps["b"].State(), w.pod("b").Labels["role"], podEpoch(w.pod("b")))
			}
			if st := w.apps["b"].Stats(); st.Stale != 0 {
				t.Errorf("b refused %d role messages as stale", st.Stale)
			}
			w.history.Check(t)
		})
	}
}

// Defect 2: the demotion PATCH fails (a webhook denies it, the API sheds
// load). The new active must not be labelled while the old one's label
// is active, the old active's app must never be told active again, and
// retries must not advance the epoch.
func TestFailedDemotion(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
	}{
		{"webhook denial", apierrorsForbidden()},
		{"too many requests", apierrorsTooMany()},
		// A 500: ambiguous, so read back; the read shows it did not commit.
		{"server error", apierrorsInternal()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newFakeWorld(t, []string{"a", "b"}, nil)
			w.elect()
			failures := 3
			w.patch = func(ctx context.Context, pod, rv, _ string, next func() error) error {
				if pod == "a" && rv == "standby" && failures > 0 {
					failures--
					return tc.err
				}
				if pod == "b" && rv == "active" && w.labelled("a", "active", 0) {
					t.Errorf("b labelled active while a is still labelled active")
				}
				return next()
			}
			w.deleteActive()
			stuck := 0
			for failures > 0 {
				if _, err := w.reconcile(); err != nil {
					stuck++
				}
			}
			if stuck == 0 {
				t.Error("reconciles with a failing demotion returned no error (no backoff)")
			}
			w.settle("b active", func() bool { return w.labelled("b", "active", 0) })
			clusterPoll(t, func() bool { return w.holds("b", role.Active, podEpoch(w.pod("b"))) })
			if e := podEpoch(w.pod("b")); e != 2 {
				t.Errorf("b promoted at epoch %d, want 2: retries must not advance the epoch", e)
			}
			clusterPoll(t, func() bool { return w.holds("a", role.Standby, 2) })
			if n := w.events.count(ReasonSwitchStuck); n != 1 {
				t.Errorf("%d %s Events, want 1: %q", n, ReasonSwitchStuck, w.events.list())
			}
			w.history.Check(t)
		})
	}
}

// Defect 3: with 300 ms per API write, the old active was still active
// while the new one already was (617 ms in the issue). Now the old active
// acks standby before the new one is told.
func TestSlowAPINoDualActive(t *testing.T) {
	w := newFakeWorld(t, []string{"a", "b"}, nil)
	w.elect()
	w.patch = func(ctx context.Context, _, _, _ string, next func() error) error {
		select {
		case <-time.After(300 * time.Millisecond): // the injected latency
		case <-ctx.Done():
			return ctx.Err()
		}
		return next()
	}
	w.deleteActive()
	w.settle("b active", func() bool { return w.labelled("b", "active", 2) && w.holds("b", role.Active, 2) })
	w.history.Check(t)
}

// Defect 3, a half-open connection: a PATCH that never returns ends at
// -api-timeout and the switch is retried, instead of hanging for the
// HTTP/2 health check.
func TestHungWriteTimesOut(t *testing.T) {
	w := newFakeWorld(t, []string{"a", "b"}, nil)
	w.r.Config.APITimeout = 200 * time.Millisecond
	w.elect()
	var once sync.Once
	w.patch = func(ctx context.Context, pod, _, _ string, next func() error) error {
		hang := false
		once.Do(func() { hang = true })
		if hang {
			<-ctx.Done() // the connection is dead: only the deadline ends the call
			return ctx.Err()
		}
		return next()
	}
	w.deleteActive()
	// A reconcile may first only fence the old active (the promotion waits
	// for its standby ack); the one that writes must end at the deadline
	// and report the failure.
	failed := false
	for i := 0; i < 50 && !failed; i++ {
		done := make(chan error, 1)
		go func() {
			_, err := w.reconcile()
			done <- err
		}()
		select {
		case err := <-done:
			failed = err != nil
		case <-time.After(30 * time.Second):
			t.Fatal("a hung PATCH held the switch: no deadline")
		}
		if !failed {
			time.Sleep(20 * time.Millisecond) // as settle: the next reconcile
		}
	}
	if !failed {
		t.Error("switch with a hung demotion reported success")
	}
	w.settle("b active", func() bool { return w.labelled("b", "active", 2) && w.holds("b", role.Active, 2) })
	w.history.Check(t)
}

func apierrorsForbidden() error {
	return apierrors.NewForbidden(schema.GroupResource{Resource: "pods"}, "a", fmt.Errorf("admission webhook %q denied the request", "deny.example.com"))
}

func apierrorsTooMany() error { return apierrors.NewTooManyRequests("slow down", 1) }

func apierrorsInternal() error {
	return apierrors.NewInternalError(fmt.Errorf("etcdserver: request timed out"))
}

// An active whose pod is force-deleted (gone from the API at once, its
// app possibly still running) is told standby at its last address before
// the new active is told; its label went with it, so the only write is
// the promotion.
func TestForceDeletedActiveIsFenced(t *testing.T) {
	w := newFakeWorld(t, []string{"a", "b"}, nil)
	w.elect()
	a := w.pod("a")
	a.Finalizers = nil
	if err := w.c.Update(t.Context(), a); err != nil {
		t.Fatal(err)
	}
	if err := w.c.Delete(t.Context(), a, client.GracePeriodSeconds(0)); err != nil {
		t.Fatal(err)
	}
	w.settle("b promoted", func() bool { return w.labelled("b", "active", 2) && w.holds("b", role.Active, 2) })
	if !w.holds("a", role.Standby, 2) {
		t.Errorf("the force-deleted active's app holds %+v, want standby@2", w.apps["a"].State())
	}
	if got, want := w.writes.take(), []string{"patch b role=active epoch=2 err=false"}; !slices.Equal(got, want) {
		t.Errorf("failover wrote %q, want %q", got, want)
	}
	w.history.Check(t)
}

// A critical container the kubelet may restart in place is warned about
// once per pod, however many reconciles see it (an election, a failover);
// a pod whose critical container has restartPolicy Never gets no warning.
func TestCriticalRestartPolicyWarnsOnce(t *testing.T) {
	w := newFakeWorld(t, []string{"a", "b"}, nil)
	b := w.pod("b")
	b.Spec.Containers[0].RestartPolicy = nil // the pod-level default, Always
	if err := w.c.Update(t.Context(), b); err != nil {
		t.Fatal(err)
	}
	w.elect()
	for range 3 {
		if _, err := w.reconcile(); err != nil {
			t.Fatal(err)
		}
	}
	w.deleteActive()
	w.settle("b promoted", func() bool { return w.labelled("b", "active", 2) && w.holds("b", role.Active, 2) })
	var got []string
	for _, ev := range w.events.list() {
		if strings.Fields(ev)[1] == ReasonCriticalRestartPolicy {
			got = append(got, ev)
		}
	}
	if len(got) != 1 || !strings.HasPrefix(got[0], "Warning "+ReasonCriticalRestartPolicy+" b: ") ||
		!strings.Contains(got[0], "[app]") || !strings.Contains(got[0], "restartPolicy: Never") {
		t.Errorf("%s Events %q, want one Warning about b naming container app and restartPolicy: Never", ReasonCriticalRestartPolicy, got)
	}
}
