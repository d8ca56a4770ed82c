package controller

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/events"
)

// A mass failover's promotions write at most the burst of Events one by
// one; the rest are counted, and one summary per namespace says how many
// and why.
func TestPromotionEventsSummarised(t *testing.T) {
	rec := events.NewFakeRecorder(1000)
	held := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "held"}, []string{"reason"})
	p := newPromotionEvents(rec, held)
	now := time.Now()
	const n = 400
	for i := range n {
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: []string{"a", "b"}[i%2]}}
		reason := "NodeNotReady"
		if i == 0 {
			reason = "PodDeleting"
		}
		p.record(pod, now, reason, corev1.EventTypeNormal, ReasonPromoted, "promoted %d", i)
	}
	one := len(rec.Events)
	heldN := int(testutil.ToFloat64(held.WithLabelValues(ReasonPromoted)))
	if one+heldN != n || one < promotionEventBurst || one >= n/2 {
		t.Fatalf("%d Events written and %d held of %d, want about the burst (%d) written", one, heldN, n, promotionEventBurst)
	}
	p.flush()
	var summaries []string
	for len(rec.Events) > 0 {
		e := <-rec.Events
		if strings.Contains(e, ReasonPromotionsSummarized) {
			summaries = append(summaries, e)
		}
	}
	if len(summaries) != 2 {
		t.Fatalf("%d summaries, want one per namespace: %q", len(summaries), summaries)
	}
	for _, s := range summaries {
		if !strings.Contains(s, "NodeNotReady") || !strings.Contains(s, "promotions in this namespace") {
			t.Errorf("summary %q lacks the count by reason", s)
		}
	}
	// Nothing held, nothing summarised.
	p.flush()
	if len(rec.Events) != 0 {
		t.Errorf("an empty flush wrote %d Events", len(rec.Events))
	}
}

func TestSummarize(t *testing.T) {
	got := summarize(map[string]int{"PodDeleting": 2, "NodeNotReady": 998, "Initial": 2})
	if want := "NodeNotReady 998, Initial 2, PodDeleting 2"; got != want {
		t.Errorf("summarize = %q, want %q", got, want)
	}
}
