package realnode_test

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/hapod/hapod/internal/dev/child"
	"github.com/hapod/hapod/internal/dev/clustertest"
	"github.com/hapod/hapod/internal/dev/ctrlproc"
	"github.com/hapod/hapod/internal/dev/netplan"
	"github.com/hapod/hapod/internal/dev/realpod"
	"github.com/hapod/hapod/internal/dev/rolerecord"
	"github.com/hapod/hapod/pkg/role"
)

// The example's names (deploy/example), which are also the controller's
// defaults.
const (
	appLabel  = "app"
	groupName = "hapod"
	roleLabel = "role"
	active    = "active"
	standby   = "standby"
	critical  = realpod.Critical
	sidecar   = realpod.Sidecar
)

// group is one test's hapod group: a namespace, the real controller process
// watching it, a ReplicaSet of two real pods, the apps' role records and a
// watch on the labels.
type group struct {
	t       *testing.T
	cs      kubernetes.Interface
	ns      string
	records string // host directory the apps write their records to
	ctrl    *ctrlproc.Controller

	mu    sync.Mutex
	ended map[string]time.Time // pod -> when the test killed its app (it says nothing then)
}

type groupOptions struct {
	// criticalNever sets restartPolicy: Never on the critical container, as
	// deploy/example does: the kubelet then leaves it dead.
	criticalNever bool
}

func newGroup(t *testing.T, o groupOptions) *group {
	t.Helper()
	cs := clustertest.Clientset(t)
	ns := clustertest.Namespace(t)
	records, err := realpod.RecordsDir(ns)
	if err != nil {
		t.Fatal(err)
	}
	g := &group{t: t, cs: cs, ns: ns, records: records, ended: map[string]time.Time{}}
	log := filepath.Join(t.TempDir(), "controller.log")
	ctrl, err := ctrlproc.Start(t.Context(), ctrlproc.Options{
		Bin: filepath.Join(binDir, "hapod-controller"), Kubeconfig: clustertest.Kubeconfig(t), Namespaces: ns, LogPath: log,
		// Real pod IPs, on the nodes' CNI bridges inside this test binary's
		// own network namespace: the only place these addresses exist.
		Args: []string{"-notify-cidrs", netplan.RealNodePodsAll.String(), "-notify-bind-address", "0.0.0.0:0"},
	})
	if err != nil {
		t.Fatalf("start hapod-controller: %v; tail of %s:\n%s", err, log, child.Tail(log, 30))
	}
	t.Cleanup(func() {
		ctrl.Stop()
		if t.Failed() {
			t.Logf("tail of %s:\n%s", log, child.Tail(log, 40))
		}
	})
	g.ctrl = ctrl
	clustertest.NeverTwoActive(t, cs, ns, appLabel+"="+groupName, roleLabel, active)
	t.Cleanup(g.checkApps)
	rs := &appsv1.ReplicaSet{
		ObjectMeta: metav1.ObjectMeta{Name: groupName},
		Spec: appsv1.ReplicaSetSpec{
			Replicas: ptr.To[int32](2),
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{appLabel: groupName}},
			Template: g.podTemplate(o),
		},
	}
	if _, err := cs.AppsV1().ReplicaSets(ns).Create(t.Context(), rs, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return g
}

// podTemplate is the example's pod on this cluster's images, one per node
// where possible.
func (g *group) podTemplate(o groupOptions) corev1.PodTemplateSpec {
	sel := map[string]string{appLabel: groupName}
	return realpod.Template(realpod.Options{
		Labels:        map[string]string{appLabel: groupName, roleLabel: standby},
		Records:       g.records,
		CriticalNever: o.criticalNever,
		InitDelay:     time.Second,
		Spread:        sel,
	})
}

// settled waits until one live pod is labelled active and its app holds
// active at the label's epoch, and the other live pod is Ready and its app
// holds standby; it returns both.
func (g *group) settled(timeout time.Duration) (act, stb corev1.Pod) {
	g.t.Helper()
	clustertest.Eventually(g.t, timeout, func() (bool, error) {
		pods, err := g.livePods()
		if err != nil {
			return false, err
		}
		if len(pods) != 2 {
			return false, fmt.Errorf("%d live pods, want 2", len(pods))
		}
		apps := g.appRoles()
		var a, s []corev1.Pod
		for _, p := range pods {
			c, told := apps[p.Name]
			switch {
			case p.Labels[roleLabel] == active && told && c.Role == active && strconv.FormatUint(c.Epoch, 10) == p.Annotations[role.EpochAnnotation]:
				a = append(a, p)
			case p.Labels[roleLabel] == standby && ready(&p) && told && c.Role == standby:
				s = append(s, p)
			}
		}
		if len(a) != 1 || len(s) != 1 {
			return false, fmt.Errorf("want one active pod whose app is active and one Ready standby whose app is standby; pods %s, apps %v", podSummary(pods), apps)
		}
		act, stb = a[0], s[0]
		return true, nil
	})
	return act, stb
}

func (g *group) livePods() ([]corev1.Pod, error) {
	l, err := g.cs.CoreV1().Pods(g.ns).List(g.t.Context(), metav1.ListOptions{LabelSelector: appLabel + "=" + groupName})
	if err != nil {
		return nil, err
	}
	var pods []corev1.Pod
	for _, p := range l.Items {
		if p.DeletionTimestamp == nil && p.Status.Phase == corev1.PodRunning {
			pods = append(pods, p)
		}
	}
	return pods, nil
}

func ready(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func podSummary(pods []corev1.Pod) string {
	var b strings.Builder
	for _, p := range pods {
		fmt.Fprintf(&b, "%s(%s@%s ready=%v node=%s) ", p.Name, p.Labels[roleLabel], p.Annotations[role.EpochAnnotation], ready(&p), p.Spec.NodeName)
	}
	return b.String()
}

func (g *group) readRecords() map[string][]rolerecord.Change { return realpod.Records(g.records) }

func (g *group) appRoles() map[string]rolerecord.Change { return realpod.Latest(g.records) }

// checkApps fails the test if two apps ever held active at the same time
// (by the times each app applied its changes, on this machine's one clock),
// or two apps were told active at the same epoch (realpod.Overlaps).
func (g *group) checkApps() {
	g.mu.Lock()
	killed := map[string][]time.Time{}
	for pod, at := range g.ended {
		killed[pod] = append(killed[pod], at)
	}
	g.mu.Unlock()
	overlaps, sameEpoch := realpod.Overlaps(g.readRecords(), killed, time.Now())
	for _, o := range overlaps {
		g.t.Error(o)
	}
	for _, s := range sameEpoch {
		g.t.Error(s)
	}
}

// kill SIGKILLs every process of a container, waits until they are gone,
// and, for the critical container, notes the moment of the kill as the end
// of its app (a killed app writes no record).
func (g *group) kill(pod *corev1.Pod, container string) {
	g.t.Helper()
	at, pids, err := realpod.Kill(pod, container)
	if err != nil {
		g.t.Fatal(err)
	}
	clustertest.Eventually(g.t, 10*time.Second, func() (bool, error) {
		if !realpod.Dead(pids) {
			return false, fmt.Errorf("processes %v of %s/%s still alive", pids, pod.Name, container)
		}
		return true, nil
	})
	if container == critical {
		g.mu.Lock()
		g.ended[pod.Name] = at
		g.mu.Unlock()
	}
}

func containerID(pod *corev1.Pod, container string) string {
	return realpod.ContainerID(pod, container)
}

// pod reads a pod by name.
func (g *group) pod(name string) (*corev1.Pod, error) {
	return g.cs.CoreV1().Pods(g.ns).Get(g.t.Context(), name, metav1.GetOptions{})
}
