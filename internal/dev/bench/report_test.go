package bench

import (
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
