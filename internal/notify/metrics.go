package notify

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hapod/hapod/internal/wire"
)

// Values of the reason label of hapod_notify_malformed_acks_total.
const (
	reasonOversized = "oversized"
	reasonVersion   = "version"
	reasonMalformed = "malformed"
	reasonNotAck    = "not-ack"
)

// Values of the reason label of hapod_notify_refused_acks_total: acks
// that decoded but were not believed.
const (
	refusedUnauthenticated = "unauthenticated"
	refusedUnknownKey      = "unknown-key"
	refusedBadMAC          = "bad-mac"
	refusedExpired         = "expired"
	refusedReplayed        = "replayed"
	refusedWrongSource     = "wrong-source"
)

func refusal(err error) string {
	switch {
	case errors.Is(err, wire.ErrUnauthenticated):
		return refusedUnauthenticated
	case errors.Is(err, wire.ErrUnknownKey):
		return refusedUnknownKey
	case errors.Is(err, wire.ErrBadMAC):
		return refusedBadMAC
	case errors.Is(err, wire.ErrExpired):
		return refusedExpired
	default:
		return refusedReplayed
	}
}

func reason(err error) string {
	switch {
	case errors.Is(err, wire.ErrOversized):
		return reasonOversized
	case errors.Is(err, wire.ErrVersion):
		return reasonVersion
	default:
		return reasonMalformed
	}
}

type metrics struct {
	sends, retries, deferred, timeouts, canceled, sendErrors, unmatched prometheus.Counter
	acks, malformed, refused                                            *prometheus.CounterVec
	latency                                                             prometheus.Histogram
}

// newMetrics builds the collectors whether or not they are registered, so
// that the hot path never checks.
func newMetrics() *metrics {
	counter := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Namespace: "hapod", Subsystem: "notify", Name: name, Help: help})
	}
	m := &metrics{
		sends:      counter("sends_total", "Role messages handed to Send with a valid target."),
		retries:    counter("retries_total", "Role datagrams resent because no ack had arrived yet."),
		deferred:   counter("deferred_resends_total", "Resends held back because the acks already received had not all been read yet."),
		timeouts:   counter("timeouts_total", "Sends that ended at the deadline without an ack."),
		canceled:   counter("canceled_total", "Sends ended by their context or by Close before an ack."),
		sendErrors: counter("send_errors_total", "Socket writes that failed; the Send keeps retrying."),
		unmatched:  counter("unmatched_acks_total", "Well-formed acks with no waiting Send: late, duplicate, or for a Send that gave up."),
		acks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "hapod", Subsystem: "notify", Name: "acks_total",
			Help: "Acks matched to a waiting Send, by status (retry: a lease grant's first round trip).",
		}, []string{"status"}),
		malformed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "hapod", Subsystem: "notify", Name: "malformed_acks_total",
			Help: "Datagrams received on the notify socket and dropped, by reason.",
		}, []string{"reason"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "hapod", Subsystem: "notify", Name: "refused_acks_total",
			Help: "Acks that decoded but were not believed, by reason: unauthenticated, unknown-key, bad-mac, expired, replayed (with keys), wrong-source (not from the pod's address).",
		}, []string{"reason"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "hapod", Subsystem: "notify", Name: "ack_latency_seconds",
			Help: "Time from the first send of a role message to its ack.",
			// 100us (loopback) to about 3s (the default deadline).
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
		}),
	}
	// Every series exists from the start, so rate() and alerts see zeros
	// rather than absent series.
	for _, s := range []string{wire.StatusOK, wire.StatusStale, wire.StatusWrongPod, wire.StatusRetry} {
		m.acks.WithLabelValues(s)
	}
	for _, r := range []string{reasonOversized, reasonVersion, reasonMalformed, reasonNotAck} {
		m.malformed.WithLabelValues(r)
	}
	for _, r := range []string{refusedUnauthenticated, refusedUnknownKey, refusedBadMAC, refusedExpired, refusedReplayed, refusedWrongSource} {
		m.refused.WithLabelValues(r)
	}
	return m
}

// register registers all collectors or, on error, none: a failed New must
// not leave half its metrics behind to collide with a retry.
func (m *metrics) register(r prometheus.Registerer) error {
	cs := []prometheus.Collector{
		m.sends, m.retries, m.deferred, m.timeouts, m.canceled, m.sendErrors, m.unmatched,
		m.acks, m.malformed, m.refused, m.latency,
	}
	for i, c := range cs {
		if err := r.Register(c); err != nil {
			for _, done := range cs[:i] {
				r.Unregister(done)
			}
			return err
		}
	}
	return nil
}
