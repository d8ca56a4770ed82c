package realnode_test

import (
	"log/slog"
	"path/filepath"
	"testing"

	"github.com/hapod/hapod/internal/dev/bench"
	"github.com/hapod/hapod/internal/dev/clustertest"
)

// The bench's real-node scenario (make bench), two samples per row, on this
// package's real nodes: every row completes with every stage it claims,
// each stage after its trigger, and no two apps active at once. (Stages
// seen on different watch streams are not compared: their order of
// delivery is not guaranteed.) No wall-clock limits: the numbers depend on the machine.
func TestBenchRealNodeRows(t *testing.T) {
	e := &bench.Env{
		REST: clustertest.RESTConfig(t), Kubeconfig: clustertest.Kubeconfig(t),
		ControllerBin: filepath.Join(binDir, "hapod-controller"), DemoBin: filepath.Join(binDir, "hapod-demo"),
		RealNodes: true, PodKubeconfig: clustertest.PodKubeconfig(t), WorkDir: t.TempDir(), Log: slog.New(slog.NewTextHandler(t.Output(), nil)),
	}
	o := bench.Short()
	o.Scenarios = []string{"realnode"}
	o.RealNodeSamples = 2
	r, err := bench.Run(t.Context(), e, o)
	if err != nil {
		t.Fatal(err)
	}
	if r.RealNode == nil || len(r.RealNode.Rows) != 7 {
		t.Fatalf("real node: %+v, want seven rows", r.RealNode)
	}
	if r.RealNode.Overlaps != 0 {
		t.Fatalf("%d moments two apps held active at once", r.RealNode.Overlaps)
	}
	for _, row := range r.RealNode.Rows {
		st := map[string]bench.Series{}
		for _, s := range row.Stages {
			st[s.Name] = s
		}
		want := []string{bench.StageSlice, bench.StageRule, bench.StageClusterIP}
		switch row.Trigger {
		case bench.RealKill, bench.RealKillAPI, bench.RealDelete:
			want = append(want, bench.StageAppActive, bench.StageLabelSeen)
		case bench.RealLEDefault, bench.RealLEAggressive:
			// The new leader may be the killed process restarted in place,
			// whose pod keeps its label.
			want = append(want, bench.StageAppActive)
		}
		if row.Trigger == bench.RealKillAPI || row.Trigger == bench.RealRestart {
			want = append(want, bench.StageTerminated) // the kubelet's report is what acts
		}
		for _, name := range want {
			s, ok := st[name]
			if !ok || s.Summary.N != o.RealNodeSamples {
				t.Errorf("%s: stage %q has %d samples, want %d", row.Trigger, name, s.Summary.N, o.RealNodeSamples)
				continue
			}
			for _, v := range s.Ms {
				if v <= 0 {
					t.Errorf("%s: stage %q sample %.2f ms is not after the trigger", row.Trigger, name, v)
				}
			}
		}
	}
}
