package controller

import (
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/hapod/hapod/pkg/role"
)

// BenchmarkFailoverFakeAPI measures the switch itself, without an API
// server: the fake client answers at once, and both apps are real
// listeners on loopback that stay alive, so every failover must fence the
// old active (tell it standby and wait for its ack) before the new one is
// told. Per failover it reports, from the start of the reconcile: the new
// active's ack ("ack"), the end of the reconcile with both labels written
// ("label"), and how long both apps held active at once ("dual", zero when
// the old one took standby first).
//
//	go test -run '^$' -bench FailoverFakeAPI -benchtime 200x ./internal/controller/
func BenchmarkFailoverFakeAPI(b *testing.B) {
	w := newFakeWorld(b, []string{"a", "b"}, nil)
	w.elect()
	act, next := "a", "b"
	var ack, label, dual []time.Duration
	for b.Loop() {
		setPodReady(b, w, act, false)
		t0 := time.Now()
		if _, err := w.reconcile(); err != nil {
			b.Fatal(err)
		}
		label = append(label, time.Since(t0))
		deadline := time.Now().Add(10 * time.Second)
		for w.apps[next].State().Role != role.Active || w.apps[act].State().Role != role.Standby {
			if time.Now().After(deadline) {
				b.Fatalf("failover %d: %s holds %+v, %s holds %+v; writes %v; events %v", len(label), next, w.apps[next].State(), act, w.apps[act].State(), w.writes.take(), w.events.list())
			}
			time.Sleep(100 * time.Microsecond)
		}
		n, o := w.apps[next].State(), w.apps[act].State()
		ack = append(ack, n.Changed.Sub(t0))
		dual = append(dual, max(o.Changed.Sub(n.Changed), 0))
		setPodReady(b, w, act, true)
		act, next = next, act
	}
	b.StopTimer()
	report(b, "ack", ack)
	report(b, "label", label)
	report(b, "dual", dual)
	w.history.Check(b)
}

// setPodReady sets the pod's Ready condition; not Ready since an hour
// ago is past any grace, so the pod fails over at once.
func setPodReady(b *testing.B, w *fakeWorld, name string, ready bool) {
	b.Helper()
	p := w.pod(name)
	st, since := corev1.ConditionTrue, metav1.Now()
	if !ready {
		st, since = corev1.ConditionFalse, metav1.NewTime(time.Now().Add(-time.Hour))
	}
	p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: st, LastTransitionTime: since}}
	if err := w.c.Status().Update(b.Context(), p); err != nil {
		b.Fatal(err)
	}
}

// ReportLatencies lets the external test package's cluster benchmark
// (bench_test.go) report the same way.
var ReportLatencies = report

// report adds the median and p99 of ds in milliseconds to the benchmark
// line and logs the percentiles.
func report(b *testing.B, name string, ds []time.Duration) {
	if len(ds) == 0 {
		return
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	pct := func(p float64) time.Duration { return s[min(len(s)-1, int(p*float64(len(s))))] }
	b.ReportMetric(float64(pct(0.5))/1e6, name+"-p50-ms")
	b.ReportMetric(float64(pct(0.99))/1e6, name+"-p99-ms")
	b.Logf("%-6s n=%d p50=%v p90=%v p99=%v max=%v", name, len(s), pct(0.5), pct(0.9), pct(0.99), s[len(s)-1])
}
