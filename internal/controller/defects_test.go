package controller_test

// Regression tests for issue 9, defects 6-8: the epoch Lease deleted, old
// and correlated critical deaths, criticality the controller cannot read.
// Each asserts what the apps (real pkg/role listeners on loopback) hold,
// not only labels.

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/utils/ptr"

	"github.com/hapod/hapod/internal/controller"
	"github.com/hapod/hapod/internal/dev/clustertest"
	"github.com/hapod/hapod/internal/dev/podstatus"
	"github.com/hapod/hapod/pkg/role"
)

func (e *env) deleteLease(group string) {
	e.t.Helper()
	err := e.cs.CoordinationV1().Leases(e.ns).Delete(e.t.Context(), controller.LeaseName(e.cfg.LeasePrefix, group), metav1.DeleteOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) setLeaseEpoch(group string, epoch int32) {
	e.t.Helper()
	l, err := e.cs.CoordinationV1().Leases(e.ns).Get(e.t.Context(), controller.LeaseName(e.cfg.LeasePrefix, group), metav1.GetOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	l.Spec.LeaseTransitions = &epoch
	if _, err := e.cs.CoordinationV1().Leases(e.ns).Update(e.t.Context(), l, metav1.UpdateOptions{}); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) annotateEpoch(pod string, epoch uint64) {
	e.t.Helper()
	patch := fmt.Sprintf(`{"metadata":{"annotations":{%q:"%d"}}}`, role.EpochAnnotation, epoch)
	if _, err := e.cs.CoreV1().Pods(e.ns).Patch(e.t.Context(), pod, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		e.t.Fatal(err)
	}
}

// deletePod deletes the pod; its app, if any, goes with it (ls may be nil),
// which also frees the pod IP for a replacement.
func (e *env) deletePod(name string, ls map[string]*role.Listener) {
	e.t.Helper()
	if l := ls[name]; l != nil {
		l.Close()
		delete(ls, name)
	}
	if err := e.cs.CoreV1().Pods(e.ns).Delete(e.t.Context(), name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		e.t.Fatal(err)
	}
}

// listenNew starts listeners on the group's Running pods that have none yet
// (replacements the ReplicaSet created), as their apps would.
func (e *env) listenNew(group string, ls map[string]*role.Listener, n int) {
	e.t.Helper()
	for _, p := range e.runningPods(group, n) {
		if ls[p.Name] == nil {
			ls[p.Name] = e.listen(p)
		}
	}
}

// Defect 6: with the Lease deleted under a running controller, failover
// goes on past the reserved block (the Lease is recreated at once), and
// every app is told a higher epoch than the one before. The pods'
// annotations are no full record (here each new active's is reset, as a
// tool rewriting pod metadata would): before the fix the controller, on
// the failed Lease write, forgot its epoch and started again from the
// annotations, so the next app was told an epoch it had seen pass.
func TestLeaseDeletedFailoverGoesOn(t *testing.T) {
	e := newEnv(t)
	e.neverTwoActive("hapod")
	e.replicaSet("hapod", 3)
	ls := e.listeners(e.runningPods("hapod", 3))
	e.startController()
	act := e.active("hapod")
	held := waitRole(t, ls[act.Name], role.Active, 1).Epoch
	reserved := e.leaseEpoch("hapod")
	e.deleteLease("hapod")

	// More failovers than the reservation holds.
	for range int(reserved) + 2 {
		e.annotateEpoch(act.Name, 1)
		prev := act
		e.deletePod(prev.Name, ls)
		act = e.active("hapod", prev.Name)
		e.listenNew("hapod", ls, 3)
		s := waitRole(t, ls[act.Name], role.Active, held+1)
		t.Logf("failover %s -> %s, app told epoch %d", prev.Name, act.Name, s.Epoch)
		held = s.Epoch
	}
	if got := e.leaseEpoch("hapod"); uint64(got) < held {
		t.Errorf("recreated Lease reserves up to %d, below the epoch in use %d", got, held)
	}
}

// Defect 6: a controller restarted with the Lease gone continues above
// every epoch an app may hold. The active's annotation is set back to 1 as
// if its write had been lost after the app was told 2 (the case the
// reservation exists for): before the fix the next promotion reused epoch
// 2, so two apps had held "active at 2" and fencing by epoch downstream
// could not tell them apart.
func TestLeaseGoneAtRestartEpochNeverGoesBack(t *testing.T) {
	e := newEnv(t)
	e.neverTwoActive("hapod")
	e.barePods("hapod", 3)
	ls := e.listeners(e.runningPods("hapod", 3))
	first := e.startController()
	gone := e.active("hapod")
	e.deletePod(gone.Name, nil)
	act := e.active("hapod", gone.Name)
	held := waitRole(t, ls[act.Name], role.Active, 2)
	first.stop()
	e.deleteLease("hapod")
	e.annotateEpoch(act.Name, 1)

	e.startController()
	// The restarted controller has read the group once it recreated the
	// Lease (a healthy active keeps a reserve); deleting the active before
	// that would lose the last trace of the history with it.
	clustertest.Eventually(t, 15*time.Second, func() (bool, error) {
		_, err := e.cs.CoordinationV1().Leases(e.ns).Get(t.Context(), controller.LeaseName(e.cfg.LeasePrefix, "hapod"), metav1.GetOptions{})
		return err == nil, err
	})
	if got := uint64(e.leaseEpoch("hapod")); got <= held.Epoch {
		t.Errorf("Lease recreated at %d, not above the epoch %d an app holds", got, held.Epoch)
	}
	e.deletePod(act.Name, nil)
	next := e.active("hapod", act.Name)
	if epochOf(next) <= held.Epoch {
		t.Fatalf("promoted at epoch %d after a restart without the Lease; an app held %d", epochOf(next), held.Epoch)
	}
	if s := waitRole(t, ls[next.Name], role.Active, epochOf(next)); s.Epoch != epochOf(next) {
		t.Errorf("app holds epoch %d, pod annotated %d", s.Epoch, epochOf(next))
	}
	if got := uint64(e.leaseEpoch("hapod")); got < epochOf(next) {
		t.Errorf("recreated Lease reserves up to %d, below the epoch in use %d", got, epochOf(next))
	}
}

// Defect 6: the Lease's 32-bit count caps epochs. The last epoch is handed
// out; the promotion after it is refused with an Event, and nothing wraps:
// the apps keep the epochs they hold.
func TestEpochsNeverWrap(t *testing.T) {
	const last = 1<<31 - 1
	e := newEnv(t)
	e.neverTwoActive("hapod")
	e.barePods("hapod", 3)
	ls := e.listeners(e.runningPods("hapod", 3))
	first := e.startController()
	act := e.active("hapod")
	first.stop()
	e.setLeaseEpoch("hapod", last-1)
	e.annotateEpoch(act.Name, last-1)

	e.startController()
	e.deletePod(act.Name, nil)
	next := e.active("hapod", act.Name)
	if epochOf(next) != last {
		t.Fatalf("promoted at %d, want %d", epochOf(next), last)
	}
	waitRole(t, ls[next.Name], role.Active, last)

	e.deletePod(next.Name, nil)
	e.hasEvent("", controller.ReasonEpochsExhausted)
	for name, l := range ls {
		if name == next.Name || name == act.Name {
			continue // deleted
		}
		if s := l.State(); s.Epoch > last || s.Role == role.Active {
			t.Errorf("app %s holds %+v after the epochs ran out", name, s)
		}
	}
	if got := e.leaseEpoch("hapod"); got != last {
		t.Errorf("Lease holds %d, want %d (never wrapped)", got, last)
	}
}

// restartedLongAgo is the status of a container the kubelet restarted
// once, an hour ago: running, restartCount 1, lastState finished then.
func restartedLongAgo(container string) podstatus.Change {
	return func(st *corev1.PodStatus, now metav1.Time) error {
		c := podstatus.ContainerStatus(st, container)
		if c == nil {
			return fmt.Errorf("no status for container %s", container)
		}
		ago := metav1.NewTime(now.Add(-time.Hour))
		c.LastTerminationState = corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
			ExitCode: 137, Reason: "OOMKilled", StartedAt: ago, FinishedAt: ago,
		}}
		c.RestartCount = 1
		return nil
	}
}

// Defect 7: installing hapod over pods that restarted once, long ago,
// dooms none of them: one is elected, its app told, nothing deleted.
// Before the fix every pod counted as dead: no election, all deleted.
func TestOldRestartsDoomNothing(t *testing.T) {
	e := newEnv(t)
	e.replicaSet("hapod", 2)
	pods := e.runningPods("hapod", 2)
	ls := e.listeners(pods)
	for _, p := range pods {
		if _, err := podstatus.Write(t.Context(), e.cs, e.ns, p.Name, p.UID, clustertest.FieldManager, restartedLongAgo("app")); err != nil {
			t.Fatal(err)
		}
	}
	r := e.startController()
	act := e.active("hapod")
	if ls[act.Name] == nil {
		t.Fatalf("the active %s is a replacement: the pods that restarted long ago were deleted", act.Name)
	}
	waitRole(t, ls[act.Name], role.Active, 1)
	stays(t, 1500*time.Millisecond, func() error {
		for _, p := range pods {
			cur, err := e.cs.CoreV1().Pods(e.ns).Get(t.Context(), p.Name, metav1.GetOptions{})
			if err != nil || cur.DeletionTimestamp != nil || cur.UID != p.UID {
				return fmt.Errorf("pod %s deleted (err %w)", p.Name, err)
			}
		}
		return nil
	})
	if n := testutil.ToFloat64(r.metrics.CriticalDeletions); n != 0 {
		t.Errorf("critical deletions = %v, want 0", n)
	}
}

// neverNoneServing watches the group for the rest of the test and fails it
// if, once some pod was Ready, no pod is Ready and not being deleted: the
// cold start a correlated crash must not cause.
func (e *env) neverNoneServing(group string) {
	t := e.t
	t.Helper()
	w, err := e.cs.CoreV1().Pods(e.ns).Watch(t.Context(), metav1.ListOptions{LabelSelector: labels.Set{"app": group}.String()})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	var violation error
	go func() {
		defer close(done)
		serving := map[string]bool{}
		seen := false
		for ev := range w.ResultChan() {
			p, ok := ev.Object.(*corev1.Pod)
			if !ok {
				continue
			}
			if ev.Type != watch.Deleted && p.DeletionTimestamp == nil && ready(p) {
				serving[p.Name], seen = true, true
			} else {
				delete(serving, p.Name)
			}
			if seen && len(serving) == 0 && violation == nil {
				violation = fmt.Errorf("no pod serving at resourceVersion %s (%s %s)", p.ResourceVersion, ev.Type, p.Name)
			}
		}
	}()
	t.Cleanup(func() {
		w.Stop()
		<-done
		if violation != nil {
			t.Error(violation)
		}
	})
}

// crashAndRestart writes what the kubelet writes when a container dies and
// is restarted: terminated, then running again with restartCount + 1.
func (e *env) crashAndRestart(p corev1.Pod, container string) {
	e.t.Helper()
	for _, change := range []podstatus.Change{podstatus.Terminated(container, 1, "Error"), podstatus.Restarted(container)} {
		if _, err := podstatus.Write(e.t.Context(), e.cs, e.ns, p.Name, p.UID, clustertest.FieldManager, change); err != nil {
			e.t.Fatal(err)
		}
	}
}

// restartedNow is the status of a container the kubelet has just
// restarted, written in one go (a fast restart the controller never sees
// terminated): running, restartCount + 1, lastState finished now.
func restartedNow(container string) podstatus.Change {
	return func(st *corev1.PodStatus, now metav1.Time) error {
		c := podstatus.ContainerStatus(st, container)
		if c == nil {
			return fmt.Errorf("no status for container %s", container)
		}
		c.LastTerminationState = corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
			ExitCode: 1, Reason: "Error", StartedAt: now, FinishedAt: now,
		}}
		c.State = corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: now}}
		c.RestartCount++
		return nil
	}
}

// Defect 7: the critical container of every replica crashes and restarts
// at once (a shared dependency failed). The doomed standby is deleted, but
// the active, doomed too, stays active (its app is never told otherwise)
// until a replacement is Ready and takes over; at no moment is no pod
// serving. Bare pods, so that the replacement comes when the test says.
// Before the fix both pods were deleted together: a cold start.
func TestEveryReplicaCrashedKeepsOneServing(t *testing.T) {
	e := newEnv(t)
	e.neverTwoActive("hapod")
	e.barePods("hapod", 2)
	pods := e.runningPods("hapod", 2)
	ls := e.listeners(pods)
	e.startController()
	act := e.active("hapod")
	waitRole(t, ls[act.Name], role.Active, 1)
	var standby corev1.Pod
	for _, p := range pods {
		if p.Name != act.Name {
			standby = p
		}
	}
	e.neverNoneServing("hapod")
	for _, p := range []corev1.Pod{standby, act} {
		if _, err := podstatus.Write(t.Context(), e.cs, e.ns, p.Name, p.UID, clustertest.FieldManager, restartedNow("app")); err != nil {
			t.Fatal(err)
		}
	}
	e.gone(standby)
	ls[standby.Name].Close() // its app goes with the pod, and frees the IP
	delete(ls, standby.Name)
	stays(t, 1500*time.Millisecond, func() error {
		cur, err := e.cs.CoreV1().Pods(e.ns).Get(t.Context(), act.Name, metav1.GetOptions{})
		if err != nil || cur.DeletionTimestamp != nil || cur.Labels["role"] != "active" {
			return fmt.Errorf("the last warm pod lost the active role or was deleted (err %w)", err)
		}
		if s := ls[act.Name].State(); s.Role != role.Active {
			return fmt.Errorf("the active's app holds %+v", s)
		}
		return nil
	})

	// A replacement comes up; it takes over from the doomed active, which
	// is then deleted.
	tmpl := e.podTemplate("hapod")
	repl := &corev1.Pod{ObjectMeta: tmpl.ObjectMeta, Spec: tmpl.Spec}
	repl.Name = "hapod-replacement"
	if _, err := e.cs.CoreV1().Pods(e.ns).Create(t.Context(), repl, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	e.listenNew("hapod", ls, 2)
	next := e.active("hapod", act.Name)
	if next.Name != repl.Name {
		t.Fatalf("promoted %s, want the replacement", next.Name)
	}
	waitRole(t, ls[next.Name], role.Active, epochOf(next))
	waitRole(t, ls[act.Name], role.Standby, epochOf(next))
	e.gone(act)
}

// Defect 8: criticality set through valueFrom (or possibly envFrom) is
// reported once per pod with a Warning Event and treated as non-critical:
// the container's death is left to the kubelet.
func TestUnreadableCriticalityWarns(t *testing.T) {
	e := newEnv(t)
	e.cfg.NotReadyGrace = time.Minute
	tmpl := e.podTemplate("hapod")
	tmpl.Spec.Containers[0].Env = []corev1.EnvVar{{Name: "pwcriticality", ValueFrom: &corev1.EnvVarSource{
		FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.annotations['criticality']"},
	}}}
	if _, err := e.cs.AppsV1().ReplicaSets(e.ns).Create(t.Context(), newRS("hapod", 2, tmpl), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	ls := e.listeners(e.runningPods("hapod", 2))
	r := e.startController()
	act := e.active("hapod")
	waitRole(t, ls[act.Name], role.Active, 1)
	e.hasEvent(act.Name, controller.ReasonUnreadableCriticality)
	e.crashAndRestart(act, "app")
	stays(t, 1500*time.Millisecond, func() error {
		cur, err := e.cs.CoreV1().Pods(e.ns).Get(t.Context(), act.Name, metav1.GetOptions{})
		if err != nil || cur.DeletionTimestamp != nil || cur.Labels["role"] != "active" {
			return fmt.Errorf("active changed after a container of unreadable criticality restarted (err %w)", err)
		}
		if s := ls[act.Name].State(); s.Role != role.Active {
			return fmt.Errorf("app holds %+v", s)
		}
		return nil
	})
	if n := testutil.ToFloat64(r.metrics.CriticalDeletions); n != 0 {
		t.Errorf("critical deletions = %v, want 0", n)
	}
	perPod := e.eventCounts(controller.ReasonUnreadableCriticality)
	if len(perPod) != 2 {
		t.Errorf("%s Events about %d pods, want 2: %v", controller.ReasonUnreadableCriticality, len(perPod), perPod)
	}
	for pod, n := range perPod {
		if n != 1 {
			t.Errorf("%d %s Events about %s, want 1", n, controller.ReasonUnreadableCriticality, pod)
		}
	}
}

// Defect 8: a critical native sidecar (an init container with
// restartPolicy Always) that dies on the active fails the group over and
// gets the pod replaced, like a critical container. Before the fix it was
// not assessed at all.
func TestCriticalNativeSidecar(t *testing.T) {
	e := newEnv(t)
	e.neverTwoActive("hapod")
	tmpl := e.podTemplate("hapod")
	tmpl.Spec.InitContainers = []corev1.Container{{
		Name: "proxy", Image: "proxy", RestartPolicy: ptr.To(corev1.ContainerRestartPolicyAlways),
		Env: []corev1.EnvVar{{Name: "pwcriticality", Value: "critical"}},
	}}
	if _, err := e.cs.AppsV1().ReplicaSets(e.ns).Create(t.Context(), newRS("hapod", 2, tmpl), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pods := e.runningPods("hapod", 2)
	ls := e.listeners(pods)
	for _, p := range pods {
		e.setSidecar(p, corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: metav1.Now()}})
	}
	e.startController()
	act := e.active("hapod")
	waitRole(t, ls[act.Name], role.Active, 1)

	e.setSidecar(act, corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: 1, Reason: "Error", FinishedAt: metav1.Now()}})
	next := e.active("hapod", act.Name)
	waitRole(t, ls[next.Name], role.Active, epochOf(next))
	e.gone(act)
	e.hasEvent(act.Name, controller.ReasonCriticalContainerDied)
}

// setSidecar writes the status of the pod's native sidecar "proxy", as the
// kubelet would (kwok leaves it to the test).
func (e *env) setSidecar(p corev1.Pod, state corev1.ContainerState) {
	e.t.Helper()
	patch, err := json.Marshal(map[string]any{"status": map[string]any{
		"initContainerStatuses": []corev1.ContainerStatus{{Name: "proxy", Image: "proxy", State: state, Ready: state.Running != nil}},
	}})
	if err != nil {
		e.t.Fatal(err)
	}
	if _, err := e.cs.CoreV1().Pods(e.ns).Patch(e.t.Context(), p.Name, types.MergePatchType, patch, metav1.PatchOptions{}, "status"); err != nil {
		e.t.Fatal(err)
	}
}
