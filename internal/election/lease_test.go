package election

import (
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
)

func TestWithLease(t *testing.T) {
	lapsed := Lease{Lapsed: true}
	tests := []struct {
		name   string
		s      Status
		active bool
		lease  Lease
		want   Status
	}{
		{"healthy active, lease fine", ok, true, Lease{}, ok},
		// The controller's own failure signal, before the API shows anything.
		{"healthy active, lease lapsed", ok, true, lapsed, Status{Fault: LeaseLapsed}},
		// The API's reason is the more fundamental one and is kept.
		{"critical died and lapsed", crashed, true, lapsed, crashed},
		{"deleting and lapsed", deleting, true, lapsed, deleting},
		// A standby holds no lease: a pod demoted after a lapse may be
		// promoted again (with a fresh grant its app must answer).
		{"standby after a lapse", ok, false, lapsed, ok},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := WithLease(tc.s, tc.active, tc.lease)
			if got.Fault != tc.want.Fault || got.Eligible != tc.want.Eligible || got.Doomed != tc.want.Doomed {
				t.Errorf("WithLease = %+v, want %+v", got, tc.want)
			}
		})
	}
}

// A lapsed lease fails the group over like any fault of the active.
func TestDecideLeaseLapsed(t *testing.T) {
	a := member("a", 1, "active", 3, WithLease(ok, true, Lease{Lapsed: true}))
	b := member("b", 2, "standby", 0, ok)
	d := Decide(Input{Members: []Member{a, b}, Roles: roles, Epoch: 3, Now: t0})
	if name(d.Promote) != "b" || d.Epoch != 4 || d.Reason != LeaseLapsed || len(d.Demote) != 1 || d.Demote[0].Reason != LeaseLapsed {
		t.Fatalf("decision %+v", d)
	}
	// Alone, the lapsed pod is demoted and not promoted again at once: it
	// is not eligible while it is active and lapsed.
	d = Decide(Input{Members: []Member{a}, Roles: roles, Epoch: 3, Now: t0})
	if d.Promote != nil || !d.NoCandidate || len(d.Demote) != 1 {
		t.Fatalf("alone: %+v", d)
	}
}

func TestLeaseBound(t *testing.T) {
	at := t0
	tests := []struct {
		name     string
		echoedAt time.Time
		ttl      time.Duration
		drift    float64
		margin   time.Duration
		want     time.Time
	}{
		{"defaults", at, 150 * time.Millisecond, 0.01, 10 * time.Millisecond, at.Add(151500*time.Microsecond + 10*time.Millisecond)},
		{"no drift, no margin", at, time.Second, 0, 0, at.Add(time.Second)},
		// Nothing echoed, nothing granted: no bound at all.
		{"never granted", time.Time{}, time.Second, 0.01, time.Second, time.Time{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := LeaseBound(tc.echoedAt, tc.ttl, tc.drift, tc.margin); !got.Equal(tc.want) {
				t.Errorf("LeaseBound = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestGrantWait(t *testing.T) {
	now := t0
	later := func(d time.Duration) time.Time { return now.Add(d) }
	live := Holder{Bound: later(100 * time.Millisecond), Honoured: true}
	tests := []struct {
		name    string
		start   time.Time
		holders []Holder
		wait    time.Duration
		blocked bool
	}{
		{"nobody", time.Time{}, nil, 0, false},
		// The old active's lease has not certainly run out: wait for it.
		{"live lease", time.Time{}, []Holder{live}, 100 * time.Millisecond, false},
		{"lapsed lease", time.Time{}, []Holder{{Bound: later(-time.Millisecond), Honoured: true}}, 0, false},
		// Its app acked standby: fenced, no wait (the fast path of a
		// failover whose old active is still alive).
		{"fenced", time.Time{}, []Holder{{Bound: live.Bound, Honoured: true, Fenced: true}}, 0, false},
		// Its critical container died: the API proves it.
		{"proven down", time.Time{}, []Holder{{Bound: live.Bound, Honoured: true, Down: true}}, 0, false},
		// Force-deleted: its process may run on; wait out its lease.
		{"gone", time.Time{}, []Holder{{Bound: live.Bound, Honoured: true, Gone: true}}, 100 * time.Millisecond, false},
		// Told active but nothing echoed: it cannot hold a lease.
		{"never granted", time.Time{}, []Holder{{Honoured: false}}, 0, false},
		// The longest wait counts.
		{"two holders", time.Time{}, []Holder{live, {Bound: later(300 * time.Millisecond), Honoured: true}}, 300 * time.Millisecond, false},
		// After a restart: what the previous process granted is unknown.
		{"start window", later(160 * time.Millisecond), []Holder{live}, 160 * time.Millisecond, false},
		{"start window over", later(-time.Second), nil, 0, false},
		// A listener that does not enforce the TTL never lapses.
		{"not honoured", time.Time{}, []Holder{{Bound: later(-time.Hour)}}, 0, true},
		{"not honoured, fenced", time.Time{}, []Holder{{Bound: later(-time.Hour), Fenced: true}}, 0, false},
		{"not honoured, down", time.Time{}, []Holder{{Bound: later(-time.Hour), Down: true}}, 0, false},
		{"not honoured, gone", time.Time{}, []Holder{{Bound: later(-time.Hour), Gone: true}}, 0, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			wait, blocked := GrantWait(now, tc.start, tc.holders)
			if wait != tc.wait || blocked != tc.blocked {
				t.Errorf("GrantWait = %v, %v; want %v, %v", wait, blocked, tc.wait, tc.blocked)
			}
		})
	}
}

func TestProvenDown(t *testing.T) {
	tainted := func(effect corev1.TaintEffect) *corev1.Node {
		n := node(corev1.ConditionFalse)
		n.Spec.Taints = []corev1.Taint{{Key: OutOfServiceTaint, Value: "nodeshutdown", Effect: effect}}
		return n
	}
	tests := []struct {
		name string
		s    Status
		node *corev1.Node
		want bool
	}{
		{"healthy", ok, node(corev1.ConditionTrue), false},
		{"failed", Status{Fault: PodFailed}, nil, true},
		{"succeeded", Status{Fault: PodSucceeded}, nil, true},
		{"critical died", crashed, nil, true},
		{"critical died while deleting", Status{Fault: Deleting, Doomed: true}, nil, true},
		// Deleting is a request: the process runs until the kubelet stops it.
		{"deleting", deleting, nil, false},
		// NotReady may be a partition between node and API server.
		{"node not ready", Status{Fault: NodeNotReady}, node(corev1.ConditionUnknown), false},
		{"node out of service", Status{Fault: NodeNotReady}, tainted(corev1.TaintEffectNoExecute), true},
		{"node out of service, NoSchedule", Status{Fault: NodeNotReady}, tainted(corev1.TaintEffectNoSchedule), true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := ProvenDown(tc.s, tc.node); got != tc.want {
				t.Errorf("ProvenDown = %v, want %v", got, tc.want)
			}
		})
	}
}
