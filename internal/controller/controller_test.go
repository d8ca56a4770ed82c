package controller_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	"github.com/hapod/hapod/internal/controller"
	"github.com/hapod/hapod/internal/dev/clustertest"
	"github.com/hapod/hapod/pkg/role"
)

// The Service routes to the elected pod alone, and follows a failover.
func TestServiceFollowsActive(t *testing.T) {
	e := newEnv(t)
	e.serviceNode()
	e.neverTwoActive("hapod")
	e.replicaSet("hapod", 2)
	e.service("hapod")
	e.runningPods("hapod", 2)
	e.startController()
	first := e.active("hapod")
	e.waitEndpoints("hapod", first.Status.PodIP)
	if err := e.cs.CoreV1().Pods(e.ns).Delete(t.Context(), first.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	second := e.active("hapod", first.Name)
	e.waitEndpoints("hapod", second.Status.PodIP)
}

// The seed's setup: the earliest-created Ready pod becomes active, its app
// is told it is active and the other that it is standby.
func TestInitialElection(t *testing.T) {
	e := newEnv(t)
	e.neverTwoActive("hapod")
	e.replicaSet("hapod", 2)
	pods := e.runningPods("hapod", 2)
	ls := e.listeners(pods)
	e.startController()

	act := e.active("hapod")
	oldest := pods[0]
	for _, p := range pods[1:] {
		if p.CreationTimestamp.Before(&oldest.CreationTimestamp) ||
			(p.CreationTimestamp.Equal(&oldest.CreationTimestamp) && p.Name < oldest.Name) {
			oldest = p
		}
	}
	if act.Name != oldest.Name {
		t.Errorf("active is %s, want the earliest created %s", act.Name, oldest.Name)
	}
	if epochOf(act) != 1 || e.leaseEpoch("hapod") < 1 {
		t.Errorf("epoch on pod %d, lease reserves up to %d; want 1 and at least 1", epochOf(act), e.leaseEpoch("hapod"))
	}
	waitRole(t, ls[act.Name], role.Active, 1)
	for _, p := range pods {
		if p.Name != act.Name {
			waitRole(t, ls[p.Name], role.Standby, 0)
		}
	}
	e.hasEvent(act.Name, "Promoted")
}

// Deleting the active promotes the standby with a higher epoch, its app
// acks, and the ReplicaSet's replacement joins as standby.
func TestFailoverOnDelete(t *testing.T) {
	e := newEnv(t)
	e.neverTwoActive("hapod")
	e.replicaSet("hapod", 2)
	ls := e.listeners(e.runningPods("hapod", 2))
	e.startController()
	first := e.active("hapod")
	waitRole(t, ls[first.Name], role.Active, 1)

	if err := e.cs.CoreV1().Pods(e.ns).Delete(t.Context(), first.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	second := e.active("hapod", first.Name)
	if epochOf(second) <= epochOf(first) {
		t.Errorf("new active epoch %d, old %d: want higher", epochOf(second), epochOf(first))
	}
	st := waitRole(t, ls[second.Name], role.Active, epochOf(second))
	if st.Epoch != epochOf(second) {
		t.Errorf("app told epoch %d, pod annotated %d", st.Epoch, epochOf(second))
	}

	// The replacement comes up Ready and is standby.
	pods := e.runningPods("hapod", 2)
	for _, p := range pods {
		if p.Name != second.Name && p.Labels["role"] != "standby" {
			clustertest.Eventually(t, 10*time.Second, func() (bool, error) {
				cur, err := e.cs.CoreV1().Pods(e.ns).Get(t.Context(), p.Name, metav1.GetOptions{})
				return err == nil && cur.Labels["role"] == "standby", err
			})
		}
	}
}

// A critical container dying on the active fails over first, then deletes
// the pod so that the ReplicaSet replaces it.
func TestCriticalContainerOnActive(t *testing.T) {
	e := newEnv(t)
	e.neverTwoActive("hapod")
	e.replicaSet("hapod", 2)
	ls := e.listeners(e.runningPods("hapod", 2))
	e.startController()
	first := e.active("hapod")

	clustertest.SetContainerTerminated(t, e.ns, first.Name, "app", 137, "OOMKilled")
	second := e.active("hapod", first.Name)
	waitRole(t, ls[second.Name], role.Active, epochOf(second))
	e.gone(first)
	e.hasEvent(first.Name, "CriticalContainerDied")
	e.runningPods("hapod", 2)
}

// The same on a standby deletes only the standby; the active keeps its
// label and epoch.
func TestCriticalContainerOnStandby(t *testing.T) {
	e := newEnv(t)
	e.replicaSet("hapod", 2)
	pods := e.runningPods("hapod", 2)
	e.listeners(pods)
	e.startController()
	act := e.active("hapod")
	var standby corev1.Pod
	for _, p := range pods {
		if p.Name != act.Name {
			standby = p
		}
	}
	clustertest.SetContainerTerminated(t, e.ns, standby.Name, "app", 1, "Error")
	e.gone(standby)
	e.hasEvent(standby.Name, "CriticalContainerDied")
	e.runningPods("hapod", 2)
	now := e.active("hapod")
	if now.UID != act.UID || epochOf(now) != epochOf(act) {
		t.Errorf("active changed from %s@%d to %s@%d", act.Name, epochOf(act), now.Name, epochOf(now))
	}
}

// A non-critical container's death is left to the kubelet: no failover,
// no deletion.
func TestNonCriticalContainerChangesNothing(t *testing.T) {
	e := newEnv(t)
	// The dead sidecar also makes the pod not Ready, which after the grace
	// is a failover of its own (tested elsewhere); keep it out of the way.
	e.cfg.NotReadyGrace = time.Minute
	e.replicaSet("hapod", 2)
	e.listeners(e.runningPods("hapod", 2))
	r := e.startController()
	act := e.active("hapod")
	clustertest.SetContainerTerminated(t, e.ns, act.Name, "sidecar", 1, "Error")
	stays(t, 1500*time.Millisecond, func() error {
		cur, err := e.cs.CoreV1().Pods(e.ns).Get(t.Context(), act.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if cur.DeletionTimestamp != nil || cur.Labels["role"] != "active" || cur.UID != act.UID {
			return fmt.Errorf("active pod changed after a sidecar died: role %q deleting %v", cur.Labels["role"], cur.DeletionTimestamp != nil)
		}
		return nil
	})
	if n := testutil.ToFloat64(r.metrics.CriticalDeletions); n != 0 {
		t.Errorf("critical deletions = %v, want 0", n)
	}
}

// A critical container without restartPolicy Never (the kubelet may
// restart it in place) gets its pod exactly one CriticalRestartPolicy
// Warning, however many reconciles see it; a pod whose critical container
// has restartPolicy Never, as deploy/example ships it, gets none. Bare
// pods, so that each can have its own spec: hapod-0, with Never, is the
// oldest (or wins the tie by name) and so the first active.
func TestCriticalRestartPolicyWarnsOncePerPod(t *testing.T) {
	e := newEnv(t)
	e.neverTwoActive("hapod")
	const never, lacking = "hapod-0", "hapod-1"
	for _, name := range []string{never, lacking} {
		tmpl := e.podTemplate("hapod")
		pod := &corev1.Pod{ObjectMeta: tmpl.ObjectMeta, Spec: tmpl.Spec}
		pod.Name = name
		if name == never {
			pod.Spec.Containers[0].RestartPolicy = ptr.To(corev1.ContainerRestartPolicyNever)
		}
		if _, err := e.cs.CoreV1().Pods(e.ns).Create(t.Context(), pod, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	ls := e.listeners(e.runningPods("hapod", 2))
	e.startController()
	act := e.active("hapod")
	if act.Name != never {
		t.Fatalf("%s is active, want %s (the oldest)", act.Name, never)
	}
	waitRole(t, ls[never], role.Active, 1)
	e.hasEvent(lacking, controller.ReasonCriticalRestartPolicy)

	// More reconciles that see both pods: a standby's sidecar restarting,
	// then a failover to the pod that lacks Never (its Promoted Event is
	// written by a reconcile that assessed it again).
	for _, p := range e.pods("hapod") {
		if p.Name == lacking {
			e.crashAndRestart(p, "sidecar")
		}
	}
	e.deletePod(never, ls)
	next := e.active("hapod", never)
	waitRole(t, ls[lacking], role.Active, epochOf(next))
	e.hasEvent(lacking, controller.ReasonPromoted)

	// A repeat would be written at once, as a series of count 2; watch a
	// while for one.
	stays(t, time.Second, func() error {
		perPod := e.eventCounts(controller.ReasonCriticalRestartPolicy)
		if n := perPod[never]; n != 0 {
			return fmt.Errorf("%d %s Events about %s, whose critical container has restartPolicy Never", n, controller.ReasonCriticalRestartPolicy, never)
		}
		if n := perPod[lacking]; n != 1 {
			return fmt.Errorf("%d %s Events about %s, want 1", n, controller.ReasonCriticalRestartPolicy, lacking)
		}
		return nil
	})
}

// A controller restarted mid-life keeps the active and its epoch, and the
// next failover takes an epoch above every one the first controller could
// have handed out.
func TestRestartKeepsActiveAndEpoch(t *testing.T) {
	e := newEnv(t)
	e.neverTwoActive("hapod")
	e.replicaSet("hapod", 2)
	ls := e.listeners(e.runningPods("hapod", 2))
	first := e.startController()
	act := e.active("hapod")
	waitRole(t, ls[act.Name], role.Active, 1)
	first.stop()
	reserved := uint64(e.leaseEpoch("hapod"))

	second := e.startController()
	stays(t, 1500*time.Millisecond, func() error {
		cur := e.active("hapod")
		if cur.UID != act.UID || epochOf(cur) != epochOf(act) {
			return fmt.Errorf("restart moved the active: %s@%d -> %s@%d", act.Name, epochOf(act), cur.Name, epochOf(cur))
		}
		return nil
	})
	if n := testutil.ToFloat64(second.metrics.Promotions.WithLabelValues("Initial")); n != 0 {
		t.Errorf("restarted controller promoted %v times", n)
	}
	if err := e.cs.CoreV1().Pods(e.ns).Delete(t.Context(), act.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	next := e.active("hapod", act.Name)
	// Epochs reserved by the first controller may have been used: the
	// next one starts after them, never reusing one.
	if got, want := epochOf(next), reserved+1; got != want {
		t.Errorf("epoch after restart and failover = %d, want %d (first epoch %d)", got, want, epochOf(act))
	}
}

// Two pods labelled active by hand end with one: the higher epoch wins.
func TestDuplicateActivesResolved(t *testing.T) {
	e := newEnv(t)
	e.replicaSet("hapod", 3)
	pods := e.runningPods("hapod", 3)
	for i, p := range pods[:2] {
		patch := fmt.Sprintf(`{"metadata":{"labels":{"role":"active"},"annotations":{"hapod.io/epoch":"%d"}}}`, i+1)
		if _, err := e.cs.CoreV1().Pods(e.ns).Patch(t.Context(), p.Name, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	e.startController()
	act := e.active("hapod")
	if act.Name != pods[1].Name {
		t.Errorf("kept %s, want %s (the higher epoch)", act.Name, pods[1].Name)
	}
}

// With no Ready standby the controller warns, and promotes the first
// standby that becomes Ready. Bare pods: no ReplicaSet races to replace
// the deleted active.
func TestNoReadyStandby(t *testing.T) {
	e := newEnv(t)
	e.barePods("hapod", 2)
	pods := e.runningPods("hapod", 2)
	e.startController()
	act := e.active("hapod")
	var standby corev1.Pod
	for _, p := range pods {
		if p.Name != act.Name {
			standby = p
		}
	}
	setReady(t, e, standby.Name, corev1.ConditionFalse)
	if err := e.cs.CoreV1().Pods(e.ns).Delete(t.Context(), act.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		t.Fatal(err)
	}
	e.hasEvent("", "NoStandbyReady")
	setReady(t, e, standby.Name, corev1.ConditionTrue)
	if now := e.active("hapod"); now.Name != standby.Name {
		t.Errorf("promoted %s, want %s", now.Name, standby.Name)
	}
}

func setReady(t *testing.T, e *env, pod string, status corev1.ConditionStatus) {
	t.Helper()
	patch := fmt.Sprintf(`{"status":{"conditions":[{"type":"Ready","status":"%s","lastTransitionTime":"%s"}]}}`,
		status, time.Now().UTC().Format(time.RFC3339))
	if _, err := e.cs.CoreV1().Pods(e.ns).Patch(t.Context(), pod, types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{}, "status"); err != nil {
		t.Fatal(err)
	}
}

// An active that stays not Ready longer than the grace is failed over,
// without being deleted.
func TestNotReadyTooLongFailsOver(t *testing.T) {
	e := newEnv(t)
	e.cfg.NotReadyGrace = 500 * time.Millisecond
	e.replicaSet("hapod", 2)
	ls := e.listeners(e.runningPods("hapod", 2))
	e.startController()
	first := e.active("hapod")
	setReady(t, e, first.Name, corev1.ConditionFalse)
	second := e.active("hapod", first.Name)
	waitRole(t, ls[second.Name], role.Active, epochOf(second))
	waitRole(t, ls[first.Name], role.Standby, epochOf(second))
	cur, err := e.cs.CoreV1().Pods(e.ns).Get(t.Context(), first.Name, metav1.GetOptions{})
	if err != nil || cur.DeletionTimestamp != nil {
		t.Errorf("the not-Ready pod was deleted (err %v); only a critical container's death deletes", err)
	}
}

// A group whose app does not answer UDP must not hold back another
// group's failover: the second group's app acks while the first group's
// notification is still being retried.
func TestDeadListenerDoesNotBlockOtherGroup(t *testing.T) {
	e := newEnv(t)
	e.cfg.NotifyDeadline = 5 * time.Second
	e.cfg.Selector = "hapod.io/test=true"
	deaf := e.replicaSetLabelled("deaf", 2)
	_ = deaf
	live := e.replicaSetLabelled("live", 2)
	_ = live
	e.runningPods("deaf", 2)
	ls := e.listeners(e.runningPods("live", 2))
	r := e.startController()
	deafActive := e.active("deaf")
	liveActive := e.active("live")
	waitRole(t, ls[liveActive.Name], role.Active, 1)

	for _, p := range []string{deafActive.Name, liveActive.Name} {
		if err := e.cs.CoreV1().Pods(e.ns).Delete(t.Context(), p, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	e.active("deaf", deafActive.Name)
	next := e.active("live", liveActive.Name)
	waitRole(t, ls[next.Name], role.Active, 2)
	if n := testutil.ToFloat64(r.metrics.Notifications.WithLabelValues("active", "timeout")); n != 0 {
		t.Errorf("the deaf group's notification already timed out (%v) before the live group was told", n)
	}
}

// replicaSetLabelled is replicaSet with an extra label that the test's
// selector requires, for tests that run several groups.
func (e *env) replicaSetLabelled(group string, replicas int32) string {
	e.t.Helper()
	tmpl := e.podTemplate(group)
	tmpl.Labels["hapod.io/test"] = "true"
	rs := newRS(group, replicas, tmpl)
	if _, err := e.cs.AppsV1().ReplicaSets(e.ns).Create(e.t.Context(), rs, metav1.CreateOptions{}); err != nil {
		e.t.Fatal(err)
	}
	return group
}

// A controller that died mid-failover (epochs reserved, old active demoted,
// new one not yet labelled) finishes the job on restart with a fresh epoch
// above the reservation.
func TestRestartMidFailover(t *testing.T) {
	e := newEnv(t)
	e.neverTwoActive("hapod")
	e.replicaSet("hapod", 2)
	ls := e.listeners(e.runningPods("hapod", 2))
	r := e.startController()
	first := e.active("hapod")
	r.stop()
	reserved := uint64(e.leaseEpoch("hapod"))

	// What the dead controller left: the old active demoted, nobody active.
	patch := []byte(`{"metadata":{"labels":{"role":"standby"}}}`)
	if _, err := e.cs.CoreV1().Pods(e.ns).Patch(t.Context(), first.Name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	e.startController()
	act := e.active("hapod")
	if epochOf(act) != reserved+1 {
		t.Errorf("epoch after restart = %d, want %d (above the reservation)", epochOf(act), reserved+1)
	}
	waitRole(t, ls[act.Name], role.Active, reserved+1)
}

// The active's node failing (its kubelet stops heartbeating) fails the
// group over to a standby on another node, without deleting anything.
func TestNodeFailureFailsOver(t *testing.T) {
	e := newEnv(t)
	e.neverTwoActive("hapod")
	e.barePods("hapod", 1) // on e.node: the oldest, so it becomes active
	other := clustertest.Node(t)
	tmpl := e.podTemplate("hapod")
	tmpl.Spec.NodeName = other
	standby := &corev1.Pod{ObjectMeta: tmpl.ObjectMeta, Spec: tmpl.Spec}
	standby.Name = "hapod-on-other-node"
	if _, err := e.cs.CoreV1().Pods(e.ns).Create(t.Context(), standby, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	ls := e.listeners(e.runningPods("hapod", 2))
	e.startController()
	first := e.active("hapod")
	if first.Spec.NodeName != e.node {
		t.Fatalf("active %s is on %s, want %s", first.Name, first.Spec.NodeName, e.node)
	}
	clustertest.FailNode(t, e.node)
	second := e.active("hapod", first.Name)
	if second.Name != standby.Name {
		t.Errorf("promoted %s, want %s", second.Name, standby.Name)
	}
	waitRole(t, ls[second.Name], role.Active, epochOf(second))
	// The old active may still run behind a partition: it is fenced with
	// the new epoch.
	waitRole(t, ls[first.Name], role.Standby, epochOf(second))
}
