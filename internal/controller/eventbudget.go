package controller

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/tools/events"
	"k8s.io/client-go/util/flowcontrol"
)

// promotionEvents bounds the Promoted (and PromotedNotAcked) Events: one
// per failover is right for one group, but a node failure under 1,000
// groups would write 1,000 Events while the same API server commits the
// labels. Past promotionEventQPS (with a burst of promotionEventBurst) a
// promotion's Event is held back and counted; once a second each
// namespace with held promotions gets one summary Event
// (ReasonPromotionsSummarized) naming how many and why. Nothing else is
// lost: the HAGroup status, the failover records and the metrics have
// every promotion.
type promotionEvents struct {
	rec     events.EventRecorder
	limiter flowcontrol.RateLimiter
	held    *prometheus.CounterVec

	mu      sync.Mutex
	pending map[string]*heldPromotions // by namespace
}

type heldPromotions struct {
	n       int
	reasons map[string]int
	last    *corev1.Pod // the summary Event is about the newest
	since   time.Time
}

const (
	promotionEventQPS   = 20
	promotionEventBurst = 50
	// summaryEvery is how often held promotions are summarised.
	summaryEvery = time.Second
)

func newPromotionEvents(rec events.EventRecorder, held *prometheus.CounterVec) *promotionEvents {
	return &promotionEvents{
		rec: rec, held: held,
		limiter: flowcontrol.NewTokenBucketRateLimiter(promotionEventQPS, promotionEventBurst),
		pending: map[string]*heldPromotions{},
	}
}

// record writes a promotion's Event, or holds it back for the summary.
func (p *promotionEvents) record(pod *corev1.Pod, now time.Time, reason string, eventtype, eventReason, note string, args ...any) {
	if p.limiter.TryAccept() {
		p.rec.Eventf(pod, nil, eventtype, eventReason, "Promote", note, args...)
		return
	}
	p.held.WithLabelValues(eventReason).Inc()
	p.mu.Lock()
	defer p.mu.Unlock()
	h := p.pending[pod.Namespace]
	if h == nil {
		h = &heldPromotions{reasons: map[string]int{}, since: now}
		p.pending[pod.Namespace] = h
	}
	h.n++
	h.reasons[reason]++
	h.last = pod
}

// NeedLeaderElection: the Events are the leader's, like the promotions.
func (p *promotionEvents) NeedLeaderElection() bool { return true }

// Start writes the summaries until ctx ends, and once more then.
func (p *promotionEvents) Start(ctx context.Context) error {
	tick := time.NewTicker(summaryEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			p.flush()
			return nil
		case <-tick.C:
			p.flush()
		}
	}
}

// flush writes one summary Event per namespace with held promotions.
func (p *promotionEvents) flush() {
	p.mu.Lock()
	pending := p.pending
	p.pending = map[string]*heldPromotions{}
	p.mu.Unlock()
	for _, h := range pending {
		p.rec.Eventf(h.last, nil, corev1.EventTypeNormal, ReasonPromotionsSummarized, "Promote",
			"%d promotions in this namespace since %s were not reported one by one (Events limited to %d a second under a mass failover): %s; this pod is the last of them. Every promotion is in its HAGroup's status and in hapod_failovers_total",
			h.n, h.since.UTC().Format(time.RFC3339), promotionEventQPS, summarize(h.reasons))
	}
}

// summarize lists counts by reason, largest first: "NodeNotReady 998, PodDeleting 2".
func summarize(reasons map[string]int) string {
	keys := slices.Sorted(maps.Keys(reasons))
	slices.SortStableFunc(keys, func(a, b string) int { return reasons[b] - reasons[a] })
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s %d", k, reasons[k])
	}
	return strings.Join(parts, ", ")
}
