package podstatus

import (
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// podStatus is what kwok's pod-ready stage leaves for a pod with external readiness.
func podStatus() *corev1.PodStatus {
	then := metav1.NewTime(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	running := corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: then}}
	return &corev1.PodStatus{
		Phase: corev1.PodRunning,
		Conditions: []corev1.PodCondition{
			{Type: corev1.PodInitialized, Status: corev1.ConditionTrue, LastTransitionTime: then},
			{Type: corev1.PodReady, Status: corev1.ConditionFalse, LastTransitionTime: then},
			{Type: corev1.ContainersReady, Status: corev1.ConditionFalse, LastTransitionTime: then},
		},
		ContainerStatuses: []corev1.ContainerStatus{{Name: "app", State: running}, {Name: "sidecar", State: running}},
	}
}

func condition(st *corev1.PodStatus, typ corev1.PodConditionType) corev1.PodCondition {
	for _, c := range st.Conditions {
		if c.Type == typ {
			return c
		}
	}
	return corev1.PodCondition{}
}

func TestStatusChanges(t *testing.T) {
	st := podStatus()
	now := metav1.NewTime(time.Date(2026, 1, 1, 0, 0, 5, 0, time.UTC))
	if err := Ready(st, now); err != nil {
		t.Fatal(err)
	}
	for _, c := range st.ContainerStatuses {
		if !c.Ready || c.Started == nil || !*c.Started {
			t.Errorf("after Ready, container %s: ready %t started %v", c.Name, c.Ready, c.Started)
		}
	}
	for _, typ := range []corev1.PodConditionType{corev1.PodReady, corev1.ContainersReady} {
		if c := condition(st, typ); c.Status != corev1.ConditionTrue || !c.LastTransitionTime.Equal(&now) {
			t.Errorf("after Ready, %s: %+v", typ, c)
		}
	}
	if c := condition(st, corev1.PodInitialized); c.LastTransitionTime.Equal(&now) {
		t.Error("Ready moved an unchanged condition's transition time")
	}

	later := metav1.NewTime(now.Add(time.Second))
	if err := Terminated("sidecar", 1, "Error")(st, later); err != nil {
		t.Fatal(err)
	}
	sc := ContainerStatus(st, "sidecar")
	if sc.State.Terminated == nil || sc.State.Terminated.ExitCode != 1 || sc.State.Running != nil || sc.Ready || sc.RestartCount != 0 {
		t.Fatalf("after Terminated: %+v", sc)
	}
	if !sc.State.Terminated.StartedAt.Equal(&metav1.Time{Time: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}) {
		t.Errorf("terminated startedAt %v, want the running container's", sc.State.Terminated.StartedAt)
	}
	if c := condition(st, corev1.PodReady); c.Status != corev1.ConditionFalse || c.Reason != "ContainersNotReady" {
		t.Errorf("after Terminated, Ready: %+v", c)
	}
	if !ContainerStatus(st, "app").Ready {
		t.Error("Terminated touched another container")
	}

	again := metav1.NewTime(later.Add(time.Second))
	if err := Restarted("sidecar")(st, again); err != nil {
		t.Fatal(err)
	}
	sc = ContainerStatus(st, "sidecar")
	if sc.State.Running == nil || sc.RestartCount != 1 || !sc.Ready || sc.LastTerminationState.Terminated == nil || sc.LastTerminationState.Terminated.ExitCode != 1 {
		t.Fatalf("after Restarted: %+v", sc)
	}
	if c := condition(st, corev1.PodReady); c.Status != corev1.ConditionTrue {
		t.Errorf("after Restarted, Ready: %+v", c)
	}
	if err := Restarted("sidecar")(st, again); err == nil {
		t.Error("restarted a running container")
	}
	if err := Terminated("nope", 1, "Error")(st, again); err == nil {
		t.Error("terminated a container that does not exist")
	}
}
