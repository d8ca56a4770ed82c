package controller

import (
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/workqueue"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/hapod/hapod/internal/config"
)

// instantQueue plays a worker that starts the reconcile the moment a
// request is added: it takes the group's seen time at once, as Reconcile's
// first statement does.
type instantQueue struct {
	workqueue.TypedRateLimitingInterface[reconcile.Request]
	r    *Reconciler
	took map[types.NamespacedName]time.Time
}

func (q *instantQueue) Add(req reconcile.Request) {
	q.took[req.NamespacedName] = q.r.seen.take(req.NamespacedName, time.Time{})
}

// TestSeenBeforeEnqueue checks that every group an event touches has its
// seen time noted before it is enqueued, so the reconcile the event causes
// takes it and no note outlives it to start a later failover's clock.
func TestSeenBeforeEnqueue(t *testing.T) {
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	pod := func(group, rv string) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "p", ResourceVersion: rv, Labels: map[string]string{"app": group}}}
	}
	for _, tc := range []struct {
		name     string
		old, new *corev1.Pod
		groups   []string
	}{
		// The usual update: old and new map to the same group.
		{"same group", pod("g", "1"), pod("g", "2"), []string{"g"}},
		// A relabelled pod leaves one group and joins another: both are told.
		{"group changed", pod("g1", "1"), pod("g2", "2"), []string{"g1", "g2"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := New(config.Default(), Deps{Now: func() time.Time { return at }})
			q := &instantQueue{r: r, took: map[types.NamespacedName]time.Time{}}
			seenHandler{r: r, groups: r.podToGroup}.Update(t.Context(), event.UpdateEvent{ObjectOld: tc.old, ObjectNew: tc.new}, q)
			for _, g := range tc.groups {
				key := types.NamespacedName{Namespace: "ns", Name: g}
				if got, ok := q.took[key]; !ok || !got.Equal(at) {
					t.Errorf("reconcile of %s took seen time %v (enqueued %v), want %v", g, got, ok, at)
				}
			}
			if len(q.took) != len(tc.groups) {
				t.Errorf("enqueued %v, want %v", q.took, tc.groups)
			}
			if len(r.seen.m) != 0 {
				t.Errorf("notes left after the reconciles took theirs: %v", r.seen.m)
			}
		})
	}
}
