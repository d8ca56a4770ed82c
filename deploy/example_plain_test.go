package deploy_test

import (
	"strconv"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/utils/ptr"

	"github.com/hapod/hapod/internal/config"
	"github.com/hapod/hapod/internal/election"
	"github.com/hapod/hapod/pkg/role"
)

// TestExamplePlainInvariants checks deploy/example-plain against what plain
// mode needs: the pod template says plain with a valid port, payload and
// repeat count; the one container is critical, left dead by the kubelet
// (its death is the only proof plain mode has that the old active stopped),
// and listens on the plain port over UDP; the Service targets its http port.
func TestExamplePlainInvariants(t *testing.T) {
	cfg := config.Default()
	_, rs, svc := exampleShape(t, "example-plain")
	a := rs.Spec.Template.Annotations
	if a[role.RoleMessagesAnnotation] != "plain" {
		t.Fatalf("pod template annotation %s=%q, want plain", role.RoleMessagesAnnotation, a[role.RoleMessagesAnnotation])
	}
	plainPort, ok := plainPort(rs)
	if !ok || plainPort == 0 {
		t.Errorf("%s=%q, want a UDP port", role.PlainPortAnnotation, a[role.PlainPortAnnotation])
	}
	if a[role.PlainPayloadAnnotation] == "" {
		t.Errorf("%s is empty", role.PlainPayloadAnnotation)
	}
	if n, err := strconv.Atoi(a[role.PlainRepeatsAnnotation]); err != nil || n < 1 || n > 10 {
		t.Errorf("%s=%q, want 1..10", role.PlainRepeatsAnnotation, a[role.PlainRepeatsAnnotation])
	}

	spec := &rs.Spec.Template.Spec
	if len(spec.Containers) != 1 {
		t.Fatalf("%d containers, want the seed-style app alone", len(spec.Containers))
	}
	app := &spec.Containers[0]
	if envValue(*app, cfg.CriticalEnv) != cfg.CriticalValue {
		t.Errorf("container %s: not critical (%s=%s)", app.Name, cfg.CriticalEnv, cfg.CriticalValue)
	}
	if rp := app.RestartPolicy; rp == nil || *rp != corev1.ContainerRestartPolicyNever || election.RestartsInPlace(spec, app) {
		t.Errorf("container %s: restartPolicy %q, want Never", app.Name, ptr.Deref(rp, ""))
	}
	if p := port(*app, "role"); p == nil || int(p.ContainerPort) != plainPort || p.Protocol != corev1.ProtocolUDP {
		t.Errorf("container %s: port role %+v, want %d/UDP (%s)", app.Name, p, plainPort, role.PlainPortAnnotation)
	}
	if rp := app.ReadinessProbe; rp == nil {
		t.Errorf("container %s: no readinessProbe; the controller promotes only Ready pods", app.Name)
	}
	nonRootUsers(t, spec.Containers)
	if resolvePort(*app, svc.Spec.Ports[0].TargetPort) != 8080 {
		t.Errorf("Service ports %+v, want 80 -> 8080 in the app", svc.Spec.Ports)
	}
}

// plainPort is the pod template's plain-mode port, if it is in plain mode
// (hapod.io/role-messages: plain) with a valid hapod.io/plain-port.
func plainPort(rs *appsv1.ReplicaSet) (int, bool) {
	a := rs.Spec.Template.Annotations
	if a[role.RoleMessagesAnnotation] != "plain" {
		return 0, false
	}
	n, err := strconv.ParseUint(a[role.PlainPortAnnotation], 10, 16)
	return int(n), err == nil
}
