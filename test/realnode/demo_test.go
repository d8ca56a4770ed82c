package realnode_test

import (
	"math"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hapod/hapod/internal/dev/clustertest"
	"github.com/hapod/hapod/internal/dev/crdinstall"
	"github.com/hapod/hapod/internal/dev/localcluster"
	"github.com/hapod/hapod/internal/dev/realpod"
	"github.com/hapod/hapod/internal/dev/realtour"
)

// The demo (make demo, internal/dev/realtour) on the real nodes: the
// seed's example as shipped, every scene as expected, each failover timed
// through kube-proxy's rule to the first answer through the ClusterIP, and
// no two pods or apps active at once (the tour checks after every scene).
// The file sorts before failover_test.go: its last test loses a node.
func TestDemoOnRealNodes(t *testing.T) {
	kc := clustertest.Kubeconfig(t)
	clustertest.RealNodes(t)
	root, err := localcluster.RepoRoot(".")
	if err != nil {
		t.Fatal(err)
	}
	records, err := realpod.RecordsDir("demo-test")
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	res, err := realtour.Run(t.Context(), realtour.Options{
		Kubeconfig:    kc,
		ExampleDir:    filepath.Join(root, "deploy", "example"),
		CRDFile:       crdinstall.Path(root),
		ControllerBin: filepath.Join(binDir, "hapod-controller"),
		LogDir:        t.TempDir(),
		Records:       records,
		Namespace:     "demo-test",
		// A role lease of 2 s rather than the default 150 ms: on CI's
		// loaded machine a starved active may lose the default lease and
		// hapod then fails over (safe, but not what scenes d and e
		// expect). The kill's failover is then driven by the kubelet's
		// report as often as by the lease.
		ControllerArgs: []string{"-lease-renew", "250ms", "-lease-ttl", "2s"},
		Out:            &out,
	})
	t.Log("the tour's output:\n" + out.String())
	if err != nil {
		t.Fatal(err)
	}
	if !res.OK() {
		t.Fatal("some scenes did not behave as expected (see the output above)")
	}
	for _, s := range res.Scenes {
		if s.Failover != s.WantFailover {
			t.Errorf("scene %s: failover %v, want %v", s.ID, s.Failover, s.WantFailover)
		}
		if !s.WantFailover {
			continue
		}
		// The whole path was seen, to the first answer through the
		// ClusterIP from the new active.
		for name, v := range map[string]float64{"app": s.AppMs, "label": s.LabelMs, "slice": s.SliceMs, "rule": s.RuleMs, "answer": s.AnswerMs} {
			if math.IsNaN(v) {
				t.Errorf("scene %s: no %s stage seen", s.ID, name)
			}
		}
	}
}
