package realnode_test

import (
	"log/slog"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hapod/hapod/internal/dev/chaos"
	"github.com/hapod/hapod/internal/dev/clustertest"
)

// TestChaosRealPhase is make chaos's real-node phase, short: each kind of
// real fault twice, in turn (a SIGKILLed container, a stopped kubelet and
// containerd, a pod's network namespace cut off), and the same check of
// the whole history as the kwok phase's: no two pods labelled active, no
// two apps holding the role, epochs in order, every fault settled within
// the bound, nothing left running.
func TestChaosRealPhase(t *testing.T) {
	seed := rand.Uint64()
	kinds := chaos.RealKinds()
	o := chaos.RealOptions{
		Kubeconfig: clustertest.Kubeconfig(t), Nodes: clustertest.RealCluster(t),
		ControllerBin: filepath.Join(binDir, "hapod-controller"), WorkDir: t.TempDir(),
		Seed: seed, Faults: 2 * len(kinds), Sequence: kinds,
		Log: slog.New(slog.NewTextHandler(testLog{t}, &slog.HandlerOptions{Level: slog.LevelWarn})),
	}
	t.Logf("seed %d", seed)
	res, err := chaos.RunReal(t.Context(), o)
	if err != nil {
		t.Fatal(err)
	}
	var md strings.Builder
	s := chaos.Summarize(res, chaos.Options{Seed: seed, Faults: o.Faults}, "")
	s.Setup = o.Describe()
	s.Markdown(&md)
	t.Log("\n" + md.String())
	rep := res.Report
	if rep.Faults != o.Faults {
		t.Errorf("%d faults recorded, want %d", rep.Faults, o.Faults)
	}
	seen := map[string]int{}
	for _, row := range rep.ByKind {
		seen[row.Kind] = row.Faults
	}
	for _, k := range kinds {
		if seen[k] != 2 {
			t.Errorf("%d faults of kind %s, want 2", seen[k], k)
		}
	}
	for _, f := range res.History.Faults {
		if f.Settled.IsZero() {
			t.Errorf("fault %d (%s on %s) did not settle: %s", f.ID, f.Kind, f.Target, f.Err)
		}
	}
	if rep.LabelEvents == 0 || rep.AppChanges == 0 {
		t.Errorf("the recorder saw %d label events and %d app records", rep.LabelEvents, rep.AppChanges)
	}
	if n := rep.Violations(); n > 0 {
		t.Errorf("%d violations; history in %s", n, filepath.Join(o.WorkDir, "history.jsonl"))
	}
	if len(res.Left) > 0 {
		t.Errorf("left running: %v", res.Left)
	}
}

// testLog sends the run's warnings to the test log.
type testLog struct{ t *testing.T }

func (w testLog) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}
