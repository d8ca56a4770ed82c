package controller_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	hconfig "github.com/hapod/hapod/internal/config"
	"github.com/hapod/hapod/internal/controller"
	"github.com/hapod/hapod/internal/dev/clustertest"
	"github.com/hapod/hapod/internal/notify"
	"github.com/hapod/hapod/pkg/role"
)

// env is one test's world: a namespace, a kwok node whose pod IPs are on
// loopback, and a role port no other test uses.
type env struct {
	t    testing.TB
	ns   string
	node string
	port int
	cs   kubernetes.Interface
	cfg  hconfig.Config
	// wrapClient, if set, wraps the controller's client (fault injection).
	wrapClient func(client.Client) client.Client
	// history, if set, records every listener's state changes.
	history *controller.AppHistory
}

// loopbackOnly keeps tests from sending UDP anywhere but loopback: pods on
// TEST-NET nodes (for EndpointSlice checks) have addresses that are API
// data only.
type loopbackOnly struct{ n *notify.Notifier }

func (l loopbackOnly) Send(ctx context.Context, t notify.Target) notify.Result {
	if !t.Addr.Addr().IsLoopback() {
		return notify.Result{Err: fmt.Errorf("test refuses to send to non-loopback %s", t.Addr)}
	}
	return l.n.Send(ctx, t)
}

// Renew and SetAckHandler make it a controller.Renewer, as the real
// Notifier is: the active pods' leases are renewed.
func (l loopbackOnly) Renew(t notify.Target, echo uint64) (uint64, error) {
	if !t.Addr.Addr().IsLoopback() {
		return 0, fmt.Errorf("test refuses to send to non-loopback %s", t.Addr)
	}
	return l.n.Renew(t, echo)
}

func (l loopbackOnly) SetAckHandler(h func(notify.Ack) notify.AckVerdict) { l.n.SetAckHandler(h) }

func (l loopbackOnly) Backlog() bool { return l.n.Backlog() }

// serviceNode creates a node whose pod IPs the API accepts in
// EndpointSlices (it refuses loopback ones): RFC 2544 benchmark addresses,
// to which loopbackOnly sends nothing.
func (e *env) serviceNode() {
	e.t.Helper()
	e.node = clustertest.Node(e.t, fmt.Sprintf("198.18.%d.0/24", rand.IntN(256)))
}

func newEnv(t testing.TB) *env {
	t.Helper()
	cfg := hconfig.Default()
	cfg.RolePort = 20000 + rand.IntN(40000)
	cfg.NotReadyGrace = 2 * time.Second
	cfg.NotifyDeadline = 2 * time.Second
	cfg.NotifyRetry = 300 * time.Millisecond
	e := &env{t: t, ns: clustertest.Namespace(t), node: clustertest.Node(t), port: cfg.RolePort, cs: clustertest.Clientset(t), cfg: cfg}
	e.cfg.Namespaces = []string{e.ns}
	return e
}

// running is a controller started by a test.
type running struct {
	metrics *controller.Metrics
	stop    func()
}

// startController runs the real controller (manager, cache, notifier) in
// this process, watching only the test's namespace.
func (e *env) startController() *running {
	t := e.t
	t.Helper()
	rc := clustertest.RESTConfig(t)
	opts, err := controller.ManagerOptions(e.cfg)
	if err != nil {
		t.Fatal(err)
	}
	opts.Metrics = metricsserver.Options{BindAddress: "0"}
	opts.HealthProbeBindAddress = "0"
	// Several controllers run in one test binary.
	opts.Controller = config.Controller{SkipNameValidation: ptr.To(true)}
	mgr, err := ctrl.NewManager(rc, opts)
	if err != nil {
		t.Fatal(err)
	}
	n, err := notify.New(notify.Config{ListenAddr: "127.0.0.1:0", Deadline: e.cfg.NotifyDeadline})
	if err != nil {
		t.Fatal(err)
	}
	m := controller.NewMetrics(prometheus.NewRegistry())
	cl := mgr.GetClient()
	if e.wrapClient != nil {
		cl = e.wrapClient(cl)
	}
	r := controller.New(e.cfg, controller.Deps{
		Client: cl, APIReader: mgr.GetAPIReader(), Recorder: mgr.GetEventRecorder("hapod-controller"),
		Notifier: loopbackOnly{n}, Metrics: m,
	})
	if err := r.SetupWithManager(mgr); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("manager: %v", err)
			}
			n.Close()
		})
	}
	t.Cleanup(stop)
	return &running{metrics: m, stop: stop}
}

// podTemplate is the seed's pod: a critical app container and a
// non-critical sidecar, pinned to the test's node.
func (e *env) podTemplate(group string) corev1.PodTemplateSpec {
	return corev1.PodTemplateSpec{
		ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": group, "role": "standby"}},
		Spec: corev1.PodSpec{
			NodeName: e.node,
			Containers: []corev1.Container{
				{Name: "app", Image: "hapod-demo", Env: []corev1.EnvVar{{Name: "pwcriticality", Value: "critical"}}},
				{Name: "sidecar", Image: "sidecar"},
			},
		},
	}
}

// replicaSet creates the seed's ReplicaSet for a group. Its selector does
// not include the role label, so relabelling never orphans a pod.
func (e *env) replicaSet(group string, replicas int32) *appsv1.ReplicaSet {
	e.t.Helper()
	rs, err := e.cs.AppsV1().ReplicaSets(e.ns).Create(e.t.Context(), newRS(group, replicas, e.podTemplate(group)), metav1.CreateOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	return rs
}

func newRS(group string, replicas int32, tmpl corev1.PodTemplateSpec) *appsv1.ReplicaSet {
	return &appsv1.ReplicaSet{
		ObjectMeta: metav1.ObjectMeta{Name: group},
		Spec: appsv1.ReplicaSetSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": group}},
			Template: tmpl,
		},
	}
}

// barePods creates n pods of the group with no controller owning them.
func (e *env) barePods(group string, n int) {
	e.t.Helper()
	for i := range n {
		tmpl := e.podTemplate(group)
		pod := &corev1.Pod{ObjectMeta: tmpl.ObjectMeta, Spec: tmpl.Spec}
		pod.Name = fmt.Sprintf("%s-%d", group, i)
		if _, err := e.cs.CoreV1().Pods(e.ns).Create(e.t.Context(), pod, metav1.CreateOptions{}); err != nil {
			e.t.Fatal(err)
		}
	}
}

// service creates the Service that routes to the group's active pod.
func (e *env) service(group string) {
	e.t.Helper()
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: group},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": group, "role": "active"},
			Ports:    []corev1.ServicePort{{Name: "http", Port: 80}},
		},
	}
	if _, err := e.cs.CoreV1().Services(e.ns).Create(e.t.Context(), svc, metav1.CreateOptions{}); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) pods(group string) []corev1.Pod {
	e.t.Helper()
	list, err := e.cs.CoreV1().Pods(e.ns).List(e.t.Context(), metav1.ListOptions{LabelSelector: "app=" + group})
	if err != nil {
		e.t.Fatal(err)
	}
	return list.Items
}

// runningPods waits until the group has n Running pods with IPs and no
// deletion in progress, and returns them oldest first.
func (e *env) runningPods(group string, n int) []corev1.Pod {
	e.t.Helper()
	var out []corev1.Pod
	clustertest.Eventually(e.t, 20*time.Second, func() (bool, error) {
		out = out[:0]
		for _, p := range e.pods(group) {
			if p.DeletionTimestamp == nil && p.Status.Phase == corev1.PodRunning && p.Status.PodIP != "" && ready(&p) {
				out = append(out, p)
			}
		}
		return len(out) == n, nil
	})
	return out
}

func ready(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// listeners starts a pkg/role listener on each pod's own IP, as the app in
// that pod would.
func (e *env) listeners(pods []corev1.Pod) map[string]*role.Listener {
	e.t.Helper()
	out := map[string]*role.Listener{}
	for _, p := range pods {
		out[p.Name] = e.listen(p)
	}
	return out
}

func (e *env) listen(p corev1.Pod) *role.Listener {
	e.t.Helper()
	ip, err := netip.ParseAddr(p.Status.PodIP)
	if err != nil || !ip.IsLoopback() {
		e.t.Fatalf("pod %s has IP %q; the test needs a loopback pod IP", p.Name, p.Status.PodIP)
	}
	cfg := role.Config{Addr: netip.AddrPortFrom(ip, uint16(e.port)).String(), PodUID: string(p.UID)}
	if e.history != nil {
		cfg.OnChange = e.history.Record(p.Name)
	}
	l, err := role.Listen(e.t.Context(), cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { l.Close() })
	return l
}

// waitRole waits until the listener holds role at an epoch >= minEpoch.
func waitRole(t testing.TB, l *role.Listener, want role.Role, minEpoch uint64) role.State {
	t.Helper()
	var s role.State
	clustertest.Eventually(t, 10*time.Second, func() (bool, error) {
		s = l.State()
		return s.Role == want && s.Epoch >= minEpoch, nil
	})
	return s
}

// active waits until exactly one pod of the group is labelled active and
// returns it.
func (e *env) active(group string, not ...string) corev1.Pod {
	e.t.Helper()
	var act corev1.Pod
	clustertest.Eventually(e.t, 15*time.Second, func() (bool, error) {
		var found []corev1.Pod
		for _, p := range e.pods(group) {
			if p.Labels["role"] == "active" {
				found = append(found, p)
			}
		}
		if len(found) != 1 {
			return false, nil
		}
		for _, n := range not {
			if found[0].Name == n {
				return false, nil
			}
		}
		act = found[0]
		return true, nil
	})
	return act
}

func epochOf(p corev1.Pod) uint64 {
	e, _ := strconv.ParseUint(p.Annotations[role.EpochAnnotation], 10, 64)
	return e
}

// endpointsOf waits until the Service's EndpointSlices list exactly ips as
// ready endpoints.
func (e *env) waitEndpoints(service string, ips ...string) {
	e.t.Helper()
	want := map[string]bool{}
	for _, ip := range ips {
		want[ip] = true
	}
	clustertest.Eventually(e.t, 15*time.Second, func() (bool, error) {
		slices, err := e.cs.DiscoveryV1().EndpointSlices(e.ns).List(e.t.Context(), metav1.ListOptions{
			LabelSelector: discoveryv1.LabelServiceName + "=" + service,
		})
		if err != nil || len(slices.Items) == 0 {
			return false, err
		}
		got := map[string]bool{}
		for _, s := range slices.Items {
			for _, ep := range s.Endpoints {
				if ep.Conditions.Ready == nil || *ep.Conditions.Ready {
					for _, a := range ep.Addresses {
						got[a] = true
					}
				}
			}
		}
		if len(got) != len(want) {
			return false, nil
		}
		for ip := range want {
			if !got[ip] {
				return false, nil
			}
		}
		return true, nil
	})
}

// neverTwoActive fails the test if two of the group's pods are ever
// labelled active at the same resourceVersion (clustertest.NeverTwoActive).
func (e *env) neverTwoActive(group string) {
	e.t.Helper()
	clustertest.NeverTwoActive(e.t, e.cs, e.ns, labels.Set{"app": group}.String(), "role", "active")
}

// leaseEpoch reads the group's epoch Lease.
func (e *env) leaseEpoch(group string) int32 {
	e.t.Helper()
	l, err := e.cs.CoordinationV1().Leases(e.ns).Get(e.t.Context(), controller.LeaseName(e.cfg.LeasePrefix, group), metav1.GetOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	return ptr.Deref(l.Spec.LeaseTransitions, 0)
}

// gone waits until the pod with this UID is deleted or being deleted.
func (e *env) gone(p corev1.Pod) {
	e.t.Helper()
	clustertest.Eventually(e.t, 15*time.Second, func() (bool, error) {
		cur, err := e.cs.CoreV1().Pods(e.ns).Get(e.t.Context(), p.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return true, nil
		}
		if err != nil {
			return false, err
		}
		return cur.UID != p.UID || cur.DeletionTimestamp != nil, nil
	})
}

// hasEvent waits for an Event with this reason about the named pod (any
// pod if podName is empty).
func (e *env) hasEvent(podName, reason string) {
	e.t.Helper()
	clustertest.Eventually(e.t, 15*time.Second, func() (bool, error) {
		evs, err := e.cs.EventsV1().Events(e.ns).List(e.t.Context(), metav1.ListOptions{})
		if err != nil {
			return false, err
		}
		for _, ev := range evs.Items {
			if (podName == "" || ev.Regarding.Name == podName) && ev.Reason == reason {
				return true, nil
			}
		}
		return false, nil
	})
}

// eventCounts counts the Events with this reason per pod, a series
// (the recorder's aggregation of repeats) by its count.
func (e *env) eventCounts(reason string) map[string]int32 {
	e.t.Helper()
	evs, err := e.cs.EventsV1().Events(e.ns).List(e.t.Context(), metav1.ListOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	perPod := map[string]int32{}
	for _, ev := range evs.Items {
		if ev.Reason == reason {
			n := int32(1)
			if ev.Series != nil {
				n = ev.Series.Count
			}
			perPod[ev.Regarding.Name] += n
		}
	}
	return perPod
}

// stays checks, for a bounded time, that cond keeps holding: used where
// the assertion is that nothing happens.
func stays(t testing.TB, d time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if err := cond(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
