package chaos

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/hapod/hapod/internal/dev/bintest"
	"github.com/hapod/hapod/internal/dev/localcluster"
	"github.com/hapod/hapod/internal/dev/poll"
)

func TestMain(m *testing.M) {
	code := m.Run()
	bintest.Cleanup()
	os.Exit(code)
}

// startCluster starts a cluster of the test's own: the run restarts its
// API server, which must not disturb other tests.
func startCluster(t *testing.T) *localcluster.Cluster {
	t.Helper()
	c, err := localcluster.Start(t.Context(), localcluster.Options{NodePodCIDRs: []string{}, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Stop(); err != nil {
			t.Error(err)
		}
	})
	return c
}

// TestChaosShort is make chaos -short: every kind of fault, mixed, and no
// violation in the history.
func TestChaosShort(t *testing.T) {
	if testing.Short() {
		t.Skip("needs a cluster")
	}
	c := startCluster(t)
	seed := rand.Uint64()
	t.Logf("seed %d (replay: go run ./cmd/hapod-chaos -seed %d -faults 45 -groups 3)", seed, seed)
	o := Options{
		Kubeconfig: c.Kubeconfig(), APIServer: c,
		ControllerBin: bintest.Build(t, "github.com/hapod/hapod/cmd/hapod-controller"),
		DemoBin:       bintest.Build(t, "github.com/hapod/hapod/cmd/hapod-demo"),
		WorkDir:       t.TempDir(), Seed: seed, Faults: 45, Groups: 3,
		Log: slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn})),
	}
	// The run stops a minute and a half before the test binary's own
	// timeout, so a run that is stuck fails with what it was waiting for
	// (the warnings above) and tears down, instead of a goroutine dump.
	ctx := t.Context()
	if d, ok := t.Deadline(); ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, d.Add(-90*time.Second))
		defer cancel()
	}
	res, err := Run(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	var md strings.Builder
	Summarize(res, o, "").Markdown(&md)
	t.Log("\n" + md.String())
	if res.Report.Faults != o.Faults {
		t.Errorf("%d faults recorded, want %d", res.Report.Faults, o.Faults)
	}
	if res.Report.LabelEvents == 0 || res.Report.AppChanges == 0 {
		t.Errorf("the recorder saw %d label events and %d app reports", res.Report.LabelEvents, res.Report.AppChanges)
	}
	if n := res.Report.Violations(); n > 0 {
		t.Errorf("%d violations; history in %s", n, filepath.Join(o.WorkDir, "history.jsonl"))
	}
	if len(res.Left) > 0 {
		t.Errorf("left running: %v", res.Left)
	}
}

// TestRecorderSeesTwoActives: the recorder's watch does see two pods
// labelled active, so that zero in a run means zero.
func TestRecorderSeesTwoActives(t *testing.T) {
	if testing.Short() {
		t.Skip("needs a cluster")
	}
	c := startCluster(t)
	cs, err := kubernetes.NewForConfig(c.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	rec := NewRecorder(nil)
	l, err := watchLabels(t.Context(), cs, runLabel+"=t", "app", "role", "active", rec, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer l.stop()
	for i := range 2 {
		p := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("p%d", i), Namespace: "default", Labels: map[string]string{"app": "x", "role": "standby", runLabel: "t"}},
			Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "x"}}, NodeName: "nowhere"},
		}
		if _, err := cs.CoreV1().Pods("default").Create(t.Context(), p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 2 {
		patch := []byte(`{"metadata":{"labels":{"role":"active"}}}`)
		if _, err := cs.CoreV1().Pods("default").Patch(t.Context(), fmt.Sprintf("p%d", i), "application/merge-patch+json", patch, metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if err := poll.Until(t.Context(), 30*time.Second, func() (bool, error) {
		return len(Check(rec.History(), CheckOptions{}).LabelDoubles) > 0, nil
	}); err != nil {
		t.Fatalf("two pods labelled active, and the recorder did not see it: %v", err)
	}
}

// testWriter sends the run's warnings to the test log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}
