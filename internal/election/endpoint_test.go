package election

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestEndpointReady(t *testing.T) {
	deleting := func(p *corev1.Pod) { p.DeletionTimestamp = &metav1.Time{Time: t0} }
	noStatuses := func(p *corev1.Pod) { p.Status.ContainerStatuses = nil }
	noCritical := func(p *corev1.Pod) { p.Spec.Containers[0].Env = nil }
	cases := []struct {
		name string
		pod  *corev1.Pod
		want bool
	}{
		// The plain case: Running, every container up.
		{"running", newPod(), true},
		// The point of the rule: a dead non-critical sidecar makes the pod
		// not Ready, but the app serves; the endpoint stays.
		{"sidecar died, pod not Ready", newPod(terminated("sidecar", 1), notReadySince(t0)), true},
		// Pod Ready is not consulted in either direction.
		{"not Ready, all running", newPod(notReadySince(t0)), true},
		// The critical container is down: no endpoint to send traffic to.
		{"critical died", newPod(terminated("app", 137)), false},
		// A deleting pod is on its way out; its successor takes over.
		{"deleting", newPod(deleting), false},
		{"pending", newPod(phase(corev1.PodPending)), false},
		{"failed", newPod(phase(corev1.PodFailed)), false},
		// Statuses not reported yet: the critical container is not known
		// to run.
		{"no statuses", newPod(noStatuses), false},
		// Without critical containers only phase and deletion count.
		{"no critical containers", newPod(noCritical, terminated("app", 1)), true},
		// A value other than the critical one is not critical.
		{"unknown criticality value", newPod(criticalValue("high"), terminated("app", 1)), true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := EndpointReady(tc.pod, opts.Criticality); got != tc.want {
				t.Errorf("EndpointReady = %v, want %v", got, tc.want)
			}
		})
	}
}
