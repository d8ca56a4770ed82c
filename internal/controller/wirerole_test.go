package controller

import (
	"context"
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
	"github.com/hapod/hapod/internal/wire"
)

// The role label's values are the user's (-active-value, -standby-value);
// the wire's are fixed. A controller run with other label values once put
// the label value on the wire, which every listener refused as malformed.
func TestWireRoleWhateverTheLabelValues(t *testing.T) {
	cfg := config.Default()
	cfg.ActiveValue, cfg.StandbyValue = "primary", "replica"
	sent := make(chan notify.Target, 2)
	r := New(cfg, Deps{
		Recorder: events.NewFakeRecorder(10),
		Notifier: notifierFunc(func(_ context.Context, t notify.Target) notify.Result {
			sent <- t
			return notify.Result{Acked: true, Status: wire.StatusOK, Attempts: 1}
		}),
	})
	g := newGroupState()
	req := reconcile.Request{NamespacedName: types.NamespacedName{Namespace: "ns", Name: "g"}}
	for _, tc := range []struct{ label, want string }{{"primary", wire.RoleActive}, {"replica", wire.RoleStandby}} {
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "p-" + tc.label, UID: types.UID("uid-" + tc.label)},
			Status: corev1.PodStatus{PodIP: "127.0.0.1"}}
		m := &member{pod: pod, Member: election.Member{Name: pod.Name, UID: string(pod.UID), Role: tc.label}}
		g.mu.Lock()
		r.startNotify(t.Context(), req, g, m, tc.label, 3, nil)
		g.mu.Unlock()
		select {
		case got := <-sent:
			if got.Role != tc.want {
				t.Errorf("label %q went on the wire as %q, want %q", tc.label, got.Role, tc.want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("label %q: nothing sent", tc.label)
		}
	}
}
