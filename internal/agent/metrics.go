package agent

import "github.com/prometheus/client_golang/prometheus"

// metrics are the agent's own; a private registry keeps tests independent.
type metrics struct {
	reg        *prometheus.Registry
	changes    prometheus.Counter
	runs       *prometheus.CounterVec
	runSeconds prometheus.Histogram
	fileErrors prometheus.Counter
	role       *prometheus.GaugeVec
}

func newMetrics() *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		changes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hapod_agent_changes_total", Help: "Role changes the listener delivered (lapses included).",
		}),
		runs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hapod_agent_on_change_runs_total", Help: "On-change command runs by result: ok, error, timeout.",
		}, []string{"result"}),
		runSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "hapod_agent_on_change_duration_seconds", Help: "How long on-change command runs took.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 10),
		}),
		fileErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hapod_agent_role_file_errors_total", Help: "Failed writes of the role file.",
		}),
		role: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "hapod_agent_role", Help: "1 for the role the agent holds (active, standby, unknown), 0 for the others; fenced is 1 while fenced.",
		}, []string{"role"}),
	}
	for _, r := range []string{"ok", "error", "timeout"} {
		m.runs.WithLabelValues(r)
	}
	m.reg.MustRegister(m.changes, m.runs, m.runSeconds, m.fileErrors, m.role)
	return m
}

func (m *metrics) setRole(v view) {
	for _, r := range []string{"active", "standby", "unknown"} {
		g := 0.0
		if r == v.Role {
			g = 1
		}
		m.role.WithLabelValues(r).Set(g)
	}
	f := 0.0
	if v.Fenced {
		f = 1
	}
	m.role.WithLabelValues("fenced").Set(f)
}
