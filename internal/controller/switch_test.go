package controller

import (
	"context"
	"errors"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/hapod/hapod/internal/config"
	"github.com/hapod/hapod/internal/election"
	"github.com/hapod/hapod/internal/notify"
)

type notifierFunc func(context.Context, notify.Target) notify.Result

func (f notifierFunc) Send(ctx context.Context, t notify.Target) notify.Result { return f(ctx, t) }

// TestSwitchTellsBeforeWaitingForASlot: when every switch slot is taken
// (a mass failover), the new active is still told at once; only the API
// writes wait.
func TestSwitchTellsBeforeWaitingForASlot(t *testing.T) {
	sent := make(chan notify.Target, 1)
	cfg := config.Default()
	r := New(cfg, Deps{
		Recorder: events.NewFakeRecorder(10),
		Notifier: notifierFunc(func(_ context.Context, t notify.Target) notify.Result {
			sent <- t
			return notify.Result{Acked: true, Status: "ok", Attempts: 1}
		}),
	})
	for range cap(r.switches) {
		r.switches <- struct{}{} // every slot taken
	}

	g := newGroupState()
	g.reserved = 8
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "b", UID: "uid-b"}, Status: corev1.PodStatus{PodIP: "127.0.0.1"}}
	m := &member{pod: pod, Member: election.Member{Name: "b", UID: "uid-b"}}
	d := election.Decision{Promote: &m.Member, Epoch: 2, Reason: election.Deleting}
	req := reconcile.Request{NamespacedName: types.NamespacedName{Namespace: "ns", Name: "g"}}

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		g.mu.Lock() // as Reconcile holds it
		defer g.mu.Unlock()
		done <- r.switchActive(ctx, req, g, d, map[string]*member{"uid-b": m}, time.Now())
	}()
	select {
	case got := <-sent:
		if got.Pod != "b" || got.Role != cfg.ActiveValue || got.Epoch != 2 {
			t.Errorf("told %+v, want pod b active at epoch 2", got)
		}
	case err := <-done:
		t.Fatalf("switch returned (%v) without telling the new active", err)
	case <-time.After(10 * time.Second):
		t.Fatal("the new active was not told while the switch waited for a slot")
	}
	select {
	case err := <-done:
		t.Fatalf("switch went on without a slot: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("switch ended with %v, want context.Canceled", err)
	}
}
