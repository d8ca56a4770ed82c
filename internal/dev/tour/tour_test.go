package tour

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/hapod/hapod/internal/config"
	"github.com/hapod/hapod/internal/dev/bintest"
	"github.com/hapod/hapod/internal/dev/clustertest"
	"github.com/hapod/hapod/internal/dev/netplan"
)

func TestMain(m *testing.M) { clustertest.Main(m, bintest.Cleanup) }

// testOptions are the tour's options with names of this test's own, so that it can share
// a cluster with a running demo or other tests.
func testOptions(t *testing.T, out *bintest.Buffer) Options {
	t.Helper()
	ctrl := bintest.Build(t, "github.com/hapod/hapod/cmd/hapod-controller")
	demo := bintest.Build(t, "github.com/hapod/hapod/cmd/hapod-demo")
	suffix := fmt.Sprintf("%05d", rand.IntN(100000))
	return Options{
		Kubeconfig:    clustertest.Kubeconfig(t),
		ExampleDir:    filepath.Join("..", "..", "..", "deploy", "example"),
		ControllerBin: ctrl,
		DemoBin:       demo,
		LogDir:        t.TempDir(),
		Namespace:     "tour-test-" + suffix,
		Node:          "tour-test-" + suffix,
		// A /24 of its own (the demo uses netplan.TourDemo).
		Loopback: netplan.Subnet24(netplan.TourTests, rand.IntN(256)),
		// Generous on a busy machine; every wait ends as soon as its condition holds.
		SceneTimeout: 45 * time.Second,
		Out:          out,
	}
}

// TestTour plays the whole tour and checks each scene's outcome (not its timings), and
// that nothing is left afterwards.
func TestTour(t *testing.T) {
	out := &bintest.Buffer{}
	opts := testOptions(t, out)
	res, err := Run(t.Context(), opts)
	t.Logf("tour output:\n%s", out.String())
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if len(res.Scenes) != 5 {
		t.Fatalf("%d scenes, want 5", len(res.Scenes))
	}
	for _, s := range res.Scenes {
		if !s.OK() {
			t.Errorf("scene %s (%s): ran %t, problems %v", s.ID, s.Title, s.Ran, s.Problems)
		}
	}
	a, b, c, d, e := res.Scenes[0], res.Scenes[1], res.Scenes[2], res.Scenes[3], res.Scenes[4]
	if !a.Failover || a.ActiveAfter == "" || a.EpochAfter == 0 {
		t.Errorf("a: failover %t, active %q at epoch %d; want a pod made active with an epoch", a.Failover, a.ActiveAfter, a.EpochAfter)
	}
	for _, s := range []*Scene{b, c} {
		// The active is replaced by the hot standby at a higher epoch, and the old pod
		// by a new standby.
		if !s.Failover || s.ActiveAfter == s.ActiveBefore || s.EpochAfter <= s.EpochBefore ||
			!slices.Equal(s.Removed, []string{s.ActiveBefore}) || len(s.Replacements) != 1 {
			t.Errorf("%s: failover %t, %s@%d -> %s@%d, removed %v, replacements %v", s.ID, s.Failover,
				s.ActiveBefore, s.EpochBefore, s.ActiveAfter, s.EpochAfter, s.Removed, s.Replacements)
		}
	}
	if b.ActiveBefore != a.ActiveAfter || c.ActiveBefore != b.ActiveAfter {
		t.Errorf("scenes do not follow on: a->%s, b %s->%s, c %s->%s", a.ActiveAfter, b.ActiveBefore, b.ActiveAfter, c.ActiveBefore, c.ActiveAfter)
	}
	// The sidecar's death costs nothing: same active, same epoch, nobody deleted.
	if d.Failover || d.ActiveAfter != d.ActiveBefore || d.EpochAfter != d.EpochBefore || len(d.Removed) != 0 {
		t.Errorf("d: failover %t, %s@%d -> %s@%d, removed %v", d.Failover, d.ActiveBefore, d.EpochBefore, d.ActiveAfter, d.EpochAfter, d.Removed)
	}
	// The standby's death replaces the standby and leaves the active alone.
	if e.Failover || e.ActiveAfter != e.ActiveBefore || e.EpochAfter != e.EpochBefore ||
		len(e.Removed) != 1 || e.Removed[0] == e.ActiveBefore || len(e.Replacements) != 1 {
		t.Errorf("e: failover %t, %s@%d -> %s@%d, removed %v, replacements %v", e.Failover, e.ActiveBefore, e.EpochBefore,
			e.ActiveAfter, e.EpochAfter, e.Removed, e.Replacements)
	}
	for _, s := range []*Scene{b, c, d, e} {
		if s.Requests.OK == 0 {
			t.Errorf("%s: no request answered 200 (%+v)", s.ID, s.Requests)
		}
	}
	// With the active untouched, the Service always had it: nothing went to a standby
	// or nowhere.
	if e.Requests.NoEndpoint != 0 || e.Requests.BadStatus != 0 {
		t.Errorf("e: %s", e.Requests.describe())
	}
	for _, want := range []string{"== scene a: initial election ==", "controller saw the trigger", "EndpointSlice lists only", "as expected"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q", want)
		}
	}
	assertNothingLeft(t, opts)
}

// An interrupted tour stops where it is and cleans up all the same.
func TestTourInterrupted(t *testing.T) {
	out := &bintest.Buffer{}
	opts := testOptions(t, out)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	opts.afterScene = func(s *Scene) {
		if s.ID == "b" {
			cancel()
		}
	}
	res, err := Run(ctx, opts)
	t.Logf("tour output:\n%s", out.String())
	if !errors.Is(err, errInterrupted) {
		t.Fatalf("Run: %v, want interrupted", err)
	}
	var ran []string
	for _, s := range res.Scenes {
		if s.Ran {
			ran = append(ran, s.ID)
		}
	}
	if !slices.Equal(ran, []string{"a", "b"}) {
		t.Errorf("scenes run: %v, want a and b", ran)
	}
	assertNothingLeft(t, opts)
}

// Applying the example twice (a second run, or make demo after a crash) is no error.
func TestApplyTwice(t *testing.T) {
	ns := clustertest.Namespace(t)
	ex, err := LoadExample(filepath.Join("..", "..", "..", "deploy", "example"))
	if err != nil {
		t.Fatal(err)
	}
	p, err := ex.forTour(ns, "no-such-node", config.Default())
	if err != nil {
		t.Fatal(err)
	}
	tr := &tour{cs: clustertest.Clientset(t), plan: p}
	for i := range 2 {
		for _, obj := range []runtime.Object{p.svc, p.rs} {
			if err := tr.apply(t.Context(), obj); err != nil {
				t.Fatalf("apply #%d: %v", i+1, err)
			}
		}
	}
	rs, err := tr.cs.AppsV1().ReplicaSets(ns).Get(t.Context(), p.rs.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if rs.Spec.Template.Annotations[ExternalReadinessAnnotation] != "true" || rs.Generation != 1 {
		t.Errorf("after two applies: generation %d, template annotations %v", rs.Generation, rs.Spec.Template.Annotations)
	}
}

// assertNothingLeft checks that the tour's namespace and node are gone and that none of
// its processes runs.
func assertNothingLeft(t *testing.T, opts Options) {
	t.Helper()
	cs := clustertest.Clientset(t)
	if _, err := cs.CoreV1().Namespaces().Get(t.Context(), opts.Namespace, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("namespace %s: %v, want not found", opts.Namespace, err)
	}
	if _, err := cs.CoreV1().Nodes().Get(t.Context(), opts.Node, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("node %s: %v, want not found", opts.Node, err)
	}
	if procs := processesOf(t, opts.ControllerBin, opts.DemoBin); len(procs) > 0 {
		t.Errorf("processes still running: %v", procs)
	}
}

// processesOf lists the running processes whose executable is one of bins.
func processesOf(t *testing.T, bins ...string) []string {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Skipf("no /proc: %v", err)
	}
	var found []string
	for _, e := range entries {
		exe, err := os.Readlink(filepath.Join("/proc", e.Name(), "exe"))
		if err != nil {
			continue
		}
		if slices.Contains(bins, exe) {
			found = append(found, e.Name()+" "+exe)
		}
	}
	return found
}
