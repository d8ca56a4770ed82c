package bench

import (
	"encoding/json"
	"encoding/xml"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/hapod/hapod/internal/dev/bintest"
	"github.com/hapod/hapod/internal/dev/clustertest"
)

func TestMain(m *testing.M) { clustertest.Main(m, bintest.Cleanup) }

// TestShortRun runs the short mode's scenarios, smaller still, on the test
// cluster and checks that they measured what they claim: every failover
// completed, every sample is positive, percentiles are ordered and the
// causal order of each failover's stages holds. No wall-clock limits: the
// numbers depend on the machine.
func TestShortRun(t *testing.T) {
	e := &Env{
		REST:          clustertest.RESTConfig(t),
		Kubeconfig:    clustertest.Kubeconfig(t),
		ControllerBin: bintest.Build(t, "github.com/hapod/hapod/cmd/hapod-controller"),
		DemoBin:       bintest.Build(t, "github.com/hapod/hapod/cmd/hapod-demo"),
		WorkDir:       t.TempDir(),
		Log:           slog.New(slog.NewTextHandler(t.Output(), nil)),
	}
	o := Short()
	o.Failovers = 10
	// One 15 s round of the default timings would only repeat the code
	// path of the aggressive ones.
	o.ElectionDefault = ElectionRun{}
	o.ElectionAggressive = ElectionRun{Groups: 2, Rounds: 2}
	o.NoStandby = 3
	o.Groups = []int{1, 20}
	o.HAGroupScale = []int{20} // the same mass failover with an HAGroup per group
	o.ProfileDir, o.ProfileGroups, o.ProfileSeconds = e.WorkDir, 20, 1
	o.LeaseKills = 3
	o.RenewalGroups, o.RenewalSteady = 20, 2*time.Second
	r, err := Run(t.Context(), e, o)
	if err != nil {
		t.Fatal(err)
	}

	if len(r.OneGroup) != 3 {
		t.Fatalf("one group: %d rows, want two triggers and the reference", len(r.OneGroup))
	}
	for _, tr := range r.OneGroup {
		if tr.Trigger == TriggerNone {
			for _, s := range tr.Stages {
				checkSeries(t, "reference/"+s.Name, s, 2*o.Failovers)
			}
			continue
		}
		stage := map[string]Series{}
		for _, s := range tr.Stages {
			stage[s.Name] = s
			checkSeries(t, tr.Trigger+"/"+s.Name, s, o.Failovers)
		}
		// Each failover: the controller saw the trigger before the app
		// had the role, which was before the controller got its ack; and
		// it saw the trigger before it labelled the new active.
		for i := range o.Failovers {
			seen, ack, got, lab := stage[StageSeen].Ms[i], stage[StageAck].Ms[i], stage[StageAckReceived].Ms[i], stage[StageLabelled].Ms[i]
			if seen >= ack || ack > got || seen >= lab {
				t.Errorf("%s failover %d out of order: seen %.2f ms, app %.2f ms, ack received %.2f ms, labelled %.2f ms", tr.Trigger, i, seen, ack, got, lab)
			}
		}
	}

	if len(r.Baselines) != 2 {
		t.Fatalf("baselines: %d, want leader election (aggressive) and no standby", len(r.Baselines))
	}
	le, ns := r.Baselines[0], r.Baselines[1]
	checkSeries(t, le.System, le.Series, 4)
	checkSeries(t, le.System+" lease", *le.Acquired, 4)
	for i := range le.Series.Ms {
		if le.Acquired.Ms[i] > le.Series.Ms[i] {
			t.Errorf("%s failover %d labelled (%.1f ms) before the lease was held (%.1f ms)", le.System, i, le.Series.Ms[i], le.Acquired.Ms[i])
		}
	}
	checkSeries(t, ns.System, ns.Series, 3)
	if ns.Series.Summary.P50 < ms(o.InitDelay) {
		t.Errorf("no standby p50 %.1f ms is below the app's init delay %v", ns.Series.Summary.P50, o.InitDelay)
	}
	if le.Ratio <= 0 || ns.Ratio <= 0 {
		t.Errorf("ratios to hapod not computed: %v, %v", le.Ratio, ns.Ratio)
	}

	checkLease(t, r, o)

	if len(r.Scale) != 3 || !r.Scale[2].HAGroups {
		t.Fatalf("scale: %d results, want 3, the last with HAGroups", len(r.Scale))
	}
	for _, sc := range r.Scale {
		// A group whose active's lease lapsed before the trigger (a
		// starved machine) is counted apart, not measured.
		if sc.Completed+sc.FalseBefore != sc.Groups || sc.Completed == 0 {
			t.Errorf("scale %d: %d groups failed over, %d before the trigger", sc.Groups, sc.Completed, sc.FalseBefore)
		}
		checkSeries(t, "scale ack", sc.Ack, sc.Completed)
		checkSeries(t, "scale label", sc.Labelled, sc.Completed)
		// At least the promotion's label patch per group.
		if sc.APIRequests["PATCH"] < float64(sc.Groups) || sc.PeakRSSMiB <= 0 || sc.CPUSeconds < 0 {
			t.Errorf("scale %d: requests %v, peak RSS %.1f MiB, CPU %.2f s", sc.Groups, sc.APIRequests, sc.PeakRSSMiB, sc.CPUSeconds)
		}
	}
	if p := r.Scale[1].Profile; p == "" {
		t.Error("no CPU profile of the 20-group failover")
	} else if fi, err := os.Stat(p); err != nil || fi.Size() == 0 {
		t.Errorf("CPU profile %s: %v", p, err)
	}

	out := t.TempDir()
	if err := r.Write(out); err != nil {
		t.Fatal(err)
	}
	checkFiles(t, out)
}

// checkLease: every kill was followed by a new active, the lease path's
// failovers were all the lease's doing, no two apps were ever active at
// once, and the renewals were counted.
func checkLease(t *testing.T, r *Results, o Options) {
	t.Helper()
	if r.Lease == nil || len(r.Lease.Kills) != 2 {
		t.Fatalf("kill -9: %+v, want both detection paths", r.Lease)
	}
	for _, k := range r.Lease.Kills {
		checkSeries(t, "kill -9 via "+k.Detection, k.Series, o.LeaseKills)
		if k.Detection == DetectLease && k.Reasons["LeaseLapsed"] != o.LeaseKills {
			t.Errorf("kill -9 via the lease: failover reasons %v, want LeaseLapsed every time", k.Reasons)
		}
	}
	if r.Lease.Overlaps != 0 {
		t.Errorf("two apps were active at once %d times", r.Lease.Overlaps)
	}
	rn := r.Renewals
	if rn == nil || rn.Groups != o.RenewalGroups || rn.SentPerSec <= 0 || rn.AckedPerSec <= 0 || rn.ControllerCPU <= 0 {
		t.Errorf("renewals: %+v", rn)
	}
}

// checkSeries: n positive samples, percentiles in order.
func checkSeries(t *testing.T, name string, s Series, n int) {
	t.Helper()
	sm := s.Summary
	if sm.N != n || len(s.Ms) != n {
		t.Errorf("%s: %d samples (%d in summary), want %d", name, len(s.Ms), sm.N, n)
		return
	}
	if slices.Min(s.Ms) <= 0 {
		t.Errorf("%s: a sample is not positive: %v", name, s.Ms)
	}
	if !(sm.P50 <= sm.P90 && sm.P90 <= sm.P99 && sm.P99 <= sm.Max) {
		t.Errorf("%s: percentiles out of order: %+v", name, sm)
	}
}

// checkFiles: the three outputs exist, the JSON and the SVG parse.
func checkFiles(t *testing.T, dir string) {
	t.Helper()
	for _, name := range []string{"results.md", "results.json", "cdf.svg"} {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if len(b) == 0 {
			t.Errorf("%s is empty", name)
		}
		switch filepath.Ext(name) {
		case ".json":
			var r Results
			if err := json.Unmarshal(b, &r); err != nil {
				t.Errorf("%s: %v", name, err)
			}
		case ".svg":
			var v struct {
				XMLName xml.Name
			}
			if err := xml.Unmarshal(b, &v); err != nil || v.XMLName.Local != "svg" {
				t.Errorf("%s is not an SVG document: %v", name, err)
			}
		}
	}
}
