package realnode_test

import (
	"fmt"
	"strconv"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/hapod/hapod/internal/dev/clustertest"
	"github.com/hapod/hapod/internal/dev/localcluster"
	"github.com/hapod/hapod/pkg/role"
)

// Real containers start in about a second; the slow start is the demo's
// INIT_DELAY (1 s) and the readiness probe's period (1 s).
const settleTimeout = 90 * time.Second

// failedOver waits until a pod other than old is active with its app active
// at a higher epoch than old's, and returns it.
func (g *group) failedOver(old corev1.Pod, timeout time.Duration) corev1.Pod {
	g.t.Helper()
	oldEpoch, _ := strconv.ParseUint(old.Annotations[role.EpochAnnotation], 10, 64)
	var out corev1.Pod
	clustertest.Eventually(g.t, timeout, func() (bool, error) {
		pods, err := g.livePods()
		if err != nil {
			return false, err
		}
		apps := g.appRoles()
		for _, p := range pods {
			c := apps[p.Name]
			if p.Name != old.Name && p.Labels[roleLabel] == active && c.Role == active && c.Epoch > oldEpoch &&
				strconv.FormatUint(c.Epoch, 10) == p.Annotations[role.EpochAnnotation] {
				out = p
				return true, nil
			}
		}
		return false, fmt.Errorf("no other pod active above epoch %d yet: pods %s, apps %v", oldEpoch, podSummary(pods), apps)
	})
	return out
}

// goneOrDeleting waits until the pod is deleted or being deleted.
func (g *group) goneOrDeleting(p corev1.Pod, timeout time.Duration) {
	g.t.Helper()
	clustertest.Eventually(g.t, timeout, func() (bool, error) {
		cur, err := g.pod(p.Name)
		if apierrors.IsNotFound(err) || (err == nil && (cur.UID != p.UID || cur.DeletionTimestamp != nil)) {
			return true, nil
		}
		if err != nil {
			return false, err
		}
		return false, fmt.Errorf("pod %s is still there, not being deleted", p.Name)
	})
}

func restarts(p *corev1.Pod, container string) int32 {
	for _, cs := range p.Status.ContainerStatuses {
		if cs.Name == container {
			return cs.RestartCount
		}
	}
	return -1
}

// The critical process of the active pod SIGKILLed, with restartPolicy:
// Never on its container (as deploy/example has it): the kubelet reports it
// terminated and leaves it dead, hapod fails over and deletes the pod, the
// ReplicaSet's replacement joins as standby.
func TestCriticalKillFailsOverNoRestart(t *testing.T) {
	g := newGroup(t, groupOptions{criticalNever: true})
	act, _ := g.settled(settleTimeout)
	g.kill(&act, critical)
	g.failedOver(act, 30*time.Second)
	// The kubelet must not have restarted the dead container in place while
	// the pod was still there.
	clustertest.Eventually(t, 30*time.Second, func() (bool, error) {
		cur, err := g.pod(act.Name)
		if apierrors.IsNotFound(err) || (err == nil && cur.UID != act.UID) {
			return true, nil
		}
		if err != nil {
			return false, err
		}
		if n := restarts(cur, critical); n != 0 {
			return false, fmt.Errorf("the kubelet restarted %s/%s in place (%d restarts) despite restartPolicy Never", act.Name, critical, n)
		}
		if cur.DeletionTimestamp == nil {
			return false, fmt.Errorf("pod %s is not being deleted yet", act.Name)
		}
		return true, nil
	})
	g.settled(settleTimeout) // the replacement joins as standby
}

// The same with the pod-level default (Always): the kubelet may restart the
// container in place (about a second after its death), and hapod still
// fails over and replaces the pod; the restarted app is never active.
func TestCriticalKillFailsOverDespiteRestart(t *testing.T) {
	g := newGroup(t, groupOptions{})
	act, _ := g.settled(settleTimeout)
	g.kill(&act, critical)
	g.failedOver(act, 30*time.Second)
	g.goneOrDeleting(act, 30*time.Second)
	g.settled(settleTimeout)
}

// A non-critical container of the active pod killed: the kubelet restarts
// it in place and nothing fails over.
func TestNonCriticalKillRestartedInPlace(t *testing.T) {
	g := newGroup(t, groupOptions{criticalNever: true})
	act, _ := g.settled(settleTimeout)
	g.kill(&act, sidecar)
	clustertest.Eventually(t, 30*time.Second, func() (bool, error) {
		cur, err := g.pod(act.Name)
		if err != nil {
			return false, err
		}
		if n := restarts(cur, sidecar); n < 1 || containerID(cur, sidecar) == "" {
			return false, fmt.Errorf("sidecar of %s not restarted and running yet (%d restarts)", act.Name, n)
		}
		return true, nil
	})
	cur, _ := g.settled(settleTimeout)
	if cur.UID != act.UID || cur.Annotations[role.EpochAnnotation] != act.Annotations[role.EpochAnnotation] {
		t.Fatalf("a non-critical death failed over: active was %s@%s, now %s@%s",
			act.Name, act.Annotations[role.EpochAnnotation], cur.Name, cur.Annotations[role.EpochAnnotation])
	}
}

// The active pod deleted with a grace period: the app gets a real SIGTERM
// and keeps running through its termination, and hapod fails over at the
// deletionTimestamp, not when the pod is gone.
func TestGracefulDeleteFailsOverAtDeletionTimestamp(t *testing.T) {
	g := newGroup(t, groupOptions{criticalNever: true})
	act, _ := g.settled(settleTimeout)
	if err := g.cs.CoreV1().Pods(g.ns).Delete(t.Context(), act.Name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](5)}); err != nil {
		t.Fatal(err)
	}
	g.failedOver(act, 30*time.Second)
	cur, err := g.pod(act.Name)
	if err != nil || cur.UID != act.UID {
		t.Logf("the old pod was gone before the failover was seen (err %v): not a failure, but the deletionTimestamp was not what triggered it", err)
	}
	g.settled(settleTimeout)
}

// A real node's kubelet and containerd stopped and started again
// (localcluster.Cluster.StartRealNode): hapod fails over off the node once it
// is NotReady; started again, the node is Ready within the bound, the old
// active's container (running all along) is still the same one, and its pod
// is Ready again as a standby.
func TestRealNodeStoppedAndStarted(t *testing.T) {
	g := newGroup(t, groupOptions{criticalNever: true})
	act, stb := g.settled(settleTimeout)
	if act.Spec.NodeName == stb.Spec.NodeName {
		t.Fatalf("both pods on %s: the spread constraint should have put one on each node", act.Spec.NodeName)
	}
	var node *localcluster.RealNode
	for _, n := range clustertest.RealNodes(t) {
		if n.Name == act.Spec.NodeName {
			node = n
		}
	}
	if node == nil {
		t.Fatalf("the active pod's node %s is not a real node", act.Spec.NodeName)
	}
	clustertest.StopRealNode(t, node)
	g.failedOver(act, 60*time.Second)
	clustertest.StartRealNode(t, node)
	_, back := g.settled(settleTimeout)
	if back.UID != act.UID {
		t.Fatalf("the standby is %s, want the old active %s back on its restarted node", back.Name, act.Name)
	}
	if id := containerID(&back, critical); id != containerID(&act, critical) || restarts(&back, critical) != 0 {
		t.Fatalf("the old active's container was replaced across the node's restart: %s -> %s, %d restarts", containerID(&act, critical), id, restarts(&back, critical))
	}
}

// A whole real node lost (its kubelet and containerd killed; its containers
// run on, cut off): once kube-controller-manager marks the node not Ready,
// hapod fails over to the pod on the other node and fences the old active,
// whose app is still running. This test must stay the last of the package:
// the lost node does not come back.
func TestRealNodeLostFailsOver(t *testing.T) {
	g := newGroup(t, groupOptions{criticalNever: true})
	act, stb := g.settled(settleTimeout)
	if act.Spec.NodeName == stb.Spec.NodeName {
		t.Fatalf("both pods on %s: the spread constraint should have put one on each node", act.Spec.NodeName)
	}
	var lost bool
	for _, n := range clustertest.RealNodes(t) {
		if n.Name == act.Spec.NodeName {
			clustertest.StopRealNode(t, n)
			lost = true
		}
	}
	if !lost {
		t.Fatalf("the active pod's node %s is not a real node", act.Spec.NodeName)
	}
	newActive := g.failedOver(act, 60*time.Second)
	if newActive.UID != stb.UID {
		t.Fatalf("promoted %s, want the standby %s on the node that is still up", newActive.Name, stb.Name)
	}
	// The old active's app is running still, on the lost node: it must
	// have been told standby (fenced) or have let its lease lapse.
	clustertest.Eventually(t, 30*time.Second, func() (bool, error) {
		c := g.appRoles()[act.Name]
		if c.Role == active {
			return false, fmt.Errorf("the old active's app still holds active@%d", c.Epoch)
		}
		return true, nil
	})
}
