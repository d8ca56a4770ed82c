package realtour

import (
	"path/filepath"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"

	"github.com/hapod/hapod/internal/config"
	"github.com/hapod/hapod/internal/dev/localcluster"
	"github.com/hapod/hapod/internal/dev/realpod"
	"github.com/hapod/hapod/internal/dev/tour"
)

// Lines as kube-proxy 1.37 (nftables mode) writes them, seen with nft
// monitor on the local cluster's real nodes.
func TestSendsTo(t *testing.T) {
	const ns, svc, ip = "hapod-demo", "hapod", "10.244.2.2"
	tests := []struct {
		name, line string
		want       bool
	}{
		{"one endpoint: a dnat in the service chain",
			"add rule ip kube-proxy service-7X4PM67H-hapod-demo/hapod/tcp/http meta l4proto tcp dnat to 10.244.2.2:8080", true},
		{"several endpoints: a jump to the endpoint chain",
			"add rule ip kube-proxy service-7X4PM67H-hapod-demo/hapod/tcp/http numgen random mod 2 vmap { 0 : goto endpoint-AB-hapod-demo/hapod/tcp/http__10.244.1.2/8080 , 1 : goto endpoint-CD-hapod-demo/hapod/tcp/http__10.244.2.2/8080 }", true},
		{"another endpoint",
			"add rule ip kube-proxy service-7X4PM67H-hapod-demo/hapod/tcp/http meta l4proto tcp dnat to 10.244.1.3:8080", false},
		{"an address that starts with ip",
			"add rule ip kube-proxy service-7X4PM67H-hapod-demo/hapod/tcp/http meta l4proto tcp dnat to 10.244.2.23:8080", false},
		{"the rule deleted", "delete rule ip kube-proxy service-7X4PM67H-hapod-demo/hapod/tcp/http handle 62", false},
		{"another Service of the namespace",
			"add rule ip kube-proxy service-QQ-hapod-demo/other/tcp/http meta l4proto tcp dnat to 10.244.2.2:8080", false},
		{"the endpoint chain itself, not the Service's",
			"add rule ip kube-proxy endpoint-CD-hapod-demo/hapod/tcp/http__10.244.2.2/8080 meta l4proto tcp dnat to 10.244.2.2:8080", false},
	}
	for _, tc := range tests {
		if got := sendsTo(tc.line, ns, svc, ip); got != tc.want {
			t.Errorf("%s: sendsTo = %v, want %v", tc.name, got, tc.want)
		}
	}
}

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
