package election

import (
	"time"

	corev1 "k8s.io/api/core/v1"
)

// The one place that reads Ready conditions; the controller and the
// development tools use these too.

// PodReady reports whether the pod's Ready condition is True.
func PodReady(pod *corev1.Pod) bool {
	ready, _ := podReadySince(pod)
	return ready
}

// podReadySince returns whether the pod is Ready and when the condition
// last changed. A zero time means the pod never reported the condition.
func podReadySince(pod *corev1.Pod) (bool, time.Time) {
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue, c.LastTransitionTime.Time
		}
	}
	return false, time.Time{}
}

// NodeReadyStatus is the node's Ready condition status; Unknown if the node
// never reported one.
func NodeReadyStatus(node *corev1.Node) corev1.ConditionStatus {
	for _, c := range node.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status
		}
	}
	return corev1.ConditionUnknown
}

// nodeDown reports whether the node has said it is not Ready (False or
// Unknown). A node that never reported Ready is unknown, not down.
func nodeDown(node *corev1.Node) bool {
	for _, c := range node.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status != corev1.ConditionTrue
		}
	}
	return false
}
