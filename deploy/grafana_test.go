package deploy_test

import (
	"encoding/json"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hapod/hapod/internal/controller"
	"github.com/hapod/hapod/internal/notify"
)

// seriesRegisterer records the name and labels of every series registered
// on it, from the collectors' descriptions: a vector without children yet
// has no samples to gather, but it has a description.
type seriesRegisterer struct{ labels map[string][]string }

var descRE = regexp.MustCompile(`fqName: "([^"]+)".*variableLabels: \{([^}]*)\}`)

func (s *seriesRegisterer) Register(c prometheus.Collector) error {
	ch := make(chan *prometheus.Desc, 16)
	go func() { c.Describe(ch); close(ch) }()
	for d := range ch {
		m := descRE.FindStringSubmatch(d.String())
		if m == nil {
			continue
		}
		var ls []string
		for _, l := range strings.Split(m[2], ",") {
			if l = strings.TrimSpace(l); l != "" {
				ls = append(ls, l)
			}
		}
		s.labels[m[1]] = ls
	}
	return nil
}
func (s *seriesRegisterer) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		_ = s.Register(c)
	}
}
func (s *seriesRegisterer) Unregister(prometheus.Collector) bool { return false }

func registered(s *seriesRegisterer, name string) bool { _, ok := s.labels[name]; return ok }

var (
	metricRE = regexp.MustCompile(`\bhapod_[a-z_]+`)
	byRE     = regexp.MustCompile(`\bby \(([^)]*)\)`)
	legendRE = regexp.MustCompile(`\{\{(\w+)\}\}`)
)

// TestGrafanaDashboard checks deploy/grafana/hapod.json against the series
// the controller registers: every metric it queries exists, and every label
// it groups or names a legend by is one of that metric's labels (or le, for
// a histogram's buckets).
func TestGrafanaDashboard(t *testing.T) {
	reg := &seriesRegisterer{labels: map[string][]string{}}
	controller.NewMetrics(reg)
	n, err := notify.New(notify.Config{ListenAddr: "127.0.0.1:0", Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = n.Close() }()

	data, err := os.ReadFile("grafana/hapod.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Title  string
		Panels []struct {
			Title   string
			Targets []struct{ Expr, LegendFormat string }
		}
	}
	if err := json.Unmarshal(data, &dash); err != nil {
		t.Fatalf("hapod.json: %v", err)
	}
	if dash.Title == "" || len(dash.Panels) == 0 {
		t.Fatal("hapod.json: no title or no panels")
	}
	for _, p := range dash.Panels {
		for _, q := range p.Targets {
			metrics := metricRE.FindAllString(q.Expr, -1)
			if len(metrics) == 0 {
				t.Errorf("panel %q: %q queries no hapod metric", p.Title, q.Expr)
			}
			var allowed []string
			for _, m := range metrics {
				base := m
				for _, suffix := range []string{"_bucket", "_sum", "_count"} {
					if b, ok := strings.CutSuffix(m, suffix); ok && registered(reg, b) {
						base = b
						allowed = append(allowed, "le")
					}
				}
				ls, ok := reg.labels[base]
				if !ok {
					t.Errorf("panel %q: metric %s is not one the controller registers", p.Title, m)
				}
				allowed = append(allowed, ls...)
			}
			var used []string
			for _, g := range byRE.FindAllStringSubmatch(q.Expr, -1) {
				for _, l := range strings.Split(g[1], ",") {
					used = append(used, strings.TrimSpace(l))
				}
			}
			for _, g := range legendRE.FindAllStringSubmatch(q.LegendFormat, -1) {
				used = append(used, g[1])
			}
			for _, l := range used {
				if !slices.Contains(allowed, l) {
					t.Errorf("panel %q: label %q is not one of %v's (%v)", p.Title, l, metrics, allowed)
				}
			}
		}
	}
}
