package controller

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"github.com/hapod/hapod/internal/election"
)

func TestAmbiguous(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		// No answer, or a broken one: the request may have been committed.
		{"connection reset", errConnReset, true},
		{"deadline", fmt.Errorf("patch: %w", context.DeadlineExceeded), true},
		{"server error", apierrorsInternal(), true},
		{"server timeout", apierrors.NewServerTimeout(corev1.Resource("pods"), "patch", 1), true},
		{"gateway timeout", apierrors.NewTimeoutError("etcd", 1), true},
		// An answer that refuses: nothing was written.
		{"webhook denial", apierrorsForbidden(), false},
		{"too many requests", apierrorsTooMany(), false},
		{"conflict (uid precondition)", apierrors.NewConflict(corev1.Resource("pods"), "a", errors.New("uid mismatch")), false},
		{"not found", apierrors.NewNotFound(corev1.Resource("pods"), "a"), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := ambiguous(tc.err); got != tc.want {
				t.Errorf("ambiguous(%v) = %v, want %v", tc.err, got, tc.want)
			}
		})
	}
}

func TestProvenDead(t *testing.T) {
	running := corev1.ContainerState{Running: &corev1.ContainerStateRunning{}}
	terminated := corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: 137}}
	pod := func(phase corev1.PodPhase, app corev1.ContainerState) *corev1.Pod {
		return &corev1.Pod{Status: corev1.PodStatus{Phase: phase, ContainerStatuses: []corev1.ContainerStatus{{Name: "app", State: app}}}}
	}
	death := &election.ContainerDeath{Container: "app"}
	for _, tc := range []struct {
		name string
		pod  *corev1.Pod
		st   election.Status
		want bool
	}{
		// The kubelet reports the pod finished: every container is dead.
		{"pod failed", pod(corev1.PodFailed, terminated), election.Status{Fault: election.PodFailed}, true},
		{"pod succeeded", pod(corev1.PodSucceeded, terminated), election.Status{Fault: election.PodSucceeded}, true},
		// The app's own container is terminated now.
		{"critical container terminated", pod(corev1.PodRunning, terminated), election.Status{Death: death}, true},
		// Restarted: a new process runs (it starts at Unknown, but its
		// death is not proof of anything now).
		{"critical container restarted", pod(corev1.PodRunning, running), election.Status{Death: death}, false},
		// Being deleted, or on a NotReady node: may still run.
		{"deleting", pod(corev1.PodRunning, running), election.Status{Fault: election.Deleting}, false},
		{"node not ready", pod(corev1.PodRunning, running), election.Status{Fault: election.NodeNotReady}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := provenDead(tc.pod, tc.st); got != tc.want {
				t.Errorf("provenDead = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestMayHoldActive(t *testing.T) {
	for _, tc := range []struct {
		name  string
		label string
		told  *told
		want  bool
	}{
		{"labelled active, never told (a restarted controller)", "active", nil, true},
		{"told active, label not written (a cut-short promotion)", "standby", &told{role: "active", epoch: 3}, true},
		{"told active, message not acked", "standby", &told{role: "active", epoch: 3, failedAt: time.Unix(1, 0)}, true},
		{"standby told standby", "standby", &told{role: "standby", epoch: 3, acked: true}, false},
		{"standby never told", "standby", nil, false},
		{"no role label yet", "", nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := mayHoldActive(tc.label, tc.told, "active"); got != tc.want {
				t.Errorf("mayHoldActive = %v, want %v", got, tc.want)
			}
		})
	}
}
