// Package crdinstall applies the HAGroup CRD (deploy/crd) to a cluster and
// waits until it is served: for the tests (clustertest.InstallCRD) and the
// demo, which apply the file as checked in, never a copy.
package crdinstall

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"github.com/hapod/hapod/internal/dev/poll"
)

// File is the CRD's path from the repository root.
const File = "deploy/crd/hapod.io_hagroups.yaml"

// Path is File under the repository root root.
func Path(root string) string { return filepath.Join(root, File) }

// Apply server-side applies the CRD in path as fieldManager (so that
// several test binaries sharing a cluster apply it without conflict) and
// waits until the API server serves it.
func Apply(ctx context.Context, rc *rest.Config, path, fieldManager string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("crdinstall: %w", err)
	}
	// Decoded strictly as a CRD first: a typo in the file fails here, with
	// its path, not as a server-side apply of unknown fields.
	crd := &apiextensionsv1.CustomResourceDefinition{}
	if err := yaml.UnmarshalStrict(b, crd); err != nil {
		return fmt.Errorf("crdinstall: %s: %w", path, err)
	}
	u := &unstructured.Unstructured{}
	if err := yaml.Unmarshal(b, &u.Object); err != nil {
		return fmt.Errorf("crdinstall: %s: %w", path, err)
	}
	scheme := runtime.NewScheme()
	if err := apiextensionsv1.AddToScheme(scheme); err != nil {
		return err
	}
	c, err := client.New(rc, client.Options{Scheme: scheme})
	if err != nil {
		return err
	}
	if err := c.Apply(ctx, client.ApplyConfigurationFromUnstructured(u), client.FieldOwner(fieldManager), client.ForceOwnership); err != nil {
		return fmt.Errorf("crdinstall: apply %s: %w", crd.Name, err)
	}
	return poll.Until(ctx, 30*time.Second, func() (bool, error) {
		var got apiextensionsv1.CustomResourceDefinition
		if err := c.Get(ctx, client.ObjectKeyFromObject(crd), &got); err != nil {
			return false, err
		}
		for _, cond := range got.Status.Conditions {
			if cond.Type == apiextensionsv1.Established && cond.Status == apiextensionsv1.ConditionTrue {
				return true, nil
			}
		}
		return false, nil
	})
}
