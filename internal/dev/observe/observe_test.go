package observe

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	"github.com/hapod/hapod/pkg/role"
)

func newObserver() *Observer[struct{}] {
	return &Observer[struct{}]{
		cfg:  Config{Service: "svc", RoleLabel: "role", ActiveValue: "active"},
		pods: map[types.UID]*Pod[struct{}]{}, byName: map[string]types.UID{},
		parts: map[string]Snapshot{}, changed: make(chan struct{}),
	}
}

func pod(name, uid, roleValue, epoch string, ready bool) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, UID: types.UID(uid), Labels: map[string]string{"role": roleValue},
			Annotations: map[string]string{role.EpochAnnotation: epoch}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "198.51.100.1"},
	}
	if ready {
		p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}
	}
	return p
}

// A pod's history: first Running, first Ready, label changes, first active,
// gone; a same-named successor takes the name.
func TestPodHistory(t *testing.T) {
	o := newObserver()
	o.podEvent(pod("a", "u1", "standby", "", false), false)
	o.podEvent(pod("a", "u1", "standby", "", true), false)
	o.podEvent(pod("a", "u1", "active", "3", true), false)
	p, ok := o.PodByName("a")
	if !ok || p.Running.IsZero() || p.ReadyAt.IsZero() || p.Active.IsZero() || p.Epoch != 3 || len(p.Labels) != 2 {
		t.Fatalf("history %+v", p)
	}
	if !p.ReadyAt.After(p.Running) && !p.ReadyAt.Equal(p.Running) || p.LabelledAt("active", 3) != p.Active {
		t.Errorf("times out of order: %+v", p)
	}
	o.podEvent(pod("a", "u1", "active", "3", true), true)
	if _, ok := o.PodByName("a"); ok {
		t.Error("a deleted pod is still found by name")
	}
	o.podEvent(pod("a", "u2", "standby", "", false), false)
	if p, ok := o.PodByName("a"); !ok || p.UID != "u2" {
		t.Errorf("the successor is not found by name: %+v", p)
	}
	if old, _ := o.Pod("u1"); old.Gone.IsZero() || old.Alive() {
		t.Errorf("the deleted pod is not gone: %+v", old)
	}
}

// ReadyOnlySince is when the ready addresses became exactly the one, ignoring
// not-ready endpoints, and nothing once they are not that any more.
func TestReadyOnlySince(t *testing.T) {
	o := newObserver()
	slice := func(eps ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
		return &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Name: "s"}, Endpoints: eps}
	}
	ep := func(ip string, ready bool) discoveryv1.Endpoint {
		return discoveryv1.Endpoint{Addresses: []string{ip}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(ready)}}
	}
	o.sliceEvent(slice(ep("10.0.0.1", true), ep("10.0.0.2", true)), false)
	if _, ok := o.ReadyOnlySince("10.0.0.2"); ok {
		t.Fatal("two ready addresses count as one")
	}
	o.sliceEvent(slice(ep("10.0.0.1", false), ep("10.0.0.2", true)), false)
	first, ok := o.ReadyOnlySince("10.0.0.2")
	if !ok {
		t.Fatal("a not-ready endpoint hides the only ready one")
	}
	o.sliceEvent(slice(ep("10.0.0.2", true)), false)
	if at, ok := o.ReadyOnlySince("10.0.0.2"); !ok || !at.Equal(first) {
		t.Errorf("since %v, %t; want the first snapshot's %v", at, ok, first)
	}
	if !o.LastSliceLocked().ListsOnly("10.0.0.2") {
		t.Error("ListsOnly false for one ready endpoint")
	}
	o.sliceEvent(slice(), false)
	if _, ok := o.ReadyOnlySince("10.0.0.2"); ok {
		t.Error("no endpoints count as the one")
	}
}

// WaitFor wakes on changes only: a condition made true by something the
// observer does not see (a file) is not seen until the next change.
// WaitForEvery sees it within its interval.
func TestWaitForEverySeesWhatTheObserverDoesNot(t *testing.T) {
	o := newObserver()
	var outside atomic.Bool
	time.AfterFunc(20*time.Millisecond, func() { outside.Store(true) })
	cond := func() (bool, string) { return outside.Load(), "not yet" }
	if err := o.WaitFor(context.Background(), 200*time.Millisecond, "outside", cond); !errors.Is(err, ErrTimeout) {
		t.Fatalf("WaitFor with no change: %v, want a timeout", err)
	}
	outside.Store(false)
	time.AfterFunc(20*time.Millisecond, func() { outside.Store(true) })
	if err := o.WaitForEvery(context.Background(), 5*time.Second, 10*time.Millisecond, "outside", cond); err != nil {
		t.Fatalf("WaitForEvery: %v", err)
	}
}
