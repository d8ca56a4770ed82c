package bench

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/hapod/hapod/internal/dev/localcluster"
	"github.com/hapod/hapod/internal/dev/netplan"
	"github.com/hapod/hapod/internal/dev/podstatus"
	"github.com/hapod/hapod/internal/dev/poll"
	"github.com/hapod/hapod/internal/election"
	"github.com/hapod/hapod/pkg/role"
)

// Labels and values the bench's pods carry. The controller selects
// benchLabel=true and groups by "app"; the Service selects on roleLabel.
const (
	benchLabel   = role.BenchLabel
	roleLabel    = "role"
	activeRole   = "active"
	standbyRole  = "standby"
	criticalEnv  = "pwcriticality"
	appContainer = "app"
	fieldManager = "hapod-bench"
)

// Env is the cluster the bench runs on.
type Env struct {
	// REST is an admin client configuration; Kubeconfig the same as a
	// file, for the controller.
	REST       *rest.Config
	Kubeconfig string
	// ControllerBin is the built hapod-controller, run once per scenario;
	// DemoBin the built hapod-demo, the app of the kill -9 scenario.
	ControllerBin, DemoBin string
	// APIServerPID, EtcdPID and KCMPID (kube-controller-manager), if not
	// 0, have their CPU time reported next to the controller's during mass
	// failovers.
	APIServerPID, EtcdPID, KCMPID int
	// RealNodes: the cluster has real nodes (and runs inside their network
	// namespace), so the real-node scenario can run.
	RealNodes bool
	// PodKubeconfig is a kubeconfig that works from inside a pod on a real
	// node (localcluster.Cluster.WritePodKubeconfig), for the
	// leader-election baselines' apps.
	PodKubeconfig string
	// WorkDir receives logs and profiles.
	WorkDir string
	Log     *slog.Logger

	cs kubernetes.Interface
}

func (e *Env) init() error {
	if e.Log == nil {
		e.Log = slog.Default()
	}
	rc := rest.CopyConfig(e.REST)
	rc.QPS, rc.Burst = 1000, 2000
	rc.UserAgent = "hapod-bench"
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return err
	}
	e.cs = cs
	return nil
}

// suffix is a short random name part, so runs on a shared cluster do not
// collide.
func suffix() string {
	const alphabet = "bcdfghjklmnpqrstvwxz2456789"
	b := make([]byte, 5)
	for i := range b {
		b[i] = alphabet[rand.IntN(len(alphabet))]
	}
	return string(b)
}

// namespace creates a namespace and waits for its default ServiceAccount
// (pods are refused before). The returned function deletes it.
func (e *Env) namespace(ctx context.Context, prefix string) (string, func(), error) {
	name := prefix + "-" + suffix()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{benchLabel: "true"}}}
	if _, err := e.cs.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{FieldManager: fieldManager}); err != nil {
		return "", nil, err
	}
	// Deleting removes the namespace (which stops controllers creating
	// pods in it), then its pods at once (a failed node has no kubelet to
	// finish their graceful deletion), and waits until they are gone, so
	// that one scenario's pods do not load the API server during the next;
	// the rest of the namespace goes in the background.
	del := func() {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
		defer cancel()
		if err := e.cs.CoreV1().Namespaces().Delete(ctx, name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			e.Log.Warn("delete namespace", "namespace", name, "err", err)
		}
		now := int64(0)
		if err := e.cs.CoreV1().Pods(name).DeleteCollection(ctx, metav1.DeleteOptions{GracePeriodSeconds: &now}, metav1.ListOptions{}); err != nil {
			e.Log.Warn("delete pods", "namespace", name, "err", err)
		}
		err := poll.Until(ctx, time.Minute, func() (bool, error) {
			l, err := e.cs.CoreV1().Pods(name).List(ctx, metav1.ListOptions{Limit: 1})
			return err == nil && len(l.Items) == 0, err
		})
		if err != nil {
			e.Log.Warn("pods not gone", "namespace", name, "err", err)
		}
	}
	err := poll.Until(ctx, 30*time.Second, func() (bool, error) {
		_, err := e.cs.CoreV1().ServiceAccounts(name).Get(ctx, "default", metav1.GetOptions{})
		return err == nil, err
	})
	if err != nil {
		del()
		return "", nil, fmt.Errorf("namespace %s: no default ServiceAccount: %w", name, err)
	}
	return name, del, nil
}

// node creates a Ready kwok node. The returned function deletes it.
func (e *Env) node(ctx context.Context, prefix, podCIDR string) (string, func(), error) {
	name := prefix + "-" + suffix()
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	del := func() {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if err := e.cs.CoreV1().Nodes().Delete(ctx, name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			e.Log.Warn("delete node", "node", name, "err", err)
		}
	}
	if _, err := localcluster.CreateNode(wctx, e.cs, name, podCIDR); err != nil {
		del()
		return "", nil, err
	}
	return name, del, nil
}

// addrs hands out distinct IPv4 addresses of a prefix (a /17 or wider), from
// its first /16 or /17: a.b.0.1, a.b.0.2, ... a.b.0.250, a.b.1.1, ...
type addrs struct {
	mu   sync.Mutex
	base [4]byte
	next int
}

func newAddrs(p netip.Prefix) *addrs { return &addrs{base: p.Masked().Addr().As4()} }

func (p *addrs) take() netip.Addr {
	p.mu.Lock()
	defer p.mu.Unlock()
	i := p.next
	p.next++
	return netip.AddrFrom4([4]byte{p.base[0], p.base[1], p.base[2] + byte(i/250%128), byte(i%250 + 1)})
}

// loopbackLane is a /16 for listeners and loopback pod IPs, one of
// netplan.BenchLanes drawn at random so that two benches on one machine
// rarely collide (a bind error would say so).
func loopbackLane() netip.Prefix { return netplan.Lane(rand.IntN(netplan.Lanes)) }

// podSpec describes one bench pod.
type podSpec struct {
	name, group, node string
	ip                netip.Addr     // its pod IP, via localcluster.PodIPAnnotation
	roleAddr          netip.AddrPort // if valid, the hapod.io/role-address annotation
}

// newPod is the seed's pod: a critical app container (restartPolicy Never,
// as deploy/example ships it, so no pod costs a CriticalRestartPolicy
// Event write) and a non-critical sidecar, labelled standby until the
// controller decides, on a fixed node.
func newPod(s podSpec) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name:        s.name,
			Labels:      map[string]string{"app": s.group, benchLabel: "true", roleLabel: standbyRole},
			Annotations: map[string]string{localcluster.PodIPAnnotation: s.ip.String()},
		},
		Spec: corev1.PodSpec{
			NodeName: s.node,
			Containers: []corev1.Container{
				{Name: appContainer, Image: "hapod-demo", Env: []corev1.EnvVar{{Name: criticalEnv, Value: "critical"}},
					RestartPolicy: new(corev1.ContainerRestartPolicyNever)},
				{Name: "sidecar", Image: "sidecar"},
			},
		},
	}
	if s.roleAddr.IsValid() {
		p.Annotations[role.RoleAddressAnnotation] = s.roleAddr.String()
	}
	return p
}

// terminateContainer writes what a kubelet writes when a container exits
// (as clustertest.SetContainerTerminated does), from the pod as last seen;
// it returns when the write request started. A conflict means the pod
// changed since: it is fetched again and the write retried, and the time
// is that of the last attempt.
func terminateContainer(ctx context.Context, cs kubernetes.Interface, pod *corev1.Pod, container string, exitCode int32, reason string) (time.Time, error) {
	for attempt := 0; ; attempt++ {
		patch, err := podstatus.Patch(pod, podstatus.Terminated(container, exitCode, reason))
		if err != nil {
			return time.Time{}, err
		}
		start := time.Now()
		_, err = cs.CoreV1().Pods(pod.Namespace).Patch(ctx, pod.Name, types.MergePatchType, patch,
			metav1.PatchOptions{FieldManager: fieldManager}, "status")
		if err == nil {
			return start, nil
		}
		if !apierrors.IsConflict(err) || attempt == 5 {
			return time.Time{}, err
		}
		if pod, err = cs.CoreV1().Pods(pod.Namespace).Get(ctx, pod.Name, metav1.GetOptions{}); err != nil {
			return time.Time{}, err
		}
	}
}

// runningReady: Running, Ready, with an IP, not being deleted.
func runningReady(p *corev1.Pod) bool {
	return p.DeletionTimestamp == nil && p.Status.Phase == corev1.PodRunning && p.Status.PodIP != "" && election.PodReady(p)
}
