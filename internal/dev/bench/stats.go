package bench

import (
	"math"
	"slices"
	"time"
)

// Summary is the distribution of one series of durations, in milliseconds.
type Summary struct {
	N   int     `json:"n"`
	P50 float64 `json:"p50Ms"`
	P90 float64 `json:"p90Ms"`
	P99 float64 `json:"p99Ms"`
	Max float64 `json:"maxMs"`
}

// Series is one named set of measured durations.
type Series struct {
	Name    string    `json:"name"`
	Summary Summary   `json:"summary"`
	Ms      []float64 `json:"ms"` // every sample, in the order measured
}

// newSeries summarises samples given in milliseconds.
func newSeries(name string, ms []float64) Series {
	return Series{Name: name, Summary: summarise(ms), Ms: ms}
}

// durationsMs converts durations to milliseconds.
func durationsMs(ds []time.Duration) []float64 {
	out := make([]float64, len(ds))
	for i, d := range ds {
		out[i] = ms(d)
	}
	return out
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// summarise computes nearest-rank percentiles: the p-th percentile is the
// smallest sample with at least p% of the samples at or below it, so p99 of
// 100 samples is the second largest and never an interpolated value.
func summarise(ms []float64) Summary {
	if len(ms) == 0 {
		return Summary{}
	}
	s := slices.Clone(ms)
	slices.Sort(s)
	return Summary{N: len(s), P50: percentile(s, 50), P90: percentile(s, 90), P99: percentile(s, 99), Max: s[len(s)-1]}
}

// percentile of sorted, nearest-rank.
func percentile(sorted []float64, p float64) float64 {
	if len(sorted) == 0 {
		return math.NaN()
	}
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	return sorted[min(max(rank, 1), len(sorted))-1]
}
