package election

import (
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
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
		// An eviction marks the pod before it deletes it: fail over then.
		{name: "disruption target", pod: newPod(func(p *corev1.Pod) {
			p.Status.Conditions = append(p.Status.Conditions, corev1.PodCondition{Type: corev1.DisruptionTarget, Status: corev1.ConditionTrue, Reason: "EvictionByEvictionAPI"})
		}), wantFault: Evicting},
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

func restartedAt(container string, finished time.Time) podOpt {
	return func(p *corev1.Pod) {
		restarted(container)(p)
		for i := range p.Status.ContainerStatuses {
			if cs := &p.Status.ContainerStatuses[i]; cs.Name == container {
				cs.LastTerminationState.Terminated.FinishedAt = metav1.NewTime(finished)
			}
		}
	}
}

func crashLooping(container string) podOpt {
	return func(p *corev1.Pod) {
		for i := range p.Status.ContainerStatuses {
			if cs := &p.Status.ContainerStatuses[i]; cs.Name == container {
				cs.State = corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "CrashLoopBackOff"}}
			}
		}
	}
}

// Only deaths the controller can have seen happen doom a pod (defect 7):
// a restart from before it began watching is history.
func TestAssessDeathHistory(t *testing.T) {
	now := t0.Add(time.Hour)
	watching := now.Add(-10 * time.Minute)
	o := opts
	o.WatchingSince = watching
	tests := []struct {
		name       string
		pod        *corev1.Pod
		node       *corev1.Node
		wantDoomed bool
		wantWarm   bool
	}{
		// Installing hapod over pods that restarted once, long ago: they
		// have served since and stay as they are.
		{name: "restart long before watching", pod: newPod(restartedAt("app", t0)), wantDoomed: false},
		// A death while watching dooms the pod; it runs again, so it is warm.
		{name: "restart while watching", pod: newPod(restartedAt("app", watching.Add(time.Minute))), wantDoomed: true, wantWarm: true},
		{name: "restart as watching began", pod: newPod(restartedAt("app", watching)), wantDoomed: true, wantWarm: true},
		// A death during a controller restart or leader handover still
		// counts: it is recent.
		{name: "recent restart before watching", pod: newPod(restartedAt("app", now.Add(-30*time.Second))), wantDoomed: true, wantWarm: true},
		// No date: not evidence of a death since watching began.
		{name: "undated restart", pod: newPod(restarted("app")), wantDoomed: false},
		// Down now, whenever it died.
		{name: "crash-looping after an old restart", pod: newPod(restartedAt("app", t0), crashLooping("app")), wantDoomed: true},
		{name: "terminated now", pod: newPod(terminated("app", 1)), wantDoomed: true},
		// Warm needs everything but the doom to be fine.
		{name: "recent restart on a down node", pod: newPod(restartedAt("app", now.Add(-time.Second))), node: node(corev1.ConditionFalse), wantDoomed: true},
		{name: "recent restart, not ready", pod: newPod(restartedAt("app", now.Add(-time.Second)), notReadySince(now)), wantDoomed: true},
		// A sidecar's restarts are the kubelet's business, recent or not.
		{name: "sidecar restart while watching", pod: newPod(restartedAt("sidecar", now.Add(-time.Second)))},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := Assess(tc.pod, tc.node, now, o)
			if s.Doomed != tc.wantDoomed || s.Warm != tc.wantWarm {
				t.Fatalf("Assess = %+v; want doomed %v warm %v", s, tc.wantDoomed, tc.wantWarm)
			}
			if !tc.wantDoomed && !s.Eligible {
				t.Fatalf("a pod that is not doomed must stay eligible: %+v", s)
			}
		})
	}
}

func sidecarInit(env ...corev1.EnvVar) podOpt {
	return func(p *corev1.Pod) {
		always := corev1.ContainerRestartPolicyAlways
		p.Spec.InitContainers = append(p.Spec.InitContainers, corev1.Container{Name: "proxy", RestartPolicy: &always, Env: env})
		p.Status.InitContainerStatuses = append(p.Status.InitContainerStatuses, corev1.ContainerStatus{
			Name: "proxy", State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{}},
		})
	}
}

func plainInit(env ...corev1.EnvVar) podOpt {
	return func(p *corev1.Pod) {
		p.Spec.InitContainers = append(p.Spec.InitContainers, corev1.Container{Name: "setup", Env: env})
		p.Status.InitContainerStatuses = append(p.Status.InitContainerStatuses, corev1.ContainerStatus{
			Name: "setup", State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{Reason: "Completed"}},
		})
	}
}

func initState(name string, st corev1.ContainerState) podOpt {
	return func(p *corev1.Pod) {
		for i := range p.Status.InitContainerStatuses {
			if p.Status.InitContainerStatuses[i].Name == name {
				p.Status.InitContainerStatuses[i].State = st
			}
		}
	}
}

func sidecarEnv(env ...corev1.EnvVar) podOpt {
	return func(p *corev1.Pod) { p.Spec.Containers[1].Env = env }
}

func sidecarEnvFrom(prefix string) podOpt {
	return func(p *corev1.Pod) {
		p.Spec.Containers[1].EnvFrom = []corev1.EnvFromSource{{Prefix: prefix, ConfigMapRef: &corev1.ConfigMapEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "cfg"}}}}
	}
}

// How markers are read (defect 8): native sidecars are containers; a marker
// the controller cannot read is reported, and counts as non-critical.
func TestAssessCriticalityMarkers(t *testing.T) {
	critical := corev1.EnvVar{Name: "pwcriticality", Value: "critical"}
	fromField := corev1.EnvVar{Name: "pwcriticality", ValueFrom: &corev1.EnvVarSource{
		FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.annotations['criticality']"},
	}}
	dead := corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: 2, Reason: "Error"}}
	tests := []struct {
		name           string
		pod            *corev1.Pod
		wantDoomed     bool
		wantEligible   bool
		wantUnreadable []string
	}{
		// A critical native sidecar that dies dooms the pod like a container.
		{name: "critical sidecar dies", pod: newPod(sidecarInit(critical), initState("proxy", dead)), wantDoomed: true},
		{name: "critical sidecar runs", pod: newPod(sidecarInit(critical)), wantEligible: true},
		// Not started yet: the pod is not promotable.
		{name: "critical sidecar without status", pod: newPod(sidecarInit(critical), func(p *corev1.Pod) { p.Status.InitContainerStatuses = nil })},
		{name: "non-critical sidecar dies", pod: newPod(sidecarInit(), initState("proxy", dead)), wantEligible: true},
		// An ordinary init container ends by design.
		{name: "critical-marked init container completed", pod: newPod(plainInit(critical)), wantEligible: true},
		// valueFrom: unreadable, warned, non-critical (the sidecar's death
		// is then the kubelet's business).
		{name: "marker from valueFrom", pod: newPod(sidecarEnv(fromField), terminated("sidecar", 1)), wantEligible: true, wantUnreadable: []string{"sidecar"}},
		{name: "sidecar marker from valueFrom", pod: newPod(sidecarInit(fromField), initState("proxy", dead)), wantEligible: true, wantUnreadable: []string{"proxy"}},
		// envFrom may hold the marker: unreadable, unless a literal entry
		// overrides it or the prefix rules it out.
		{name: "envFrom may hold the marker", pod: newPod(sidecarEnvFrom("")), wantEligible: true, wantUnreadable: []string{"sidecar"}},
		{name: "envFrom with a matching prefix", pod: newPod(sidecarEnvFrom("pw")), wantEligible: true, wantUnreadable: []string{"sidecar"}},
		{name: "envFrom with another prefix", pod: newPod(sidecarEnvFrom("APP_")), wantEligible: true},
		{name: "envFrom overridden by a literal", pod: newPod(sidecarEnvFrom(""), sidecarEnv(critical), terminated("sidecar", 1)), wantDoomed: true},
		{name: "envFrom overridden by an empty literal", pod: newPod(sidecarEnvFrom(""), sidecarEnv(corev1.EnvVar{Name: "pwcriticality"})), wantEligible: true},
		// The last entry of a name wins, as in the kubelet.
		{name: "last entry wins", pod: newPod(sidecarEnv(critical, corev1.EnvVar{Name: "pwcriticality", Value: ""}), terminated("sidecar", 1)), wantEligible: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := Assess(tc.pod, nil, t0.Add(time.Minute), opts)
			if s.Doomed != tc.wantDoomed || s.Eligible != tc.wantEligible || !slices.Equal(s.UnreadableCriticality, tc.wantUnreadable) {
				t.Fatalf("Assess = %+v; want doomed %v eligible %v unreadable %v", s, tc.wantDoomed, tc.wantEligible, tc.wantUnreadable)
			}
		})
	}
}

// Whether the kubelet may restart a dead container in place, or leaves it
// dead for hapod to replace the pod (container restart rules, KEP-5307).
func TestRestartsInPlace(t *testing.T) {
	restartOn := func(action corev1.ContainerRestartRuleAction, op corev1.ContainerRestartRuleOnExitCodesOperator, codes ...int32) []corev1.ContainerRestartRule {
		return []corev1.ContainerRestartRule{{Action: action, ExitCodes: &corev1.ContainerRestartRuleOnExitCodes{Operator: op, Values: codes}}}
	}
	tests := []struct {
		name      string
		podPolicy corev1.RestartPolicy
		ctr       corev1.Container
		want      bool
	}{
		// A ReplicaSet's pod as most are written: the pod's default
		// (Always) applies, and the kubelet restarts the container.
		{name: "no policy, pod default", ctr: corev1.Container{Name: "app"}, want: true},
		{name: "no policy, pod Always", podPolicy: corev1.RestartPolicyAlways, ctr: corev1.Container{Name: "app"}, want: true},
		// OnFailure restarts a SIGKILLed (exit 137) or crashed container.
		{name: "no policy, pod OnFailure", podPolicy: corev1.RestartPolicyOnFailure, ctr: corev1.Container{Name: "app"}, want: true},
		// A bare pod may say Never for all its containers.
		{name: "no policy, pod Never", podPolicy: corev1.RestartPolicyNever, ctr: corev1.Container{Name: "app"}, want: false},
		// The example's critical container: dead stays dead, whatever the
		// pod's policy (which a ReplicaSet requires to be Always).
		{name: "Never, pod default", ctr: corev1.Container{Name: "app", RestartPolicy: ptr.To(corev1.ContainerRestartPolicyNever)}, want: false},
		{name: "Never, pod Always", podPolicy: corev1.RestartPolicyAlways, ctr: corev1.Container{Name: "app", RestartPolicy: ptr.To(corev1.ContainerRestartPolicyNever)}, want: false},
		// The container's own policy overrides the pod's.
		{name: "Always, pod Never", podPolicy: corev1.RestartPolicyNever, ctr: corev1.Container{Name: "app", RestartPolicy: ptr.To(corev1.ContainerRestartPolicyAlways)}, want: true},
		{name: "OnFailure, pod default", ctr: corev1.Container{Name: "app", RestartPolicy: ptr.To(corev1.ContainerRestartPolicyOnFailure)}, want: true},
		// A rule restarts in place on the exits it matches, even with Never.
		{name: "Never with a Restart rule", ctr: corev1.Container{Name: "app", RestartPolicy: ptr.To(corev1.ContainerRestartPolicyNever),
			RestartPolicyRules: restartOn(corev1.ContainerRestartRuleActionRestart, corev1.ContainerRestartRuleOnExitCodesOpIn, 42)}, want: true},
		{name: "Never with a RestartAllContainers rule", ctr: corev1.Container{Name: "app", RestartPolicy: ptr.To(corev1.ContainerRestartPolicyNever),
			RestartPolicyRules: restartOn(corev1.ContainerRestartRuleActionRestartAllContainers, corev1.ContainerRestartRuleOnExitCodesOpNotIn, 0)}, want: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			spec := &corev1.PodSpec{RestartPolicy: tc.podPolicy, Containers: []corev1.Container{tc.ctr}}
			if got := RestartsInPlace(spec, &spec.Containers[0]); got != tc.want {
				t.Errorf("RestartsInPlace = %v, want %v", got, tc.want)
			}
		})
	}
}

// Which containers Assess reports as restarted in place: critical regular
// containers only.
func TestAssessRestartsInPlace(t *testing.T) {
	never := func(container string) podOpt {
		return func(p *corev1.Pod) {
			for i := range p.Spec.Containers {
				if p.Spec.Containers[i].Name == container {
					p.Spec.Containers[i].RestartPolicy = ptr.To(corev1.ContainerRestartPolicyNever)
				}
			}
		}
	}
	secondCritical := func(p *corev1.Pod) {
		p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: "worker", Env: []corev1.EnvVar{{Name: "pwcriticality", Value: "critical"}}})
		p.Status.ContainerStatuses = append(p.Status.ContainerStatuses, corev1.ContainerStatus{
			Name: "worker", State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{}},
		})
	}
	critical := corev1.EnvVar{Name: "pwcriticality", Value: "critical"}
	tests := []struct {
		name string
		pod  *corev1.Pod
		want []string
	}{
		// The pod-level default: the critical container is reported, the
		// non-critical sidecar is not (its in-place restarts are wanted).
		{name: "pod default", pod: newPod(), want: []string{"app"}},
		// As deploy/example ships it.
		{name: "critical container Never", pod: newPod(never("app"))},
		{name: "every critical container, in order", pod: newPod(secondCritical), want: []string{"app", "worker"}},
		{name: "one of two critical containers Never", pod: newPod(secondCritical, never("app")), want: []string{"worker"}},
		// Not critical: the kubelet's business.
		{name: "unknown criticality", pod: newPod(criticalValue("yes"))},
		{name: "empty criticality", pod: newPod(criticalValue(""))},
		// A critical native sidecar is restarted in place by definition;
		// Never would make it an ordinary init container, so no warning.
		{name: "critical native sidecar", pod: newPod(never("app"), sidecarInit(critical))},
		// Reported whatever state the pod is in: it is about the spec.
		{name: "critical container dead", pod: newPod(terminated("app", 137)), want: []string{"app"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := Assess(tc.pod, nil, t0.Add(time.Minute), opts)
			if !slices.Equal(s.RestartsInPlace, tc.want) {
				t.Errorf("RestartsInPlace = %q, want %q", s.RestartsInPlace, tc.want)
			}
		})
	}
}

// A pod on a cordoned node is still eligible (taken last by Decide).
func TestAssessCordoned(t *testing.T) {
	n := node(corev1.ConditionTrue)
	n.Spec.Unschedulable = true
	s := Assess(newPod(), n, t0, opts)
	if !s.Eligible || !s.Cordoned || s.Fault != NoFault {
		t.Errorf("on a cordoned node: %+v, want eligible and cordoned", s)
	}
	if s := Assess(newPod(), node(corev1.ConditionTrue), t0, opts); s.Cordoned {
		t.Errorf("on a schedulable node: cordoned")
	}
}
