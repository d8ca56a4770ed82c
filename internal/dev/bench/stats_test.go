package bench

import (
	"math"
	"testing"
)

func TestSummarise(t *testing.T) {
	hundred := make([]float64, 100)
	for i := range hundred {
		hundred[i] = float64(100 - i) // 100..1, unsorted
	}
	for _, tc := range []struct {
		name string
		in   []float64
		want Summary
	}{
		// No samples: a zero summary, not NaN, so JSON stays valid.
		{"empty", nil, Summary{}},
		// One sample is every percentile.
		{"one", []float64{7}, Summary{N: 1, P50: 7, P90: 7, P99: 7, Max: 7}},
		// Nearest rank: p99 of 100 samples is the 99th smallest.
		{"hundred", hundred, Summary{N: 100, P50: 50, P90: 90, P99: 99, Max: 100}},
		// Small sets round the rank up: p50 of 4 is the 2nd, p90 the 4th.
		{"four", []float64{4, 1, 3, 2}, Summary{N: 4, P50: 2, P90: 4, P99: 4, Max: 4}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := summarise(tc.in); got != tc.want {
				t.Errorf("summarise(%v) = %+v, want %+v", tc.in, got, tc.want)
			}
		})
	}
}

func TestPercentileEmpty(t *testing.T) {
	if p := percentile(nil, 50); !math.IsNaN(p) {
		t.Errorf("percentile(nil) = %v, want NaN", p)
	}
}
