package bench

import (
	"maps"
	"strings"
	"testing"
	"time"
)

func TestFmtMs(t *testing.T) {
	for _, tc := range []struct {
		in   float64
		want string
	}{
		{0.123, "0.12 ms"}, // below 10 ms: two decimals
		{12.34, "12.3 ms"}, // below 100 ms: one
		{123.4, "123 ms"},  // below a second: none
		{15234, "15.23 s"}, // seconds from there on
		{999.6, "1000 ms"}, // rounding does not switch the unit
		{1000, "1.00 s"},   // exactly a second
	} {
		if got := fmtMs(tc.in); got != tc.want {
			t.Errorf("fmtMs(%v) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// TestReportFromResults renders a small synthetic result and checks the
// parts a reader relies on: the ratio to hapod, the tables, the chart.
func TestReportFromResults(t *testing.T) {
	r := &Results{Started: time.Date(2026, 1, 2, 3, 4, 0, 0, time.UTC), Mode: "short", Settings: Settings{Workers: 8, Mass: MassNode}}
	for _, trig := range []string{TriggerDelete, TriggerCritical} {
		tr := TriggerResult{Trigger: trig}
		for _, st := range OneGroupStages {
			tr.Stages = append(tr.Stages, newSeries(st, []float64{2, 4, 6}))
		}
		r.OneGroup = append(r.OneGroup, tr)
	}
	r.Baselines = []Baseline{{System: "slow <thing>", Measure: "x", Series: newSeries("s", []float64{400, 400})}}
	r.Baselines[0].Ratio = r.Baselines[0].Series.Summary.P50 / r.labelMedian()
	r.Scale = []ScaleResult{{Groups: 10, Completed: 10, Ack: newSeries("ack", []float64{1, 2}), Labelled: newSeries("l", []float64{3, 4}),
		APIRequests: map[string]float64{"PATCH": 20, "POST": 20}, APIPerGroup: 4}}

	var md strings.Builder
	r.Markdown(&md)
	for _, want := range []string{
		"| active pod deleted | label committed | 3 | 4.00 ms | 6.00 ms | 6.00 ms | 6.00 ms |",
		"| slow <thing> | x | 2 | 400 ms | 400 ms | 400 ms | 400 ms | 100× |",
		"| 10 | 10 | 1.00 ms / 2.00 ms / 2.00 ms | 3.00 ms / 4.00 ms / 4.00 ms | 4.0 (PATCH 20, POST 20) |",
	} {
		if !strings.Contains(md.String(), want) {
			t.Errorf("Markdown lacks %q:\n%s", want, md.String())
		}
	}
	var svg strings.Builder
	r.CDF(&svg)
	for _, want := range []string{"<svg ", "slow &lt;thing&gt;", "<polyline", "</svg>"} {
		if !strings.Contains(svg.String(), want) {
			t.Errorf("SVG lacks %q", want)
		}
	}
}

// TestOverlaps counts pairs of different apps' active intervals that
// overlap; an app's own intervals, and intervals that only touch, do not.
func TestOverlaps(t *testing.T) {
	at := func(ms int) time.Time { return time.Unix(0, 0).Add(time.Duration(ms) * time.Millisecond) }
	iv := func(pod string, from, to int) interval { return interval{pod: pod, from: at(from), to: at(to)} }
	for _, tc := range []struct {
		name string
		ivs  []interval
		want int
	}{
		{"none", nil, 0},
		{"one after the other", []interval{iv("a", 0, 10), iv("b", 10, 20), iv("c", 25, 30)}, 0},
		{"the same app twice", []interval{iv("a", 0, 10), iv("a", 5, 20)}, 0},
		{"two at once", []interval{iv("b", 5, 20), iv("a", 0, 10)}, 1},
		{"one spanning two", []interval{iv("a", 0, 100), iv("b", 10, 20), iv("c", 30, 40)}, 2},
	} {
		if got := overlaps(tc.ivs); got != tc.want {
			t.Errorf("%s: overlaps = %d, want %d", tc.name, got, tc.want)
		}
	}
}

// TestParseCounter sums one metric's samples by one label's value.
func TestParseCounter(t *testing.T) {
	page := `# HELP hapod_lease_renewals_total x
# TYPE hapod_lease_renewals_total counter
hapod_lease_renewals_total{result="acked"} 10
hapod_lease_renewals_total{result="sent"} 12
hapod_lease_renewals_total_other{result="sent"} 99
rest_client_requests_total{code="200",host="h",method="PATCH"} 3
rest_client_requests_total{code="409",host="h",method="PATCH"} 1
hapod_leases_renewed 7
`
	for _, tc := range []struct {
		name, label string
		want        map[string]float64
	}{
		{"hapod_lease_renewals_total", "result", map[string]float64{"acked": 10, "sent": 12}},
		{"rest_client_requests_total", "method", map[string]float64{"PATCH": 4}},
		{"hapod_leases_renewed", "", map[string]float64{"": 7}},
	} {
		got, err := parseCounter(strings.NewReader(page), tc.name, tc.label)
		if err != nil || !maps.Equal(got, tc.want) {
			t.Errorf("parseCounter(%s, %s) = %v, %v; want %v", tc.name, tc.label, got, err, tc.want)
		}
	}
}

// TestSoakVerdict: failovers and lapsed leases count, fences do not.
func TestSoakVerdict(t *testing.T) {
	s := SoakResult{Groups: 3, Seconds: 600, Failovers: 3, Fenced: 2, Changes: 4}
	s.Lapses = 5
	if n := s.FalseFailovers(); n != 8 {
		t.Errorf("FalseFailovers = %d, want 8 (failovers and lapses; fences are no failover)", n)
	}
	var md strings.Builder
	(&Results{Soak: &s}).Markdown(&md)
	if !strings.Contains(md.String(), "**8 false failovers**") {
		t.Errorf("the report does not say so:\n%s", md.String())
	}
}
