package clustertest

import (
	"os"
	"sync"
	"testing"

	"github.com/hapod/hapod/internal/dev/crdinstall"
	"github.com/hapod/hapod/internal/dev/localcluster"
)

var crdOnce sync.Map // kubeconfig path -> struct{}: installed by this binary

// InstallCRD applies the HAGroup CRD as checked in (deploy/crd) and waits
// until the API server serves it. It stays installed: CRDs are
// cluster-scoped and every test of the binary may use it.
func InstallCRD(t testing.TB) {
	t.Helper()
	cfg := RESTConfig(t)
	if _, done := crdOnce.Load(kubeconfigPath); done {
		return
	}
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	root, err := localcluster.RepoRoot(wd)
	if err != nil {
		t.Fatal(err)
	}
	if err := crdinstall.Apply(t.Context(), cfg, crdinstall.Path(root), FieldManager); err != nil {
		t.Fatalf("clustertest: %v", err)
	}
	crdOnce.Store(kubeconfigPath, struct{}{})
}
