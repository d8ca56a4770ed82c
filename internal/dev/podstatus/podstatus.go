package podstatus

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"
)

// Change edits a pod status as of now; it fails if the pod is not in a state
// the change applies to.
type Change func(st *corev1.PodStatus, now metav1.Time) error

// Write changes a pod's status as a kubelet writes it: read the pod, change
// its container statuses and conditions, and send them as a JSON merge patch
// of the status subresource guarded by the resourceVersion read (retried on
// conflict). A pod of the same name but another UID (or an empty uid: any)
// counts as not found. It returns when the (last) patch was sent: the moment
// the status was written, for timelines.
func Write(ctx context.Context, cs kubernetes.Interface, ns, name string, uid types.UID, fieldManager string, change Change) (sent time.Time, err error) {
	err = retry.RetryOnConflict(retry.DefaultRetry, func() error {
		p, err := cs.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if uid != "" && p.UID != uid {
			return apierrors.NewNotFound(schema.GroupResource{Resource: "pods"}, name)
		}
		patch, err := Patch(p, change)
		if err != nil {
			return err
		}
		sent = time.Now()
		_, err = cs.CoreV1().Pods(ns).Patch(ctx, name, types.MergePatchType, patch, metav1.PatchOptions{FieldManager: fieldManager}, "status")
		return err
	})
	return sent, err
}

// Patch is the status merge patch that applies change to pod as last read,
// guarded by its resourceVersion: for callers that time the write itself
// and so must not read the pod first.
func Patch(pod *corev1.Pod, change Change) ([]byte, error) {
	st := pod.Status.DeepCopy()
	if err := change(st, metav1.Now()); err != nil {
		return nil, fmt.Errorf("pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	return json.Marshal(map[string]any{
		"metadata": map[string]any{"resourceVersion": pod.ResourceVersion},
		"status": map[string]any{
			"containerStatuses": st.ContainerStatuses,
			"conditions":        st.Conditions,
		},
	})
}

// Ready is the status after the readiness probe passed: every container ready and
// started, the pod Ready and ContainersReady.
func Ready(st *corev1.PodStatus, now metav1.Time) error {
	if len(st.ContainerStatuses) == 0 {
		return fmt.Errorf("no container statuses yet")
	}
	for i := range st.ContainerStatuses {
		c := &st.ContainerStatuses[i]
		if c.State.Running == nil {
			return fmt.Errorf("container %s is not running", c.Name)
		}
		c.Ready, c.Started = true, new(true)
	}
	setCondition(st, corev1.ContainersReady, corev1.ConditionTrue, "", "", now)
	setCondition(st, corev1.PodReady, corev1.ConditionTrue, "", "", now)
	return nil
}

// Terminated is the status after a container exited: terminated with the exit code
// and reason, not ready, not started, restartCount unchanged; the pod not Ready.
func Terminated(container string, exitCode int32, reason string) Change {
	return func(st *corev1.PodStatus, now metav1.Time) error {
		c := ContainerStatus(st, container)
		if c == nil {
			return fmt.Errorf("no status for container %s", container)
		}
		startedAt := now
		if c.State.Running != nil {
			startedAt = c.State.Running.StartedAt
		}
		c.State = corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
			ExitCode: exitCode, Reason: reason, StartedAt: startedAt, FinishedAt: now, ContainerID: c.ContainerID,
		}}
		c.Ready, c.Started = false, new(false)
		msg := fmt.Sprintf("containers with unready status: [%s]", container)
		setCondition(st, corev1.ContainersReady, corev1.ConditionFalse, "ContainersNotReady", msg, now)
		setCondition(st, corev1.PodReady, corev1.ConditionFalse, "ContainersNotReady", msg, now)
		return nil
	}
}

// Restarted is the status after the kubelet restarted a terminated container and it
// passed its probes: running again, restartCount one higher, the termination kept as
// lastState; the pod Ready again once every container is.
func Restarted(container string) Change {
	return func(st *corev1.PodStatus, now metav1.Time) error {
		c := ContainerStatus(st, container)
		if c == nil {
			return fmt.Errorf("no status for container %s", container)
		}
		if c.State.Terminated == nil {
			return fmt.Errorf("container %s is not terminated", container)
		}
		c.LastTerminationState = corev1.ContainerState{Terminated: c.State.Terminated}
		c.State = corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: now}}
		c.RestartCount++
		c.Ready, c.Started = true, new(true)
		for _, o := range st.ContainerStatuses {
			if !o.Ready {
				return nil
			}
		}
		setCondition(st, corev1.ContainersReady, corev1.ConditionTrue, "", "", now)
		setCondition(st, corev1.PodReady, corev1.ConditionTrue, "", "", now)
		return nil
	}
}

// ContainerStatus returns the status of the named container in st, or nil.
func ContainerStatus(st *corev1.PodStatus, name string) *corev1.ContainerStatus {
	for i := range st.ContainerStatuses {
		if st.ContainerStatuses[i].Name == name {
			return &st.ContainerStatuses[i]
		}
	}
	return nil
}

// setCondition sets a pod condition, adding it if missing; the transition time moves
// only when the status changes.
func setCondition(st *corev1.PodStatus, typ corev1.PodConditionType, status corev1.ConditionStatus, reason, msg string, now metav1.Time) {
	for i := range st.Conditions {
		c := &st.Conditions[i]
		if c.Type != typ {
			continue
		}
		if c.Status != status {
			c.Status, c.LastTransitionTime = status, now
		}
		c.Reason, c.Message = reason, msg
		return
	}
	st.Conditions = append(st.Conditions, corev1.PodCondition{Type: typ, Status: status, Reason: reason, Message: msg, LastTransitionTime: now})
}
