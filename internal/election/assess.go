package election

import (
	"time"

	corev1 "k8s.io/api/core/v1"
)

// Fault says why a pod cannot be (or stay) the active one. The zero value
// means no fault.
type Fault string

// Faults, in the order Assess checks them: the first that applies wins, so
// the reason reported for a failover is the most fundamental one.
const (
	NoFault         Fault = ""
	Deleting        Fault = "PodDeleting"
	PodFailed       Fault = "PodFailed"
	PodSucceeded    Fault = "PodSucceeded"
	CriticalDied    Fault = "CriticalContainerDied"
	NodeNotReady    Fault = "NodeNotReady"
	NotReadyTooLong Fault = "NotReadyTimeout"
	// Gone is never returned by Assess: the controller uses it for an active
	// pod that vanished from the API before any other fault was seen.
	Gone Fault = "PodDeleted"
)

// Criticality says how to recognise critical containers.
type Criticality struct {
	EnvName  string // pwcriticality by default
	EnvValue string // critical by default
}

// Options are the tunables of Assess.
type Options struct {
	Criticality Criticality
	// NotReadyGrace is how long an active pod may stay not Ready before it
	// is failed over. A short blip of readiness should not cost a failover.
	NotReadyGrace time.Duration
}

// ContainerDeath describes a critical container that died, for the Event.
type ContainerDeath struct {
	Container string
	ExitCode  int32
	Reason    string
}

// Status is what the decisions need to know of one pod.
type Status struct {
	Fault Fault
	// Eligible: the pod may be promoted now (Running, Ready, not deleting,
	// every critical container running, node Ready).
	Eligible bool
	// Doomed: a critical container died, so the pod must be deleted and
	// replaced rather than restarted in place.
	Doomed bool
	Death  *ContainerDeath
	// ReadyDeadline is when a pod that is not Ready now will count as
	// failed (zero when the pod is Ready or already faulty).
	ReadyDeadline time.Time
	// UnknownCriticality lists containers whose criticality env var has a
	// value that is neither the critical value nor empty: they are treated
	// as non-critical, and the controller warns about them once.
	UnknownCriticality []string
}

// Assess judges one pod. node may be nil when the pod is not scheduled or
// the node is unknown; an unknown node is not held against the pod, since
// a missing node object is not evidence that the pod is down.
func Assess(pod *corev1.Pod, node *corev1.Node, now time.Time, opts Options) Status {
	var s Status
	critical, unknown := criticalContainers(pod, opts.Criticality)
	s.UnknownCriticality = unknown
	s.Death = deadCritical(pod, critical)
	s.Doomed = s.Death != nil

	ready, readySince := podReadySince(pod)
	switch {
	case pod.DeletionTimestamp != nil:
		s.Fault = Deleting
	case pod.Status.Phase == corev1.PodFailed:
		s.Fault = PodFailed
	case pod.Status.Phase == corev1.PodSucceeded:
		s.Fault = PodSucceeded
	case s.Doomed:
		s.Fault = CriticalDied
	case node != nil && nodeDown(node):
		s.Fault = NodeNotReady
	case !ready && !readySince.IsZero():
		// Ready was seen to turn false at readySince: the pod had been up.
		deadline := readySince.Add(opts.NotReadyGrace)
		if !now.Before(deadline) {
			s.Fault = NotReadyTooLong
		} else {
			s.ReadyDeadline = deadline
		}
	}
	s.Eligible = s.Fault == NoFault && ready && pod.Status.Phase == corev1.PodRunning &&
		criticalRunning(pod, critical)
	return s
}

// criticalContainers returns the names of the containers marked critical and
// of those whose marker has an unexpected value.
func criticalContainers(pod *corev1.Pod, c Criticality) (critical map[string]bool, unknown []string) {
	critical = map[string]bool{}
	for i := range pod.Spec.Containers {
		ctr := &pod.Spec.Containers[i]
		for _, e := range ctr.Env {
			if e.Name != c.EnvName {
				continue
			}
			switch e.Value {
			case c.EnvValue:
				critical[ctr.Name] = true
			case "":
				// Declared but empty (or set from a source we cannot read
				// here): not critical, and not worth a warning either.
			default:
				unknown = append(unknown, ctr.Name)
			}
		}
	}
	return critical, unknown
}

// deadCritical finds a critical container that has died: terminated now,
// waiting after a crash, or restarted at least once. A restart counts
// because the kubelet may bring the container back before we see it
// terminated; restartCount is the durable trace of that death.
func deadCritical(pod *corev1.Pod, critical map[string]bool) *ContainerDeath {
	for i := range pod.Status.ContainerStatuses {
		cs := &pod.Status.ContainerStatuses[i]
		if !critical[cs.Name] {
			continue
		}
		if t := cs.State.Terminated; t != nil {
			return &ContainerDeath{Container: cs.Name, ExitCode: t.ExitCode, Reason: t.Reason}
		}
		last := cs.LastTerminationState.Terminated
		if cs.RestartCount > 0 || (cs.State.Waiting != nil && last != nil) {
			d := &ContainerDeath{Container: cs.Name, Reason: "Restarted"}
			if last != nil {
				d.ExitCode, d.Reason = last.ExitCode, last.Reason
			}
			return d
		}
	}
	return nil
}

// criticalRunning reports whether every critical container has a running
// status. A pod whose statuses are not reported yet is not promotable.
func criticalRunning(pod *corev1.Pod, critical map[string]bool) bool {
	running := 0
	for i := range pod.Status.ContainerStatuses {
		cs := &pod.Status.ContainerStatuses[i]
		if critical[cs.Name] && cs.State.Running != nil {
			running++
		}
	}
	return running == len(critical)
}
