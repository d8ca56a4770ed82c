package deploy_test

import (
	"net"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/utils/ptr"

	"github.com/hapod/hapod/internal/config"
	"github.com/hapod/hapod/internal/election"
)

// TestExampleAgentInvariants checks deploy/example-agent against what the
// controller assumes with its default flags and what hapod-agent needs: the
// app container is critical and knows nothing of hapod; the agent sidecar
// has the role port, the pod's identity and the shared role file.
func TestExampleAgentInvariants(t *testing.T) {
	cfg := config.Default()
	_, rs, svc := exampleShape(t, "example-agent")

	spec := &rs.Spec.Template.Spec
	var app, agent *corev1.Container
	for i := range spec.Containers {
		c := &spec.Containers[i]
		switch {
		case envValue(*c, cfg.CriticalEnv) == cfg.CriticalValue:
			if app != nil {
				t.Errorf("two critical containers, %s and %s", app.Name, c.Name)
			}
			app = c
		case strings.Contains(c.Image, "hapod-agent"):
			agent = c
		}
	}
	if app == nil || agent == nil || len(spec.Containers) != 2 {
		t.Fatalf("want a critical app container and a hapod-agent sidecar, got %d containers", len(spec.Containers))
	}
	if strings.HasPrefix(app.Image, "ghcr.io/hapod/") {
		t.Errorf("app image %s: the example's app must know nothing of hapod", app.Image)
	}
	if rp := app.RestartPolicy; rp == nil || *rp != corev1.ContainerRestartPolicyNever || election.RestartsInPlace(spec, app) {
		t.Errorf("critical container app: restartPolicy %q, want Never", ptr.Deref(rp, ""))
	}
	if !election.RestartsInPlace(spec, agent) {
		t.Errorf("the agent sidecar is not restarted in place")
	}
	for env, field := range map[string]string{"POD_NAME": "metadata.name", "POD_UID": "metadata.uid"} {
		if got := fieldRef(*agent, env); got != field {
			t.Errorf("agent: env %s from %q, want the downward API %s", env, got, field)
		}
	}
	if envValue(*agent, "ROLE_GROUP") != "$(POD_NAMESPACE)/$(GROUP_NAME)" || envValue(*agent, "ROLE_KEY_DIR") == "" {
		t.Errorf("agent: ROLE_GROUP %q, ROLE_KEY_DIR %q", envValue(*agent, "ROLE_GROUP"), envValue(*agent, "ROLE_KEY_DIR"))
	}
	if p := port(*agent, "role"); p == nil || int(p.ContainerPort) != cfg.RolePort || p.Protocol != corev1.ProtocolUDP {
		t.Errorf("agent: port role %+v, want %d/UDP (the controller's -role-port)", p, cfg.RolePort)
	}
	// The probe comes from the node to the pod IP: the agent must listen on
	// all addresses, on the probed port.
	host, hp, err := net.SplitHostPort(envValue(*agent, "HTTP_ADDR"))
	rp := agent.ReadinessProbe
	if err != nil || host != "" || rp == nil || rp.HTTPGet == nil || rp.HTTPGet.Path != "/readyz" ||
		hp != "7480" || resolvePort(*agent, rp.HTTPGet.Port) != 7480 {
		t.Errorf("agent: HTTP_ADDR %q, readinessProbe %+v; want :7480 and GET /readyz on it", envValue(*agent, "HTTP_ADDR"), rp)
	}
	// The role file lives in a volume both mount, the app read-only.
	file := envValue(*agent, "ROLE_FILE")
	mountOf := func(c *corev1.Container) *corev1.VolumeMount {
		for i, m := range c.VolumeMounts {
			if strings.HasPrefix(file, m.MountPath+"/") {
				return &c.VolumeMounts[i]
			}
		}
		return nil
	}
	am, gm := mountOf(app), mountOf(agent)
	if am == nil || gm == nil || am.Name != gm.Name || !am.ReadOnly || gm.ReadOnly {
		t.Errorf("role file %q: app mount %+v, agent mount %+v; want one volume, read-only in the app", file, am, gm)
	}
	for _, v := range spec.Volumes {
		if gm != nil && v.Name == gm.Name && v.EmptyDir == nil {
			t.Errorf("volume %s: want an emptyDir", v.Name)
		}
	}
	nonRootUsers(t, spec.Containers)
	if p := port(*app, "http"); p == nil || p.ContainerPort != 8080 {
		t.Errorf("app: port http %+v, want 8080", p)
	}
	if resolvePort(*app, svc.Spec.Ports[0].TargetPort) != 8080 {
		t.Errorf("Service ports %+v, want 80 -> 8080 in the app", svc.Spec.Ports)
	}
}
