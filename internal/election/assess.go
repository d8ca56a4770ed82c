package election

import (
	"strings"
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
	// Evicting: the pod carries the DisruptionTarget condition (an
	// eviction, a preemption, a taint's NoExecute): it is about to be
	// deleted, and an active is moved off it while its app still runs.
	Evicting Fault = "PodEvicting"
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
	// WatchingSince is when the controller began watching the pods. A
	// critical container that died and runs again counts as a death only
	// if it finished after this, or within RecentDeath of now: a restart
	// from before hapod was installed (or before this controller took over)
	// is history, and must not doom a pod that has served since. Zero
	// counts every restart.
	WatchingSince time.Time
	// RecentDeath is how far back a restart counts even if it finished
	// before WatchingSince, so that a death during a controller restart or
	// a leader handover still fails the pod over. Zero means
	// DefaultRecentDeath.
	RecentDeath time.Duration
}

// DefaultRecentDeath covers a leader handover with client-go's default
// leader election (15 s lease) and a controller restart, with room to spare.
const DefaultRecentDeath = time.Minute

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
	// Warm: the pod would be Eligible but for being Doomed. Its critical
	// container died and runs again, so it can still serve: Decide keeps
	// one such pod rather than leave the group with nothing warm.
	Warm bool
	// Cordoned: the pod's node is unschedulable (cordoned or being
	// drained). Such a pod is still eligible, but taken last, and an
	// active on it may be moved (Input.SwitchoverOnCordon).
	Cordoned bool
	Death    *ContainerDeath
	// ReadyDeadline is when a pod that is not Ready now will count as
	// failed (zero when the pod is Ready or already faulty).
	ReadyDeadline time.Time
	// UnknownCriticality lists containers whose criticality env var has a
	// value that is neither the critical value nor empty: they are treated
	// as non-critical, and the controller warns about them once.
	UnknownCriticality []string
	// UnreadableCriticality lists containers whose criticality the
	// controller cannot read: the variable comes from valueFrom, or may
	// come from an envFrom source (a ConfigMap or Secret the controller
	// does not read). They are treated as non-critical, because a wrong
	// "critical" deletes pods, and the controller warns about them once.
	UnreadableCriticality []string
	// RestartsInPlace lists critical containers that the kubelet may
	// restart in place when they die (see RestartsInPlace): hapod still
	// fails the pod over and deletes it, but the container may run again
	// meanwhile. The controller warns about them once.
	RestartsInPlace []string
}

// Assess judges one pod. node may be nil when the pod is not scheduled or
// the node is unknown; an unknown node is not held against the pod, since
// a missing node object is not evidence that the pod is down.
func Assess(pod *corev1.Pod, node *corev1.Node, now time.Time, opts Options) Status {
	var s Status
	cr := criticalContainers(pod, opts.Criticality)
	s.UnknownCriticality, s.UnreadableCriticality = cr.unknown, cr.unreadable
	for i := range pod.Spec.Containers {
		if ctr := &pod.Spec.Containers[i]; cr.critical[ctr.Name] && RestartsInPlace(&pod.Spec, ctr) {
			s.RestartsInPlace = append(s.RestartsInPlace, ctr.Name)
		}
	}
	recent := opts.RecentDeath
	if recent <= 0 {
		recent = DefaultRecentDeath
	}
	s.Death = deadCritical(pod, cr.critical, deathCounts(opts.WatchingSince, now, recent))
	s.Doomed = s.Death != nil

	ready, readySince := podReadySince(pod)
	nodeIsDown := node != nil && nodeDown(node)
	switch {
	case pod.DeletionTimestamp != nil:
		s.Fault = Deleting
	case pod.Status.Phase == corev1.PodFailed:
		s.Fault = PodFailed
	case pod.Status.Phase == corev1.PodSucceeded:
		s.Fault = PodSucceeded
	case s.Doomed:
		s.Fault = CriticalDied
	case nodeIsDown:
		s.Fault = NodeNotReady
	case disruptionTarget(pod):
		s.Fault = Evicting
	case !ready && !readySince.IsZero():
		// Ready was seen to turn false at readySince: the pod had been up.
		deadline := readySince.Add(opts.NotReadyGrace)
		if !now.Before(deadline) {
			s.Fault = NotReadyTooLong
		} else {
			s.ReadyDeadline = deadline
		}
	}
	serving := ready && pod.Status.Phase == corev1.PodRunning && criticalRunning(pod, cr.critical)
	s.Eligible = s.Fault == NoFault && serving
	s.Warm = s.Fault == CriticalDied && !nodeIsDown && serving
	s.Cordoned = node != nil && node.Spec.Unschedulable
	return s
}

// disruptionTarget reports the DisruptionTarget condition, which the API
// server (an eviction), the scheduler (a preemption) or the taint manager
// set just before they delete the pod.
func disruptionTarget(pod *corev1.Pod) bool {
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.DisruptionTarget && c.Status == corev1.ConditionTrue {
			return true
		}
	}
	return false
}

// criticality sorts a pod's containers by what their marker says.
type criticality struct {
	critical   map[string]bool
	unknown    []string
	unreadable []string
}

// criticalContainers reads the marker of every container, including native
// sidecars (init containers with restartPolicy Always, which run for the
// pod's whole life); ordinary init containers run to completion, so their
// ending is no death.
func criticalContainers(pod *corev1.Pod, c Criticality) criticality {
	cr := criticality{critical: map[string]bool{}}
	for i := range pod.Spec.InitContainers {
		if ctr := &pod.Spec.InitContainers[i]; isSidecar(ctr) {
			cr.judge(ctr, c)
		}
	}
	for i := range pod.Spec.Containers {
		cr.judge(&pod.Spec.Containers[i], c)
	}
	return cr
}

// RestartsInPlace reports whether the kubelet may restart the regular
// container ctr of a pod with this spec in place after it exits. It leaves
// a dead container dead only when the container's own restartPolicy
// (container restart rules, KEP-5307, beta and on by default since
// Kubernetes 1.35), or else the pod's, is Never, and no restartPolicyRules
// entry restarts it on some exit codes. A ReplicaSet's pods must have the
// pod-level policy Always, so for them only the container's Never counts.
//
// Native sidecars (init containers with restartPolicy Always) are not
// asked about: they are restarted in place by definition, and Never would
// make them ordinary init containers.
func RestartsInPlace(spec *corev1.PodSpec, ctr *corev1.Container) bool {
	if len(ctr.RestartPolicyRules) > 0 {
		// Every rule's action (Restart, RestartAllContainers) restarts in
		// place on the exits it matches.
		return true
	}
	if ctr.RestartPolicy != nil {
		return *ctr.RestartPolicy != corev1.ContainerRestartPolicyNever
	}
	return spec.RestartPolicy != corev1.RestartPolicyNever // "" is Always
}

func isSidecar(ctr *corev1.Container) bool {
	return ctr.RestartPolicy != nil && *ctr.RestartPolicy == corev1.ContainerRestartPolicyAlways
}

func (cr *criticality) judge(ctr *corev1.Container, c Criticality) {
	// The last entry of a name wins, as in the kubelet; an env entry
	// overrides whatever envFrom provides.
	var marker *corev1.EnvVar
	for i := range ctr.Env {
		if ctr.Env[i].Name == c.EnvName {
			marker = &ctr.Env[i]
		}
	}
	switch {
	case marker == nil:
		for _, src := range ctr.EnvFrom {
			if strings.HasPrefix(c.EnvName, src.Prefix) {
				cr.unreadable = append(cr.unreadable, ctr.Name)
				return
			}
		}
	case marker.ValueFrom != nil:
		cr.unreadable = append(cr.unreadable, ctr.Name)
	case marker.Value == c.EnvValue:
		cr.critical[ctr.Name] = true
	case marker.Value == "":
		// Declared but empty: not critical, and not worth a warning.
	default:
		cr.unknown = append(cr.unknown, ctr.Name)
	}
}

// deathCounts returns the rule for a critical container that died and runs
// again: its death counts if it finished after the controller began
// watching, or recently. An undated death (no finishedAt) counts only
// when the controller did not say when it began watching.
func deathCounts(watchingSince, now time.Time, recent time.Duration) func(*corev1.ContainerStateTerminated) bool {
	return func(last *corev1.ContainerStateTerminated) bool {
		var finished time.Time
		if last != nil {
			finished = last.FinishedAt.Time
		}
		if !finished.Before(watchingSince) {
			return true
		}
		return !finished.IsZero() && now.Sub(finished) <= recent
	}
}

// deadCritical finds a critical container that has died: terminated now,
// waiting after a crash, or restarted with a death that counts. A restart
// counts because the kubelet may bring the container back before we see
// it terminated; restartCount and lastState are the trace of that death.
// A container terminated or waiting now is down now, whenever it died.
func deadCritical(pod *corev1.Pod, critical map[string]bool, counts func(*corev1.ContainerStateTerminated) bool) *ContainerDeath {
	for _, statuses := range [][]corev1.ContainerStatus{pod.Status.InitContainerStatuses, pod.Status.ContainerStatuses} {
		for i := range statuses {
			cs := &statuses[i]
			if !critical[cs.Name] {
				continue
			}
			if t := cs.State.Terminated; t != nil {
				return &ContainerDeath{Container: cs.Name, ExitCode: t.ExitCode, Reason: t.Reason}
			}
			last := cs.LastTerminationState.Terminated
			crashedNow := cs.State.Waiting != nil && last != nil
			if crashedNow || (cs.RestartCount > 0 && counts(last)) {
				d := &ContainerDeath{Container: cs.Name, Reason: "Restarted"}
				if last != nil {
					d.ExitCode, d.Reason = last.ExitCode, last.Reason
				}
				return d
			}
		}
	}
	return nil
}

// criticalRunning reports whether every critical container has a running
// status. A pod whose statuses are not reported yet is not promotable.
func criticalRunning(pod *corev1.Pod, critical map[string]bool) bool {
	running := 0
	for _, statuses := range [][]corev1.ContainerStatus{pod.Status.InitContainerStatuses, pod.Status.ContainerStatuses} {
		for i := range statuses {
			cs := &statuses[i]
			if critical[cs.Name] && cs.State.Running != nil {
				running++
			}
		}
	}
	return running == len(critical)
}

// EndpointReady is the readiness of the active's endpoint in owned
// data-path mode: the pod is Running, not being deleted, and every critical
// container has a running status. Pod Ready is deliberately not consulted:
// a non-critical sidecar that died makes the pod not Ready, yet the app
// still serves, and the kube-controller-manager's rule would drop the only
// endpoint of the group. A pod without critical containers is judged by
// its phase and deletion alone.
func EndpointReady(pod *corev1.Pod, c Criticality) bool {
	if pod.DeletionTimestamp != nil || pod.Status.Phase != corev1.PodRunning {
		return false
	}
	return criticalRunning(pod, criticalContainers(pod, c).critical)
}
