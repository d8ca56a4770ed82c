package controller

import (
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/hapod/hapod/api/v1alpha1"
	"github.com/hapod/hapod/internal/config"
)

// ManagerOptions are the parts of a manager's options that the reconciler
// depends on: the scheme, a pod cache limited to the selector (and the
// namespaces), managed fields stripped to save memory, and Leases read
// straight from the API (the reconciler reads the epoch Lease once per group
// and would otherwise cache every Lease in the cluster). Callers add
// metrics, probes and leader election.
func ManagerOptions(cfg config.Config) (ctrl.Options, error) {
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return ctrl.Options{}, err
	}
	if err := v1alpha1.AddToScheme(scheme); err != nil {
		return ctrl.Options{}, err
	}
	sel, err := cfg.PodSelector()
	if err != nil {
		return ctrl.Options{}, err
	}
	resync := cfg.ResyncPeriod
	cacheOpts := cache.Options{
		SyncPeriod:       &resync,
		DefaultTransform: cache.TransformStripManagedFields(),
		ByObject:         map[client.Object]cache.ByObject{&corev1.Pod{}: {Label: sel}},
	}
	if len(cfg.Namespaces) > 0 {
		cacheOpts.DefaultNamespaces = map[string]cache.Config{}
		for _, ns := range cfg.Namespaces {
			cacheOpts.DefaultNamespaces[ns] = cache.Config{}
		}
	}
	return ctrl.Options{
		Scheme: scheme,
		Cache:  cacheOpts,
		Client: client.Options{Cache: &client.CacheOptions{DisableFor: []client.Object{&coordinationv1.Lease{}}}},
	}, nil
}
