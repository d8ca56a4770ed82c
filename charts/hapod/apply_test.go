package hapod_test

import (
	"context"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/restmapper"

	"github.com/hapod/hapod/internal/dev/clustertest"
)

const fieldManager = "hapod-chart-test"

// TestTemplateAppliesToCluster applies what helm template renders, default
// and custom values, to a real API server: server-side apply with dry-run,
// then for real. The CRD is installed by clustertest.InstallCRD (the same
// file, TestCRDMatchesDeploy); a ServiceMonitor is neither rendered here
// (disabled in both) nor applied anywhere, its CRD not being installed.
// Cluster-scoped objects get the test namespace in their release name and
// are deleted at the end.
func TestTemplateAppliesToCluster(t *testing.T) {
	clustertest.InstallCRD(t)
	cfg := clustertest.RESTConfig(t)
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	groups, err := restmapper.GetAPIGroupResources(dc)
	if err != nil {
		t.Fatal(err)
	}
	mapper := restmapper.NewDiscoveryRESTMapper(groups)
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		custom bool
	}{{"default", false}, {"custom", true}} {
		t.Run(tc.name, func(t *testing.T) {
			ns := clustertest.Namespace(t)
			release := "hapod-" + tc.name
			// The namespace's random suffix keeps the cluster-scoped names
			// apart from other runs sharing the cluster.
			args := []string{"--set", "fullnameOverride=" + release + "-" + ns[strings.LastIndex(ns, "-")+1:]}
			if tc.custom {
				a, b := clustertest.Namespace(t), clustertest.Namespace(t)
				args = append(args, "--values", customValues, "--set", "watchNamespaces={"+a+","+b+"}")
			}
			for _, d := range render(t, release, ns, args...) {
				if d.u.GetKind() == "CustomResourceDefinition" || d.u.GetKind() == "ServiceMonitor" {
					continue
				}
				gvk := d.u.GroupVersionKind()
				m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
				if err != nil {
					t.Fatalf("%s: %v", d, err)
				}
				var r dynamic.ResourceInterface = dyn.Resource(m.Resource)
				if m.Scope.Name() == meta.RESTScopeNameNamespace {
					r = dyn.Resource(m.Resource).Namespace(d.u.GetNamespace())
				} else {
					name := d.u.GetName()
					// t.Context is cancelled before cleanups run.
					t.Cleanup(func() {
						if err := dyn.Resource(m.Resource).Delete(context.WithoutCancel(t.Context()), name, metav1.DeleteOptions{}); err != nil {
							t.Errorf("delete %s %s: %v", gvk.Kind, name, err)
						}
					})
				}
				data, err := d.u.MarshalJSON()
				if err != nil {
					t.Fatal(err)
				}
				force := true
				for _, dry := range [][]string{{metav1.DryRunAll}, nil} {
					if _, err := r.Patch(t.Context(), d.u.GetName(), types.ApplyPatchType, data, metav1.PatchOptions{
						DryRun: dry, Force: &force, FieldManager: fieldManager, FieldValidation: metav1.FieldValidationStrict,
					}); err != nil {
						t.Errorf("apply (dry-run %v) %s: %v", dry, d, err)
					}
				}
			}
		})
	}
}
