package clustertest

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/hapod/hapod/internal/dev/localcluster"
	"github.com/hapod/hapod/internal/dev/netplan"
	"github.com/hapod/hapod/internal/dev/observe"
	"github.com/hapod/hapod/internal/dev/podstatus"
	"github.com/hapod/hapod/internal/dev/poll"
	"github.com/hapod/hapod/pkg/role"
)

// EnvKubeconfig names a kubeconfig of a running cluster for Main to use instead of
// starting one.
const EnvKubeconfig = "HAPOD_KUBECONFIG"

// FieldManager is the field manager of every write these helpers make.
const FieldManager = "hapod-clustertest"

// Set by Main.
var (
	baseConfig     *rest.Config
	kubeconfigPath string
	short          bool // -short without a cluster: cluster tests skip
)

// Main runs the tests of a package against a cluster and exits with their code: the
// cluster named by $HAPOD_KUBECONFIG if set, else one it builds (if needed) and starts
// for this test binary and stops after the tests, also if TestMain panics. If the test
// binary dies, the cluster's processes die with it (Pdeathsig) and the next start removes
// its run directory. The after functions run once the tests are done (cleanups of
// other test helpers, such as bintest.Cleanup).
func Main(m *testing.M, after ...func()) {
	code := run(m)
	for _, f := range after {
		f()
	}
	os.Exit(code)
}

func run(m *testing.M) int {
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	// -short (make unit) runs the tests that need no cluster; the others skip
	// themselves in config. flag.Parse is safe here: m.Run parses again.
	flag.Parse()
	if testing.Short() && os.Getenv(EnvKubeconfig) == "" {
		short = true
		return m.Run()
	}
	if kc := os.Getenv(EnvKubeconfig); kc != "" {
		cfg, err := clientcmd.BuildConfigFromFlags("", kc)
		if err != nil {
			fmt.Fprintf(os.Stderr, "clustertest: %s=%s: %v\n", EnvKubeconfig, kc, err)
			return 1
		}
		if err := ping(cfg); err != nil {
			fmt.Fprintf(os.Stderr, "clustertest: the cluster of %s=%s does not answer: %v\n", EnvKubeconfig, kc, err)
			return 1
		}
		baseConfig, kubeconfigPath = cfg, kc
		return m.Run()
	}

	began := time.Now()
	c, err := localcluster.Start(context.Background(), localcluster.Options{Logger: log})
	if err != nil {
		fmt.Fprintf(os.Stderr, "clustertest: start a local cluster: %v\n", err)
		return 1
	}
	defer func() {
		if err := c.Stop(); err != nil {
			fmt.Fprintf(os.Stderr, "clustertest: %v\n", err)
		}
	}()
	log.Info("clustertest: local cluster started", "took", time.Since(began).Round(10*time.Millisecond).String(),
		"kubeconfig", c.Kubeconfig())
	baseConfig, kubeconfigPath = c.RESTConfig(), c.Kubeconfig()
	return m.Run()
}

func ping(cfg *rest.Config) error {
	cfg = rest.CopyConfig(cfg)
	cfg.Timeout = 10 * time.Second
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	_, err = cs.Discovery().ServerVersion()
	return err
}

func config(t testing.TB) *rest.Config {
	t.Helper()
	if short {
		t.Skip("needs the local cluster; skipped by -short")
	}
	if baseConfig == nil {
		t.Fatal("clustertest: no cluster: call clustertest.Main(m) from TestMain")
	}
	return baseConfig
}

// RESTConfig returns a copy of the admin client configuration of the test cluster, with
// QPS and Burst raised (200/400) so tests are not throttled by client-go.
func RESTConfig(t testing.TB) *rest.Config {
	t.Helper()
	cfg := rest.CopyConfig(config(t))
	cfg.QPS, cfg.Burst = 200, 400
	return cfg
}

// Kubeconfig returns the path of the test cluster's admin kubeconfig, for processes a
// test starts.
func Kubeconfig(t testing.TB) string {
	t.Helper()
	config(t)
	return kubeconfigPath
}

// Clientset returns a client of the test cluster.
func Clientset(t testing.TB) kubernetes.Interface {
	t.Helper()
	cs, err := kubernetes.NewForConfig(RESTConfig(t))
	if err != nil {
		t.Fatalf("clustertest: client: %v", err)
	}
	return cs
}

// Namespace creates a namespace named after the test, t-<test name>-<random>, waits
// until its default ServiceAccount exists (pods are refused before), and deletes it when
// the test ends.
func Namespace(t testing.TB) string {
	t.Helper()
	cs := Clientset(t)
	name := objectName("t-", t.Name())
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{role.TestNamespaceLabel: "true"}}}
	if _, err := cs.CoreV1().Namespaces().Create(t.Context(), ns, metav1.CreateOptions{FieldManager: FieldManager}); err != nil {
		t.Fatalf("clustertest: create namespace %s: %v", name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := cleanupContext(t)
		defer cancel()
		err := cs.CoreV1().Namespaces().Delete(ctx, name, metav1.DeleteOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			t.Errorf("clustertest: delete namespace %s: %v", name, err)
		}
	})
	Eventually(t, 30*time.Second, func() (bool, error) {
		_, err := cs.CoreV1().ServiceAccounts(name).Get(t.Context(), "default", metav1.GetOptions{})
		if err != nil {
			return false, fmt.Errorf("default ServiceAccount of namespace %s: %w", name, err)
		}
		return true, nil
	})
	return name
}

// Node creates a kwok node named after the test, waits until it is Ready and untainted,
// deletes it when the test ends, and returns its name. Its pod CIDR is podCIDR[0] if
// given, else a /24 inside 127.0.0.0/8 that no node of the cluster has yet (from
// 127.65.0.0 to 127.127.255.0, netplan.TestNodeOctets, the second octet drawn at random
// per test binary, so binaries that share a cluster rarely even try the same one).
//
// The scheduler may place any pod on any Ready node, including kwok-node-0/1 and other
// tests' nodes; pin a test's pods with nodeSelector kubernetes.io/hostname=<name>.
func Node(t testing.TB, podCIDR ...string) string {
	t.Helper()
	cs := Clientset(t)
	var cidr string
	if len(podCIDR) > 0 {
		cidr = podCIDR[0]
	} else {
		var err error
		if cidr, err = allocateCIDR(t.Context(), cs); err != nil {
			t.Fatalf("clustertest: choose a pod CIDR: %v", err)
		}
	}
	name := objectName("kwok-", t.Name())
	t.Cleanup(func() {
		ctx, cancel := cleanupContext(t)
		defer cancel()
		err := cs.CoreV1().Nodes().Delete(ctx, name, metav1.DeleteOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			t.Errorf("clustertest: delete node %s: %v", name, err)
		}
	})
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if _, err := localcluster.CreateNode(ctx, cs, name, cidr); err != nil {
		t.Fatalf("clustertest: %v", err)
	}
	return name
}

var cidrs struct {
	sync.Mutex
	second, third int
}

func allocateCIDR(ctx context.Context, cs kubernetes.Interface) (string, error) {
	nodes, err := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return "", err
	}
	used := map[string]bool{}
	for _, n := range nodes.Items {
		used[n.Spec.PodCIDR] = true
		for _, c := range n.Spec.PodCIDRs {
			used[c] = true
		}
	}
	cidrs.Lock()
	defer cidrs.Unlock()
	first, n := int(netplan.TestNodeOctets.First), int(netplan.TestNodeOctets.Last-netplan.TestNodeOctets.First)+1
	for range n * 256 {
		if cidrs.second == 0 || cidrs.third > 255 {
			cidrs.second, cidrs.third = first+rand.IntN(n), 0
		}
		c := fmt.Sprintf("127.%d.%d.0/24", cidrs.second, cidrs.third)
		cidrs.third++
		if !used[c] {
			return c, nil
		}
	}
	return "", fmt.Errorf("every /24 of 127.%d.0.0-127.%d.255.0 is in use", netplan.TestNodeOctets.First, netplan.TestNodeOctets.Last)
}

// Eventually calls cond every poll.Interval until it returns true, and fails the test
// if that has not happened within timeout. An error from cond means "not yet, because
// ...": it does not stop the polling, and the last one is reported if the deadline
// passes. To stop at once, call t.Fatal in cond.
func Eventually(t testing.TB, timeout time.Duration, cond func() (bool, error)) {
	t.Helper()
	began := time.Now()
	polls := 0
	err := poll.Until(t.Context(), timeout, func() (bool, error) {
		polls++
		return cond()
	})
	if err != nil {
		t.Fatalf("condition not met within %s (%d polls): %v", time.Since(began).Round(time.Millisecond), polls, err)
	}
}

// FailNode makes the node fail like one whose kubelet died: kwok stops
// heartbeating it and its Ready condition turns Unknown (see
// localcluster.FailNode).
func FailNode(t testing.TB, name string) {
	t.Helper()
	if _, err := localcluster.FailNode(t.Context(), Clientset(t), name); err != nil {
		t.Fatalf("clustertest: %v", err)
	}
}

// SetContainerTerminated writes what a kubelet writes when a container exits: in the
// pod's status, the container's state becomes terminated (exit code, reason, started
// when it was started, finished now), ready and started become false, restartCount is
// unchanged, and the pod's Ready and ContainersReady conditions become False. It is a
// JSON merge patch of the status subresource guarded by resourceVersion (retried on
// conflict). kwok leaves such a status alone.
func SetContainerTerminated(t testing.TB, namespace, pod, container string, exitCode int32, reason string) {
	t.Helper()
	change := podstatus.Terminated(container, exitCode, reason)
	if _, err := podstatus.Write(t.Context(), Clientset(t), namespace, pod, "", FieldManager, change); err != nil {
		t.Fatalf("clustertest: set container %s of pod %s/%s terminated: %v", container, namespace, pod, err)
	}
}

// cleanupContext is for t.Cleanup functions, which run after t.Context() is canceled.
func cleanupContext(t testing.TB) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(t.Context()), 30*time.Second)
}

var notName = regexp.MustCompile(`[^a-z0-9-]+`)

// objectName makes a DNS-1123 label (at most 63 characters) from a prefix, a test name
// and a random suffix: "t-", "TestFoo/bar_baz" -> "t-testfoo-bar-baz-x7k2p".
func objectName(prefix, testName string) string {
	s := notName.ReplaceAllString(strings.ToLower(testName), "-")
	s = strings.Trim(s, "-")
	const suffixLen = 6 // "-" and 5 random characters
	if maxLen := 63 - len(prefix) - suffixLen; len(s) > maxLen {
		s = strings.TrimRight(s[:maxLen], "-")
	}
	const alphabet = "bcdfghjklmnpqrstvwxz2456789"
	suffix := make([]byte, 5)
	for i := range suffix {
		suffix[i] = alphabet[rand.IntN(len(alphabet))]
	}
	return prefix + s + "-" + string(suffix)
}

// NeverTwoActive watches the pods that selector selects in namespace ns for
// the rest of the test and fails it if two are ever labelled label=value at
// the same resourceVersion of the watch stream: hapod's central promise,
// on the labels.
func NeverTwoActive(t testing.TB, cs kubernetes.Interface, ns, selector, label, value string) {
	t.Helper()
	w, err := cs.CoreV1().Pods(ns).Watch(t.Context(), metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	check := &observe.SingleActive{Label: label, Value: value}
	go func() {
		defer close(done)
		for ev := range w.ResultChan() {
			if p, ok := ev.Object.(*corev1.Pod); ok {
				check.See(p, ev.Type == watch.Deleted)
			}
		}
	}()
	t.Cleanup(func() {
		w.Stop()
		<-done
		if v := check.Violation(); v != "" {
			t.Error(v)
		}
	})
}
