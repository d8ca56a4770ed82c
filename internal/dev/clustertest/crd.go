package clustertest

import (
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"github.com/hapod/hapod/internal/dev/localcluster"
)

// CRDFile is the HAGroup CRD, from the repository root (make generate).
const CRDFile = "deploy/crd/hapod.io_hagroups.yaml"

var crdOnce sync.Map // kubeconfig path -> struct{}: installed in this binary

// InstallCRD applies the HAGroup CRD as checked in (server-side apply, so a
// cluster shared by several test binaries takes it from each without
// conflict) and waits until the API server serves it. It stays installed:
// CRDs are cluster-scoped and every test of the binary may use it.
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
	b, err := os.ReadFile(filepath.Join(root, CRDFile))
	if err != nil {
		t.Fatalf("clustertest: %v", err)
	}
	crd := &apiextensionsv1.CustomResourceDefinition{}
	if err := yaml.UnmarshalStrict(b, crd); err != nil {
		t.Fatalf("clustertest: %s: %v", CRDFile, err)
	}
	crd.SetGroupVersionKind(apiextensionsv1.SchemeGroupVersion.WithKind("CustomResourceDefinition"))
	scheme := runtime.NewScheme()
	if err := apiextensionsv1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Patch(t.Context(), crd, client.Apply, client.FieldOwner(FieldManager), client.ForceOwnership); err != nil {
		t.Fatalf("clustertest: apply the HAGroup CRD: %v", err)
	}
	Eventually(t, 30*time.Second, func() (bool, error) {
		var got apiextensionsv1.CustomResourceDefinition
		if err := c.Get(t.Context(), client.ObjectKeyFromObject(crd), &got); err != nil {
			return false, err
		}
		for _, cond := range got.Status.Conditions {
			if cond.Type == apiextensionsv1.Established && cond.Status == apiextensionsv1.ConditionTrue {
				return true, nil
			}
		}
		return false, nil
	})
	crdOnce.Store(kubeconfigPath, struct{}{})
}
