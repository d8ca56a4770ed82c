package bench

import (
	"context"
	"fmt"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/hapod/hapod/api/v1alpha1"
	"github.com/hapod/hapod/internal/dev/crdinstall"
	"github.com/hapod/hapod/internal/dev/localcluster"
)

// createHAGroups installs the HAGroup CRD and gives each of the run's
// groups (g0 .. g<n-1>) an HAGroup, so that the controller writes their
// status too: the cost of the status, in requests and CPU, is the
// difference from the same run without.
func (s *scaleRun) createHAGroups(ctx context.Context) error {
	root, err := localcluster.RepoRoot(".")
	if err != nil {
		return err
	}
	if err := crdinstall.Apply(ctx, s.e.REST, crdinstall.Path(root), fieldManager); err != nil {
		return err
	}
	scheme := runtime.NewScheme()
	if err := v1alpha1.AddToScheme(scheme); err != nil {
		return err
	}
	rc := rest.CopyConfig(s.e.REST)
	rc.QPS, rc.Burst = 500, 1000 // client-go's default 5 a second would take minutes
	c, err := client.New(rc, client.Options{Scheme: scheme})
	if err != nil {
		return err
	}
	return parallel(ctx, 32, s.n, func(i int) error {
		hg := &v1alpha1.HAGroup{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("g%d", i), Namespace: s.ns}}
		return c.Create(ctx, hg, client.FieldOwner(fieldManager))
	})
}
