package controller_test

import (
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"

	"github.com/hapod/hapod/internal/controller"
	"github.com/hapod/hapod/internal/dev/clustertest"
	"github.com/hapod/hapod/pkg/role"
)

// BenchmarkFailover measures, over b.N failovers of one group on the local
// control plane, the time from the trigger being committed in the API to
// (a) the new active's label arriving on a watch and (b) the new active's
// app accepting the role message (it acks at once). Triggers alternate
// between deleting the active and writing its critical container as
// terminated. The baseline, measured in the same run, is the floor any
// controller pays: a label patch by the benchmark itself, seen on the same
// watch.
//
//	go test -run '^$' -bench Failover -benchtime 100x ./internal/controller/
func BenchmarkFailover(b *testing.B) {
	e := newEnv(b)
	e.replicaSet("hapod", 2)
	pods := e.runningPods("hapod", 2)
	ls := map[string]*role.Listener{}
	for _, p := range pods {
		ls[p.Name] = e.listen(p)
	}
	e.startController()
	act := e.active("hapod")
	waitRole(e.t, ls[act.Name], role.Active, epochOf(act))

	w, err := e.cs.CoreV1().Pods(e.ns).Watch(b.Context(), metav1.ListOptions{LabelSelector: "app=hapod"})
	if err != nil {
		b.Fatal(err)
	}
	defer w.Stop()
	events := w.ResultChan()

	var label, ack, base []time.Duration
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		// Baseline: our own label write, seen on the watch.
		standby := otherRunning(e, act.Name)
		t0 := time.Now()
		patch := fmt.Sprintf(`{"metadata":{"annotations":{"bench":"%d"}}}`, i)
		if _, err := e.cs.CoreV1().Pods(e.ns).Patch(b.Context(), standby.Name, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
			b.Fatal(err)
		}
		waitWatch(b, events, func(p *corev1.Pod) bool { return p.Name == standby.Name && p.Annotations["bench"] == fmt.Sprint(i) })
		base = append(base, time.Since(t0))

		// The trigger, then the new active's label on the watch.
		if i%2 == 0 {
			if err := e.cs.CoreV1().Pods(e.ns).Delete(b.Context(), act.Name, metav1.DeleteOptions{}); err != nil {
				b.Fatal(err)
			}
		} else {
			clustertest.SetContainerTerminated(e.t, e.ns, act.Name, "app", 137, "OOMKilled")
		}
		t0 = time.Now()
		var next *corev1.Pod
		waitWatch(b, events, func(p *corev1.Pod) bool {
			if p.Name != act.Name && p.Labels["role"] == "active" && p.DeletionTimestamp == nil {
				next = p
				return true
			}
			return false
		})
		label = append(label, time.Since(t0))
		l := ls[next.Name]
		if l == nil {
			b.Fatalf("promoted %s, which has no listener", next.Name)
		}
		st := waitRole(e.t, l, role.Active, epochOf(*next))
		ack = append(ack, max(st.Changed.Sub(t0), 0))

		// Settle: the replacement Running with a listener, as a new standby.
		// kwok reuses the old pod's IP for its replacement.
		ls[act.Name].Close()
		delete(ls, act.Name)
		for _, p := range e.runningPods("hapod", 2) {
			if ls[p.Name] == nil {
				ls[p.Name] = e.listen(p)
			}
		}
		act = *next
	}
	b.StopTimer()
	report(b, "label", label)
	report(b, "ack", ack)
	report(b, "baseline", base)
}

func otherRunning(e *env, not string) corev1.Pod {
	for _, p := range e.runningPods("hapod", 2) {
		if p.Name != not {
			return p
		}
	}
	e.t.Fatalf("no pod other than %s", not)
	return corev1.Pod{}
}

func waitWatch(b *testing.B, ch <-chan watch.Event, match func(*corev1.Pod) bool) {
	b.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case ev, ok := <-ch:
			if !ok {
				b.Fatal("watch closed")
			}
			if p, isPod := ev.Object.(*corev1.Pod); isPod && ev.Type != watch.Deleted && match(p) {
				return
			}
		case <-timeout:
			b.Fatal("no matching watch event within 10s")
		}
	}
}

// report is the internal test package's (bench_fake_test.go): one way to
// report a latency series for both benchmarks.
var report = controller.ReportLatencies
