package deploy_test

import (
	"net"
	"reflect"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
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
	objs := mustLoad(t, "example-agent")
	for _, o := range objs {
		if ns := o.Obj.(metav1.Object).GetNamespace(); ns != "" {
			t.Errorf("%s: namespace %q; the example applies to the namespace given with -n", o, ns)
		}
		if _, ok := o.Obj.(*corev1.Namespace); ok {
			t.Errorf("%s: the example must not create a Namespace", o)
		}
	}
	rs := only[*appsv1.ReplicaSet](t, objs)
	if rs.Name != "hapod" || rs.Spec.Replicas == nil || *rs.Spec.Replicas != 2 {
		t.Errorf("ReplicaSet %s replicas %v, want hapod and 2", rs.Name, rs.Spec.Replicas)
	}
	sel := rs.Spec.Selector
	if sel == nil || !reflect.DeepEqual(sel.MatchLabels, map[string]string{"app": "hapod"}) || len(sel.MatchExpressions) != 0 {
		t.Errorf("ReplicaSet selector %v, want matchLabels {app: hapod} only", sel)
	}
	tmpl := rs.Spec.Template.Labels
	if tmpl["app"] != "hapod" || tmpl[cfg.RoleLabel] != cfg.StandbyValue {
		t.Errorf("pod template labels %v", tmpl)
	}
	rsSel, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil {
		t.Fatal(err)
	}
	ctrlSel, err := cfg.PodSelector()
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []string{cfg.StandbyValue, cfg.ActiveValue} {
		l := labels.Merge(tmpl, labels.Set{cfg.RoleLabel: r})
		if !rsSel.Matches(l) || !ctrlSel.Matches(l) {
			t.Errorf("pod with %s=%s: ReplicaSet selector %s matches %t, controller's %s matches %t", cfg.RoleLabel, r, rsSel, rsSel.Matches(l), ctrlSel, ctrlSel.Matches(l))
		}
	}

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
	for _, c := range spec.Containers {
		if strings.HasPrefix(c.Image, "ghcr.io/hapod/") {
			continue
		}
		if sc := c.SecurityContext; sc == nil || sc.RunAsUser == nil || *sc.RunAsUser == 0 {
			t.Errorf("container %s (image %s): no non-root runAsUser", c.Name, c.Image)
		}
	}
	if p := port(*app, "http"); p == nil || p.ContainerPort != 8080 {
		t.Errorf("app: port http %+v, want 8080", p)
	}
	svc := only[*corev1.Service](t, objs)
	want := map[string]string{"app": "hapod", cfg.RoleLabel: cfg.ActiveValue}
	if svc.Name != "hapod" || !reflect.DeepEqual(svc.Spec.Selector, want) || len(svc.Spec.Ports) != 1 ||
		resolvePort(*app, svc.Spec.Ports[0].TargetPort) != 8080 {
		t.Errorf("Service %s selector %v ports %+v", svc.Name, svc.Spec.Selector, svc.Spec.Ports)
	}
}
