package realtour

import (
	"path/filepath"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/hapod/hapod/internal/config"
	"github.com/hapod/hapod/internal/dev/localcluster"
	"github.com/hapod/hapod/internal/dev/realpod"
	"github.com/hapod/hapod/internal/dev/tour"
)

// The example as the tour applies it: only the images, the pull policy, the
// node selector and the records change; the rest is as shipped.
func TestForRealNodes(t *testing.T) {
	root, err := localcluster.RepoRoot(".")
	if err != nil {
		t.Fatal(err)
	}
	ex, err := tour.LoadExample(filepath.Join(root, "deploy", "example"))
	if err != nil {
		t.Fatal(err)
	}
	shipped := ex.ReplicaSet.DeepCopy()
	p, err := forRealNodes(ex, "ns1", "/tmp/records", 2*time.Second, config.Default())
	if err != nil {
		t.Fatal(err)
	}
	if p.critical != "app" || p.sidecar != "sidecar" {
		t.Errorf("critical %q sidecar %q, want app and sidecar", p.critical, p.sidecar)
	}
	if p.rs.Namespace != "ns1" || p.svc.Namespace != "ns1" {
		t.Errorf("namespaces %q %q", p.rs.Namespace, p.svc.Namespace)
	}
	spec := p.rs.Spec.Template.Spec
	if spec.NodeSelector[localcluster.RealNodeLabel] != "true" {
		t.Errorf("node selector %v", spec.NodeSelector)
	}
	for _, c := range spec.Containers {
		want := localcluster.PauseImage
		if c.Name == "app" {
			want = realpod.DemoImage
			if c.RestartPolicy == nil || *c.RestartPolicy != corev1.ContainerRestartPolicyNever {
				t.Error("the critical container lost the example's restartPolicy: Never")
			}
			if c.SecurityContext == nil || c.SecurityContext.RunAsNonRoot == nil || !*c.SecurityContext.RunAsNonRoot {
				t.Error("the critical container lost the example's runAsNonRoot")
			}
		}
		if c.Image != want || c.ImagePullPolicy != corev1.PullNever {
			t.Errorf("container %s: image %s pull %s, want %s Never", c.Name, c.Image, c.ImagePullPolicy, want)
		}
	}
	if !equality.Semantic.DeepEqual(shipped, ex.ReplicaSet) {
		t.Error("forRealNodes changed the loaded example")
	}

	bad := &tour.Example{ReplicaSet: ex.ReplicaSet.DeepCopy(), Service: ex.Service}
	bad.ReplicaSet.Spec.Template.Spec.Containers[0].Env = nil
	if _, err := forRealNodes(bad, "ns1", "/tmp/records", time.Second, config.Default()); err == nil {
		t.Error("an example without a critical container was accepted")
	}
}

// The file group: two replicas of the file app with hapod-agent as the
// sidecar, in a group of its own that the example's selector does not
// match, and a Service that selects its active alone.
func TestFileAppPlan(t *testing.T) {
	cfg := config.Default()
	p := fileAppPlan("ns1", "/tmp/records/file", cfg)
	if p.group != fileGroup || p.rs.Namespace != "ns1" || p.svc.Namespace != "ns1" {
		t.Errorf("group %q namespaces %q %q", p.group, p.rs.Namespace, p.svc.Namespace)
	}
	if *p.rs.Spec.Replicas < 2 {
		t.Errorf("%d replicas: the scenes need an active and a standby", *p.rs.Spec.Replicas)
	}
	tpl := p.rs.Spec.Template
	if tpl.Labels[cfg.GroupLabel] != fileGroup || tpl.Labels[cfg.RoleLabel] != cfg.StandbyValue {
		t.Errorf("pod labels %v", tpl.Labels)
	}
	sel, err := cfg.PodSelector()
	if err != nil {
		t.Fatal(err)
	}
	if sel.Matches(labels.Set(tpl.Labels)) {
		t.Errorf("the default selector %s matches the file group's pods: one group, not two", sel)
	}
	images := map[string]string{}
	for _, c := range tpl.Spec.Containers {
		images[c.Name] = c.Image
	}
	if images[p.critical] != realpod.FileAppImage || images[p.sidecar] != realpod.AgentImage {
		t.Errorf("containers %v, want %s the file app and %s the agent", images, p.critical, p.sidecar)
	}
	want := map[string]string{cfg.GroupLabel: fileGroup, cfg.RoleLabel: cfg.ActiveValue}
	if !equality.Semantic.DeepEqual(p.svc.Spec.Selector, want) {
		t.Errorf("Service selector %v, want %v", p.svc.Spec.Selector, want)
	}
}
