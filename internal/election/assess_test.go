package election

import (
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

var (
	t0   = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	opts = Options{
		Criticality:   Criticality{EnvName: "pwcriticality", EnvValue: "critical"},
		NotReadyGrace: 2 * time.Second,
	}
)

// podOpt changes a fixture pod; pods start Running and Ready with a
// critical "app" container and a non-critical "sidecar".
type podOpt func(*corev1.Pod)

func newPod(opts ...podOpt) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "p", CreationTimestamp: metav1.NewTime(t0)},
		Spec: corev1.PodSpec{Containers: []corev1.Container{
			{Name: "app", Env: []corev1.EnvVar{{Name: "pwcriticality", Value: "critical"}}},
			{Name: "sidecar"},
		}},
		Status: corev1.PodStatus{
			Phase: corev1.PodRunning,
			Conditions: []corev1.PodCondition{{
				Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: metav1.NewTime(t0),
			}},
			ContainerStatuses: []corev1.ContainerStatus{
				{Name: "app", State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{}}},
				{Name: "sidecar", State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{}}},
			},
		},
	}
	for _, o := range opts {
		o(p)
	}
	return p
}

func terminated(container string, code int32) podOpt {
	return func(p *corev1.Pod) {
		for i := range p.Status.ContainerStatuses {
			if p.Status.ContainerStatuses[i].Name == container {
				p.Status.ContainerStatuses[i].State = corev1.ContainerState{
					Terminated: &corev1.ContainerStateTerminated{ExitCode: code, Reason: "Error"},
				}
			}
		}
	}
}

func restarted(container string) podOpt {
	return func(p *corev1.Pod) {
		for i := range p.Status.ContainerStatuses {
			cs := &p.Status.ContainerStatuses[i]
			if cs.Name == container {
				cs.RestartCount = 1
				cs.LastTerminationState.Terminated = &corev1.ContainerStateTerminated{ExitCode: 137, Reason: "OOMKilled"}
			}
		}
	}
}

func notReadySince(at time.Time) podOpt {
	return func(p *corev1.Pod) {
		p.Status.Conditions[0].Status = corev1.ConditionFalse
		p.Status.Conditions[0].LastTransitionTime = metav1.NewTime(at)
	}
}

func phase(ph corev1.PodPhase) podOpt { return func(p *corev1.Pod) { p.Status.Phase = ph } }

func criticalValue(v string) podOpt {
	return func(p *corev1.Pod) { p.Spec.Containers[0].Env[0].Value = v }
}

func node(ready corev1.ConditionStatus) *corev1.Node {
	return &corev1.Node{Status: corev1.NodeStatus{Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: ready}}}}
}

func TestAssess(t *testing.T) {
	deleting := func(p *corev1.Pod) { now := metav1.NewTime(t0); p.DeletionTimestamp = &now }
	noStatuses := func(p *corev1.Pod) { p.Status.ContainerStatuses = nil }
	now := t0.Add(time.Minute)
	tests := []struct {
		name         string
		pod          *corev1.Pod
		node         *corev1.Node
		wantFault    Fault
		wantEligible bool
		wantDoomed   bool
		wantDeadline time.Time
		wantUnknown  int
	}{
		// The healthy pod every other case departs from.
		{name: "healthy", pod: newPod(), node: node(corev1.ConditionTrue), wantEligible: true},
		// Deleting comes first: graceful termination must not keep the label.
		{name: "deletion timestamp", pod: newPod(deleting), wantFault: Deleting},
		{name: "failed phase", pod: newPod(phase(corev1.PodFailed)), wantFault: PodFailed},
		{name: "succeeded phase", pod: newPod(phase(corev1.PodSucceeded)), wantFault: PodSucceeded},
		{name: "critical terminated", pod: newPod(terminated("app", 1)), wantFault: CriticalDied, wantDoomed: true},
		// The kubelet restarted it before we looked: restartCount tells.
		{name: "critical restarted", pod: newPod(restarted("app")), wantFault: CriticalDied, wantDoomed: true},
		// Doomed even while being deleted, so that the Event names the container.
		{name: "critical dead and deleting", pod: newPod(terminated("app", 1), deleting), wantFault: Deleting, wantDoomed: true},
		// Non-critical deaths are the kubelet's business.
		{name: "sidecar terminated", pod: newPod(terminated("sidecar", 1)), wantEligible: true},
		{name: "sidecar restarted", pod: newPod(restarted("sidecar")), wantEligible: true},
		{name: "node not ready", pod: newPod(), node: node(corev1.ConditionFalse), wantFault: NodeNotReady},
		{name: "node unreachable", pod: newPod(), node: node(corev1.ConditionUnknown), wantFault: NodeNotReady},
		{name: "not ready within grace", pod: newPod(notReadySince(now.Add(-time.Second))), wantDeadline: now.Add(time.Second)},
		{name: "not ready past grace", pod: newPod(notReadySince(now.Add(-3 * time.Second))), wantFault: NotReadyTooLong},
		// Never reported: starting up, not a fault, not promotable.
		{name: "starting", pod: newPod(func(p *corev1.Pod) { p.Status.Conditions = nil })},
		{name: "no container statuses", pod: newPod(noStatuses)},
		{name: "pending", pod: newPod(phase(corev1.PodPending))},
		// An unknown value warns and counts as non-critical.
		{name: "unknown criticality", pod: newPod(criticalValue("yes"), terminated("app", 1)), wantEligible: true, wantUnknown: 1},
		{name: "empty criticality", pod: newPod(criticalValue(""), terminated("app", 1)), wantEligible: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := Assess(tc.pod, tc.node, now, opts)
			if s.Fault != tc.wantFault || s.Eligible != tc.wantEligible || s.Doomed != tc.wantDoomed ||
				!s.ReadyDeadline.Equal(tc.wantDeadline) || len(s.UnknownCriticality) != tc.wantUnknown {
				t.Errorf("Assess = %+v; want fault %q eligible %v doomed %v deadline %v unknown %d",
					s, tc.wantFault, tc.wantEligible, tc.wantDoomed, tc.wantDeadline, tc.wantUnknown)
			}
		})
	}
}

func TestAssessDeathDetails(t *testing.T) {
	s := Assess(newPod(restarted("app")), nil, t0, opts)
	want := ContainerDeath{Container: "app", ExitCode: 137, Reason: "OOMKilled"}
	if s.Death == nil || *s.Death != want {
		t.Fatalf("Death = %+v, want %+v", s.Death, want)
	}
}
