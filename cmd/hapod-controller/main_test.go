package main

import (
	"context"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/hapod/hapod/internal/dev/bintest"
	"github.com/hapod/hapod/internal/dev/clustertest"
)

func TestMain(m *testing.M) { clustertest.Main(m, bintest.Cleanup) }

// proc is a controller process started by a test.
type proc struct {
	cmd  *exec.Cmd
	out  *bintest.Buffer
	done chan error
}

func start(t *testing.T, args ...string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(bintest.Build(t, "github.com/hapod/hapod/cmd/hapod-controller"), args...), out: &bintest.Buffer{}, done: make(chan error, 1)}
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.done <- p.cmd.Wait() }()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("controller output:\n%s", p.out.String())
		}
	})
	return p
}

// wait returns the exit error once the process ends, failing after d.
func (p *proc) wait(t *testing.T, d time.Duration) error {
	t.Helper()
	select {
	case err := <-p.done:
		p.done <- err // for Cleanup
		return err
	case <-time.After(d):
		t.Fatalf("controller still running after %v; output:\n%s", d, p.out.String())
		return nil
	}
}

// Bad input ends the process at once with one line naming the problem,
// never a stack trace.
func TestBadInputIsAClearError(t *testing.T) {
	held, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	unreachable := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(unreachable, []byte(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {token: x}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
`), 0o600); err != nil {
		t.Fatal(err)
	}
	kc := clustertest.Kubeconfig(t)
	ok := []string{"-kubeconfig", kc, "-health-probe-bind-address", bintest.FreeAddr(t), "-metrics-bind-address", bintest.FreeAddr(t)}
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"selector does not parse", []string{"-selector", "app in (a"}, "-selector"},
		{"role values equal", []string{"-standby-value", "active"}, "-standby-value"},
		{"selector on the role label", []string{"-selector", "app=hapod,role=standby"}, "-selector"},
		{"group label is the role label", []string{"-group-label", "role"}, "-group-label"},
		{"port out of range", []string{"-role-port", "70000"}, "-role-port"},
		{"unknown flag", []string{"-no-such-flag"}, "no-such-flag"},
		// A typo must not silently turn authentication off.
		{"role key dir missing", append(ok[:2:2], "-role-key-dir", "/nonexistent/role-keys"), "-role-key-dir"},
		{"missing kubeconfig", []string{"-kubeconfig", "/nonexistent/kubeconfig"}, "kubeconfig"},
		{"API not reachable", []string{"-kubeconfig", unreachable}, "cannot list pods"},
		{"probe port in use", append(ok[:2:2], "-metrics-bind-address", "0", "-health-probe-bind-address", held.Addr().String()), "address already in use"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := start(t, tc.args...)
			err := p.wait(t, 30*time.Second)
			out := p.out.String()
			if err == nil {
				t.Fatalf("exited 0; output:\n%s", out)
			}
			if !strings.Contains(out, tc.want) {
				t.Errorf("output does not mention %q:\n%s", tc.want, out)
			}
			for _, trace := range []string{"goroutine ", "panic:", ".go:"} {
				if strings.Contains(out, trace) {
					t.Errorf("output has a stack trace (%q):\n%s", trace, out)
				}
			}
		})
	}
}

// Two replicas with leader election: one leads; when it crashes the other
// takes over and fails the group over.
func TestLeaderElectionHandover(t *testing.T) {
	ns := clustertest.Namespace(t)
	cs := clustertest.Clientset(t)
	node := clustertest.Node(t)
	args := func() []string {
		return []string{
			"-kubeconfig", clustertest.Kubeconfig(t), "-namespaces", ns,
			"-leader-elect", "-leader-election-namespace", ns,
			"-leader-elect-lease-duration", "2s", "-leader-elect-renew-deadline", "1s", "-leader-elect-retry-period", "200ms",
			"-notify-cidrs", "127.0.0.0/8", "-role-port", "1", // nothing listens: no app in this test
			"-metrics-bind-address", bintest.FreeAddr(t), "-health-probe-bind-address", bintest.FreeAddr(t),
		}
	}
	a, b := start(t, args()...), start(t, args()...)

	replicas := int32(2)
	rs := &appsv1.ReplicaSet{
		ObjectMeta: metav1.ObjectMeta{Name: "hapod"},
		Spec: appsv1.ReplicaSetSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "hapod"}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "hapod", "role": "standby"}},
				Spec:       corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "app", Image: "app"}}},
			},
		},
	}
	if _, err := cs.AppsV1().ReplicaSets(ns).Create(t.Context(), rs, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	active := func(not string) string {
		var name string
		clustertest.Eventually(t, 20*time.Second, func() (bool, error) {
			pods, err := cs.CoreV1().Pods(ns).List(t.Context(), metav1.ListOptions{LabelSelector: "app=hapod,role=active"})
			if err != nil || len(pods.Items) != 1 || pods.Items[0].Name == not {
				return false, err
			}
			name = pods.Items[0].Name
			return true, nil
		})
		return name
	}
	first := active("")

	const acquired = "Successfully acquired lease"
	leader, follower := a, b
	if !strings.Contains(a.out.String(), acquired) {
		leader, follower = b, a
	}
	if strings.Contains(follower.out.String(), acquired) {
		t.Fatal("both replicas acquired the leader lease")
	}
	_ = leader.cmd.Process.Signal(syscall.SIGKILL)
	clustertest.Eventually(t, 15*time.Second, func() (bool, error) {
		return strings.Contains(follower.out.String(), acquired), nil
	})
	if err := cs.CoreV1().Pods(ns).Delete(t.Context(), first, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	active(first)
}

// SIGTERM stops the controller cleanly: exit 0, leader lease released.
func TestCleanShutdown(t *testing.T) {
	ns := clustertest.Namespace(t)
	probe := bintest.FreeAddr(t)
	p := start(t, "-kubeconfig", clustertest.Kubeconfig(t), "-namespaces", ns, "-leader-elect", "-leader-election-namespace", ns,
		"-metrics-bind-address", bintest.FreeAddr(t), "-health-probe-bind-address", probe)
	clustertest.Eventually(t, 20*time.Second, func() (bool, error) {
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+probe+"/readyz", nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return false, err
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, nil
	})
	clustertest.Eventually(t, 20*time.Second, func() (bool, error) {
		return strings.Contains(p.out.String(), "Successfully acquired lease"), nil
	})
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	if err := p.wait(t, 20*time.Second); err != nil {
		t.Fatalf("exit after SIGTERM: %v\n%s", err, p.out.String())
	}
	lease, err := clustertest.Clientset(t).CoordinationV1().Leases(ns).Get(t.Context(), "hapod-controller", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if h := lease.Spec.HolderIdentity; h != nil && *h != "" {
		t.Errorf("leader lease still held by %q after a clean shutdown", *h)
	}
}
