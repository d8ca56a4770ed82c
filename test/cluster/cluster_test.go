// Package cluster_test checks that the local control plane (internal/dev/localcluster, run by
// internal/dev/clustertest) behaves as hapod's tests and demo assume: kwok nodes become
// Ready, ReplicaSets get Running pods with IPs, Services follow pod labels through
// EndpointSlices, a chosen pod IP is honoured, and a test can play the kubelet.
package cluster_test

import (
	"fmt"
	"net"
	"slices"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"

	"github.com/hapod/hapod/internal/dev/clustertest"
	"github.com/hapod/hapod/internal/dev/localcluster"
	"github.com/hapod/hapod/internal/dev/netplan"
	"github.com/hapod/hapod/internal/election"
)

func TestMain(m *testing.M) { clustertest.Main(m) }

// loopback is where pod IPs must be for local processes to own them.
var loopback = &net.IPNet{IP: net.IPv4(127, 0, 0, 0), Mask: net.CIDRMask(8, 32)}

// testNet2 (RFC 5737 TEST-NET-2) is a pod CIDR for tests of Service endpoints: the API
// server refuses loopback addresses in EndpointSlices. These IPs are API data only;
// nothing sends them traffic.
var testNet2 = netplan.TestNet2.String()

func TestDefaultNodesReady(t *testing.T) {
	cs := clustertest.Clientset(t)
	for i, want := range localcluster.DefaultNodePodCIDRs {
		name := fmt.Sprintf("kwok-node-%d", i)
		n, err := cs.CoreV1().Nodes().Get(t.Context(), name, metav1.GetOptions{})
		if err != nil {
			t.Fatalf("get node %s: %v", name, err)
		}
		if n.Spec.PodCIDR != want {
			t.Errorf("node %s: podCIDR %q, want %q", name, n.Spec.PodCIDR, want)
		}
		if len(n.Spec.Taints) != 0 {
			t.Errorf("node %s: taints %v, want none", name, n.Spec.Taints)
		}
		if election.NodeReadyStatus(n) != corev1.ConditionTrue {
			t.Errorf("node %s is not Ready: %v", name, n.Status.Conditions)
		}
	}
}

func TestNodeGetsOwnLoopbackPodCIDR(t *testing.T) {
	cs := clustertest.Clientset(t)
	a, b := clustertest.Node(t), clustertest.Node(t)
	var cidrs []string
	for _, name := range []string{a, b} {
		n, err := cs.CoreV1().Nodes().Get(t.Context(), name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		_, ipnet, err := net.ParseCIDR(n.Spec.PodCIDR)
		if err != nil || !loopback.Contains(ipnet.IP) {
			t.Errorf("node %s: podCIDR %q is not inside 127.0.0.0/8", name, n.Spec.PodCIDR)
		}
		cidrs = append(cidrs, n.Spec.PodCIDR)
	}
	if cidrs[0] == cidrs[1] {
		t.Errorf("two nodes got the same podCIDR %s", cidrs[0])
	}
}

// A ReplicaSet's pods are scheduled on a kwok node, become Running with IPs from the
// node's pod CIDR, and a deleted pod is replaced.
func TestReplicaSetPodsRunWithLoopbackIPs(t *testing.T) {
	cs := clustertest.Clientset(t)
	ns := clustertest.Namespace(t)
	node := clustertest.Node(t)
	n, err := cs.CoreV1().Nodes().Get(t.Context(), node, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	_, podNet, err := net.ParseCIDR(n.Spec.PodCIDR)
	if err != nil {
		t.Fatal(err)
	}

	began := time.Now()
	createReplicaSet(t, cs, ns, "hapod", node, 2)
	pods := waitRunning(t, cs, ns, 2)
	t.Logf("2 pods Running %s after the ReplicaSet was created", time.Since(began).Round(time.Millisecond))
	for _, p := range pods {
		if p.Spec.NodeName != node {
			t.Errorf("pod %s on node %q, want %q", p.Name, p.Spec.NodeName, node)
		}
		ip := net.ParseIP(p.Status.PodIP)
		if ip == nil || !podNet.Contains(ip) || !loopback.Contains(ip) {
			t.Errorf("pod %s: IP %q, want one in the node's pod CIDR %s inside 127.0.0.0/8", p.Name, p.Status.PodIP, podNet)
		}
		if !election.PodReady(&p) {
			t.Errorf("pod %s is Running but not Ready", p.Name)
		}
	}
	if pods[0].Status.PodIP == pods[1].Status.PodIP {
		t.Errorf("both pods have IP %s", pods[0].Status.PodIP)
	}

	victim := pods[0]
	if err := cs.CoreV1().Pods(ns).Delete(t.Context(), victim.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	began = time.Now()
	clustertest.Eventually(t, 10*time.Second, func() (bool, error) {
		now, err := runningPods(t, cs, ns)
		if err != nil {
			return false, err
		}
		if len(now) != 2 || slices.ContainsFunc(now, func(p corev1.Pod) bool { return p.UID == victim.UID }) {
			return false, fmt.Errorf("%d Running pods, still waiting for a replacement of %s", len(now), victim.Name)
		}
		return true, nil
	})
	t.Logf("replacement Running %s after the delete", time.Since(began).Round(time.Millisecond))
}

// A Service selecting role=active has an empty EndpointSlice until a pod is labelled
// role=active; then it lists exactly that pod's IP; when the pod is deleted the
// ReplicaSet replaces it (as a standby) and the slice empties again.
func TestServiceEndpointSliceFollowsActiveLabel(t *testing.T) {
	cs := clustertest.Clientset(t)
	ns := clustertest.Namespace(t)
	node := clustertest.Node(t, testNet2)
	createReplicaSet(t, cs, ns, "hapod", node, 2)
	createActiveService(t, cs, ns, "hapod-active")
	pods := waitRunning(t, cs, ns, 2)

	// The EndpointSlice controller creates the slice, with no endpoints.
	clustertest.Eventually(t, 10*time.Second, func() (bool, error) {
		addrs, n, err := sliceAddresses(t, cs, ns, "hapod-active")
		if err != nil || n == 0 {
			return false, fmt.Errorf("no EndpointSlice yet (%w)", err)
		}
		if len(addrs) != 0 {
			t.Fatalf("EndpointSlice lists %v before any pod is active", addrs)
		}
		return true, nil
	})

	active := pods[0]
	w, err := cs.DiscoveryV1().EndpointSlices(ns).Watch(t.Context(), metav1.ListOptions{
		LabelSelector: discoveryv1.LabelServiceName + "=hapod-active",
	})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	began := time.Now()
	patch := []byte(`{"metadata":{"labels":{"role":"active"}}}`)
	if _, err := cs.CoreV1().Pods(ns).Patch(t.Context(), active.Name, types.MergePatchType, patch,
		metav1.PatchOptions{FieldManager: clustertest.FieldManager}); err != nil {
		t.Fatal(err)
	}
	want := []string{active.Status.PodIP}
	waitSliceEvent(t, w, 10*time.Second, func(addrs []string) bool { return slices.Equal(addrs, want) })
	t.Logf("EndpointSlice lists the active pod %s %s after the label patch", active.Status.PodIP, time.Since(began).Round(time.Microsecond))

	if err := cs.CoreV1().Pods(ns).Delete(t.Context(), active.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitSliceEvent(t, w, 10*time.Second, func(addrs []string) bool { return len(addrs) == 0 })
	replaced := waitRunning(t, cs, ns, 2)
	for _, p := range replaced {
		if p.UID == active.UID {
			t.Fatalf("deleted pod %s is still listed Running", p.Name)
		}
		if p.Labels["role"] != "standby" {
			t.Errorf("pod %s has role %q, want standby", p.Name, p.Labels["role"])
		}
	}
}

// The API server refuses loopback addresses in EndpointSlices, so the EndpointSlice
// controller cannot publish a pod whose IP is inside 127.0.0.0/8: it reports a
// FailedToUpdateEndpointSlices event and the slice stays empty. This test pins that
// limit: code that needs the active pod of a 127.x pod network must not rely on
// EndpointSlices (it can select pods by label instead).
func TestEndpointSliceRefusesLoopbackPodIP(t *testing.T) {
	cs := clustertest.Clientset(t)
	ns := clustertest.Namespace(t)
	node := clustertest.Node(t)
	createReplicaSet(t, cs, ns, "hapod", node, 1)
	createActiveService(t, cs, ns, "hapod-active")
	pod := waitRunning(t, cs, ns, 1)[0]
	patch := []byte(`{"metadata":{"labels":{"role":"active"}}}`)
	if _, err := cs.CoreV1().Pods(ns).Patch(t.Context(), pod.Name, types.MergePatchType, patch,
		metav1.PatchOptions{FieldManager: clustertest.FieldManager}); err != nil {
		t.Fatal(err)
	}
	clustertest.Eventually(t, 15*time.Second, func() (bool, error) {
		evs, err := cs.CoreV1().Events(ns).List(t.Context(), metav1.ListOptions{
			FieldSelector: "involvedObject.kind=Service,involvedObject.name=hapod-active,reason=FailedToUpdateEndpointSlices",
		})
		if err != nil {
			return false, err
		}
		if len(evs.Items) == 0 {
			return false, fmt.Errorf("no FailedToUpdateEndpointSlices event for the Service yet")
		}
		return true, nil
	})
	addrs, _, err := sliceAddresses(t, cs, ns, "hapod-active")
	if err != nil {
		t.Fatal(err)
	}
	if len(addrs) != 0 {
		t.Errorf("EndpointSlice lists %v; the API server now accepts loopback endpoints: update this test and the docs", addrs)
	}
}

// The pod annotation hapod.io/pod-ip chooses the pod's IP.
func TestPodIPAnnotation(t *testing.T) {
	cs := clustertest.Clientset(t)
	ns := clustertest.Namespace(t)
	node := clustertest.Node(t)
	const ip = "127.99.88.77"
	pod := newPod("chosen-ip", node)
	pod.Annotations = map[string]string{localcluster.PodIPAnnotation: ip}
	if _, err := cs.CoreV1().Pods(ns).Create(t.Context(), pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	got := waitRunning(t, cs, ns, 1)[0]
	if got.Status.PodIP != ip || len(got.Status.PodIPs) != 1 || got.Status.PodIPs[0].IP != ip {
		t.Errorf("pod IP %q, IPs %v; want %s", got.Status.PodIP, got.Status.PodIPs, ip)
	}
}

// A test can play the kubelet: a container it marks terminated stays terminated (kwok
// does not write the status back), watched for 2 s.
func TestContainerTerminatedStays(t *testing.T) {
	cs := clustertest.Clientset(t)
	ns := clustertest.Namespace(t)
	node := clustertest.Node(t)
	if _, err := cs.CoreV1().Pods(ns).Create(t.Context(), newPod("crashy", node), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	running := waitRunning(t, cs, ns, 1)[0]

	clustertest.SetContainerTerminated(t, ns, "crashy", "app", 137, "Error")
	p, err := cs.CoreV1().Pods(ns).Get(t.Context(), "crashy", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if msg := terminatedProblem(p, &running); msg != "" {
		t.Fatalf("right after the patch: %s", msg)
	}

	// Watch from the patched version for 2 s: no writer may undo it.
	const window = 2 * time.Second
	w, err := cs.CoreV1().Pods(ns).Watch(t.Context(), metav1.ListOptions{
		FieldSelector:   "metadata.name=crashy",
		ResourceVersion: p.ResourceVersion,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	timer := time.NewTimer(window)
	defer timer.Stop()
	for {
		select {
		case <-timer.C:
			return
		case ev, ok := <-w.ResultChan():
			if !ok {
				t.Fatal("watch closed early")
			}
			got, isPod := ev.Object.(*corev1.Pod)
			if !isPod {
				t.Fatalf("watch event %s: %v", ev.Type, ev.Object)
			}
			if msg := terminatedProblem(got, &running); msg != "" {
				t.Fatalf("status changed after the patch (%s event): %s", ev.Type, msg)
			}
		}
	}
}

// terminatedProblem says how p's container "app" is not as SetContainerTerminated left
// it, or "" if it is.
func terminatedProblem(p, before *corev1.Pod) string {
	if len(p.Status.ContainerStatuses) != 1 {
		return fmt.Sprintf("%d container statuses", len(p.Status.ContainerStatuses))
	}
	c := p.Status.ContainerStatuses[0]
	switch {
	case c.State.Terminated == nil:
		return fmt.Sprintf("container state %+v, want terminated", c.State)
	case c.State.Terminated.ExitCode != 137 || c.State.Terminated.Reason != "Error":
		return fmt.Sprintf("terminated with %d %q, want 137 Error", c.State.Terminated.ExitCode, c.State.Terminated.Reason)
	case c.Ready:
		return "container still ready"
	case c.RestartCount != before.Status.ContainerStatuses[0].RestartCount:
		return fmt.Sprintf("restartCount %d, was %d", c.RestartCount, before.Status.ContainerStatuses[0].RestartCount)
	case election.PodReady(p):
		return "pod still Ready"
	case p.Status.PodIP != before.Status.PodIP:
		return fmt.Sprintf("pod IP %q, was %q", p.Status.PodIP, before.Status.PodIP)
	}
	return ""
}

// --- fixtures ---

var standbyLabels = map[string]string{"app": "hapod", "role": "standby"}

func newPod(name, node string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: standbyLabels},
		Spec:       podSpec(node),
	}
}

func podSpec(node string) corev1.PodSpec {
	return corev1.PodSpec{
		NodeSelector: map[string]string{"kubernetes.io/hostname": node},
		Containers:   []corev1.Container{{Name: "app", Image: "hapod.invalid/app:test"}},
	}
}

// createReplicaSet creates a ReplicaSet whose pods are labelled app=hapod,role=standby and
// pinned to node. It selects app=hapod only, so relabelling a pod role=active keeps it.
func createReplicaSet(t *testing.T, cs kubernetes.Interface, ns, name, node string, replicas int32) {
	t.Helper()
	rs := &appsv1.ReplicaSet{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: appsv1.ReplicaSetSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "hapod"}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: standbyLabels},
				Spec:       podSpec(node),
			},
		},
	}
	if _, err := cs.AppsV1().ReplicaSets(ns).Create(t.Context(), rs, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create ReplicaSet: %v", err)
	}
}

func createActiveService(t *testing.T, cs kubernetes.Interface, ns, name string) {
	t.Helper()
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": "hapod", "role": "active"},
			Ports:    []corev1.ServicePort{{Name: "udp", Protocol: corev1.ProtocolUDP, Port: 7000}},
		},
	}
	if _, err := cs.CoreV1().Services(ns).Create(t.Context(), svc, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create Service: %v", err)
	}
}

func runningPods(t *testing.T, cs kubernetes.Interface, ns string) ([]corev1.Pod, error) {
	list, err := cs.CoreV1().Pods(ns).List(t.Context(), metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	var out []corev1.Pod
	for _, p := range list.Items {
		if p.DeletionTimestamp == nil && p.Status.Phase == corev1.PodRunning && p.Status.PodIP != "" {
			out = append(out, p)
		}
	}
	return out, nil
}

// waitRunning waits until the namespace has exactly n Running pods with IPs.
func waitRunning(t *testing.T, cs kubernetes.Interface, ns string, n int) []corev1.Pod {
	t.Helper()
	var pods []corev1.Pod
	clustertest.Eventually(t, 10*time.Second, func() (bool, error) {
		var err error
		if pods, err = runningPods(t, cs, ns); err != nil {
			return false, err
		}
		if len(pods) != n {
			return false, fmt.Errorf("%d Running pods with IPs, want %d", len(pods), n)
		}
		return true, nil
	})
	return pods
}

// sliceAddresses returns the sorted addresses of all endpoints of a Service's
// EndpointSlices and the number of slices.
func sliceAddresses(t *testing.T, cs kubernetes.Interface, ns, svc string) ([]string, int, error) {
	list, err := cs.DiscoveryV1().EndpointSlices(ns).List(t.Context(), metav1.ListOptions{
		LabelSelector: discoveryv1.LabelServiceName + "=" + svc,
	})
	if err != nil {
		return nil, 0, err
	}
	var addrs []string
	for _, s := range list.Items {
		addrs = append(addrs, endpointAddresses(&s)...)
	}
	slices.Sort(addrs)
	return addrs, len(list.Items), nil
}

func endpointAddresses(s *discoveryv1.EndpointSlice) []string {
	var addrs []string
	for _, e := range s.Endpoints {
		addrs = append(addrs, e.Addresses...)
	}
	return addrs
}

// waitSliceEvent reads watch events until one shows a slice whose addresses satisfy ok.
// (The Service has one slice here.)
func waitSliceEvent(t *testing.T, w watch.Interface, timeout time.Duration, ok func([]string) bool) {
	t.Helper()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	var last []string
	for {
		select {
		case <-timer.C:
			t.Fatalf("no EndpointSlice event with the wanted addresses within %s; last addresses %v", timeout, last)
		case ev, open := <-w.ResultChan():
			if !open {
				t.Fatal("EndpointSlice watch closed")
			}
			s, isSlice := ev.Object.(*discoveryv1.EndpointSlice)
			if !isSlice || ev.Type == watch.Deleted {
				continue
			}
			last = endpointAddresses(s)
			slices.Sort(last)
			if ok(last) {
				return
			}
		}
	}
}
