package controller

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/hapod/hapod/api/v1alpha1"
	"github.com/hapod/hapod/internal/election"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/controller/priorityqueue"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"
)

// Field indexes on the pod cache.
const (
	groupIndex = "hapod.io/group"
	nodeIndex  = "spec.nodeName"
)

// DefaultGroup names the group of pods that lack the group label.
const DefaultGroup = "default"

// GroupOf returns the group a pod belongs to.
func GroupOf(pod *corev1.Pod, groupLabel string) string {
	if g := pod.Labels[groupLabel]; g != "" {
		return g
	}
	return DefaultGroup
}

// SetupWithManager wires the reconciler into mgr: field indexes, watches on
// pods (and nodes, and HAGroups), the status writer and the controller's
// worker pool. It changes one thing in the reconciler, which New made
// complete otherwise: HAGroups are turned off when the API server does not
// serve the CRD, so that a controller installed without it runs as before
// (installing the CRD later takes a restart).
func (r *Reconciler) SetupWithManager(mgr ctrl.Manager) error {
	if r.Config.HAGroups {
		gk := v1alpha1.GroupVersion.WithKind("HAGroup").GroupKind()
		if _, err := mgr.GetRESTMapper().RESTMapping(gk, v1alpha1.GroupVersion.Version); err != nil {
			if !meta.IsNoMatchError(err) {
				return fmt.Errorf("looking up the HAGroup CRD: %w", err)
			}
			mgr.GetLogger().Info("HAGroup CRD not installed; groups are managed from the flags alone", "crd", "hagroups.hapod.io")
			r.Config.HAGroups = false
		}
	}
	ctx := context.Background() // index functions ignore it; the manager owns the cache's lifetime
	idx := mgr.GetFieldIndexer()
	if err := idx.IndexField(ctx, &corev1.Pod{}, groupIndex, func(o client.Object) []string {
		return []string{GroupOf(o.(*corev1.Pod), r.Config.GroupLabel)}
	}); err != nil {
		return err
	}
	if err := idx.IndexField(ctx, &corev1.Pod{}, nodeIndex, func(o client.Object) []string {
		if n := o.(*corev1.Pod).Spec.NodeName; n != "" {
			return []string{n}
		}
		return nil
	}); err != nil {
		return err
	}

	// The renewal loop, on the leader only, like the reconciler.
	if err := mgr.Add(r.leases); err != nil {
		return err
	}
	if r.Config.HAGroups {
		if err := mgr.Add(r.status); err != nil {
			return err
		}
	}
	if err := mgr.Add(r.promotionEvents); err != nil {
		return err
	}
	b := ctrl.NewControllerManagedBy(mgr).
		Named("hapod").
		WithOptions(controller.Options{
			MaxConcurrentReconciles: r.Config.Workers,
			// Failover retries must be quick: the default limiter starts at
			// 5 ms but also caps the whole queue at 10 qps.
			RateLimiter: workqueue.NewTypedItemExponentialFailureRateLimiter[reconcile.Request](5*time.Millisecond, 5*time.Second),
		}).
		Watches(&corev1.Pod{}, seenHandler{r: r, groups: r.podToGroup}).
		WatchesRawSource(source.Channel(r.requeue, handler.TypedFuncs[reconcile.Request, reconcile.Request]{
			GenericFunc: func(_ context.Context, e event.TypedGenericEvent[reconcile.Request], q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
				q.Add(e.Object)
			},
		}))
	if r.Config.WatchNodes {
		b = b.Watches(&corev1.Node{}, seenHandler{r: r, groups: r.nodeToGroups},
			builder.WithPredicates(nodeChanged()))
	}
	if r.Config.HAGroups {
		// A spec change (pause, a switchover request) is acted on at
		// once; the controller's own status writes are not spec changes.
		b = b.Watches(&v1alpha1.HAGroup{}, seenHandler{r: r, groups: func(_ context.Context, o client.Object) []reconcile.Request {
			return []reconcile.Request{{NamespacedName: client.ObjectKeyFromObject(o)}}
		}}, builder.WithPredicates(predicate.GenerationChangedPredicate{}))
	}
	return b.Complete(r)
}

// seenHandler enqueues the groups an event maps to, having first noted,
// for every one of them, when the event was seen: the start of the failover
// clock. Noting inside the map function is not enough:
// EnqueueRequestsFromMapFunc maps an update's old object and enqueues it
// before it maps the new one, so a worker could start the reconcile and
// take the note in between, and the new object's note would then be left
// to start the clock of the group's next, unrelated failover (the benchmark
// saw failovers "seen" up to 140 ms before their trigger was written).
type seenHandler struct {
	r      *Reconciler
	groups handler.MapFunc
}

func (h seenHandler) enqueue(ctx context.Context, q workqueue.TypedRateLimitingInterface[reconcile.Request], lowPriority bool, objs ...client.Object) {
	var reqs []reconcile.Request
	for _, o := range objs {
		for _, req := range h.groups(ctx, o) {
			if !slices.Contains(reqs, req) {
				reqs = append(reqs, req)
			}
		}
	}
	now := h.r.Now()
	for _, req := range reqs {
		h.r.seen.note(req.NamespacedName, now)
	}
	// As EnqueueRequestsFromMapFunc: the initial list and resyncs go
	// behind real changes.
	pq, ok := q.(priorityqueue.PriorityQueue[reconcile.Request])
	for _, req := range reqs {
		if lowPriority && ok {
			pq.AddWithOpts(priorityqueue.AddOpts{Priority: ptr.To(handler.LowPriority)}, req)
		} else {
			q.Add(req)
		}
	}
}

func (h seenHandler) Create(ctx context.Context, e event.CreateEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
	h.enqueue(ctx, q, e.IsInInitialList, e.Object)
}

func (h seenHandler) Update(ctx context.Context, e event.UpdateEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
	unchanged := e.ObjectOld.GetResourceVersion() == e.ObjectNew.GetResourceVersion()
	h.enqueue(ctx, q, unchanged, e.ObjectOld, e.ObjectNew)
}

func (h seenHandler) Delete(ctx context.Context, e event.DeleteEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
	h.enqueue(ctx, q, false, e.Object)
}

func (h seenHandler) Generic(ctx context.Context, e event.GenericEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
	h.enqueue(ctx, q, false, e.Object)
}

// podToGroup maps a pod to its group.
func (r *Reconciler) podToGroup(_ context.Context, o client.Object) []reconcile.Request {
	pod, ok := o.(*corev1.Pod)
	if !ok {
		return nil
	}
	return []reconcile.Request{{NamespacedName: types.NamespacedName{Namespace: pod.Namespace, Name: GroupOf(pod, r.Config.GroupLabel)}}}
}

// nodeToGroups maps a node's readiness change to every group with a pod on
// that node: a node failure is a failover for each of their actives.
func (r *Reconciler) nodeToGroups(ctx context.Context, o client.Object) []reconcile.Request {
	var pods corev1.PodList
	if err := r.Client.List(ctx, &pods, client.MatchingFields{nodeIndex: o.GetName()}); err != nil {
		return nil
	}
	seen := map[types.NamespacedName]bool{}
	var reqs []reconcile.Request
	for i := range pods.Items {
		key := types.NamespacedName{Namespace: pods.Items[i].Namespace, Name: GroupOf(&pods.Items[i], r.Config.GroupLabel)}
		if !seen[key] {
			seen[key] = true
			reqs = append(reqs, reconcile.Request{NamespacedName: key})
		}
	}
	return reqs
}

// nodeChanged passes node events whose Ready condition or
// schedulability (a cordon, a drain) changed; heartbeats, which update
// nodes all the time, are dropped.
func nodeChanged() predicate.Predicate {
	return predicate.Funcs{
		UpdateFunc: func(e event.UpdateEvent) bool {
			o, ok1 := e.ObjectOld.(*corev1.Node)
			n, ok2 := e.ObjectNew.(*corev1.Node)
			return !ok1 || !ok2 || election.NodeReadyStatus(o) != election.NodeReadyStatus(n) ||
				o.Spec.Unschedulable != n.Spec.Unschedulable
		},
		GenericFunc: func(event.GenericEvent) bool { return false },
	}
}
