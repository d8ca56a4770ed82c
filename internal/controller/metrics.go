package controller

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the controller's Prometheus series.
type Metrics struct {
	Promotions        *prometheus.CounterVec
	FailoverSeconds   *prometheus.HistogramVec
	CriticalDeletions prometheus.Counter
	NoStandby         prometheus.Counter
	Notifications     *prometheus.CounterVec
	Demotions         prometheus.Counter
	// StatusWrites counts HAGroup status writes (hagroup.go).
	StatusWrites prometheus.Counter
	// EventsHeld counts promotion Events held back for a summary
	// (eventbudget.go).
	EventsHeld *prometheus.CounterVec
	// The role lease (lease.go).
	LeaseRenewals *prometheus.CounterVec
	LeaseLapses   *prometheus.CounterVec
	LeaseWait     prometheus.Histogram
	LeasesRenewed prometheus.Gauge
}

// NewMetrics creates the series and registers them on reg (nil: not
// registered, for tests that build several controllers in one process).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Promotions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hapod_failovers_total",
			Help: "Promotions of a pod to active, by reason (Initial for a group that had no active).",
		}, []string{"reason"}),
		FailoverSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "hapod_failover_duration_seconds",
			Help: "Time from the trigger's watch event to the new active's label committed (stage=label) and to the app's ack (stage=ack).",
			// 0.25 ms .. ~8 s: loopback failovers take milliseconds, mass
			// failovers of thousands of groups up to seconds.
			Buckets: prometheus.ExponentialBuckets(0.00025, 2, 16),
		}, []string{"stage"}),
		CriticalDeletions: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hapod_critical_pod_deletions_total",
			Help: "Pods deleted because a critical container died.",
		}),
		NoStandby: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hapod_no_standby_total",
			Help: "Times a group needed an active pod and none was eligible.",
		}),
		Notifications: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hapod_role_notifications_total",
			Help: "Role notifications finished, by role and result (ok, stale, wrong-pod, timeout).",
		}, []string{"role", "result"}),
		Demotions: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hapod_demotions_total",
			Help: "Pods whose active label was removed.",
		}),
		EventsHeld: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hapod_promotion_events_held_total",
			Help: "Promotion Events not written one by one under a mass failover, summarised instead (PromotionsSummarized), by the Event's reason.",
		}, []string{"reason"}),
		StatusWrites: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hapod_status_writes_total",
			Help: "HAGroup status writes (coalesced, after the switch).",
		}),
	}
	m.addLease()
	if reg != nil {
		reg.MustRegister(m.Promotions, m.FailoverSeconds, m.CriticalDeletions, m.NoStandby, m.Notifications, m.Demotions, m.StatusWrites, m.EventsHeld,
			m.LeaseRenewals, m.LeaseLapses, m.LeaseWait, m.LeasesRenewed)
	}
	return m
}
