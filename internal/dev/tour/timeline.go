package tour

import (
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Timeline is what happened in one scene, in milliseconds from its trigger.
type Timeline struct {
	Trigger time.Time
	Entries []Entry
	// Notes are printed after the entries: what has no time, or explains.
	Notes []string
}

// Entry is one line of a timeline.
type Entry struct {
	At   time.Time
	What string
}

// Add records what happened at at; a zero at (something that did not happen, or was
// not seen) adds nothing.
func (t *Timeline) Add(at time.Time, format string, args ...any) {
	if at.IsZero() {
		return
	}
	t.Entries = append(t.Entries, Entry{At: at, What: fmt.Sprintf(format, args...)})
}

// Note adds a line without a time.
func (t *Timeline) Note(format string, args ...any) {
	t.Notes = append(t.Notes, fmt.Sprintf(format, args...))
}

// Lines renders the timeline: entries in time order (ties keep the order they were
// added in), each with its offset from the trigger, then the notes.
func (t *Timeline) Lines() []string {
	es := slices.Clone(t.Entries)
	slices.SortStableFunc(es, func(a, b Entry) int { return a.At.Compare(b.At) })
	lines := make([]string, 0, len(es)+len(t.Notes))
	width := 0
	offs := make([]string, len(es))
	for i, e := range es {
		offs[i] = formatOffset(e.At.Sub(t.Trigger))
		width = max(width, len(offs[i]))
	}
	for i, e := range es {
		lines = append(lines, fmt.Sprintf("%*s  %s", width, offs[i], e.What))
	}
	for _, n := range t.Notes {
		lines = append(lines, strings.Repeat(" ", width)+"  "+n)
	}
	return lines
}

// formatOffset renders a duration as signed milliseconds with one decimal: "+12.3 ms".
func formatOffset(d time.Duration) string {
	ms := math.Round(float64(d)/float64(time.Millisecond)*10) / 10
	if ms == 0 {
		ms = 0 // no "-0.0"
	}
	s := strconv.FormatFloat(ms, 'f', 1, 64)
	if ms >= 0 {
		s = "+" + s
	}
	return s + " ms"
}

// MsSince is to - from in milliseconds, or NaN when either is unknown (zero).
func MsSince(from, to time.Time) float64 {
	if from.IsZero() || to.IsZero() {
		return math.NaN()
	}
	return float64(to.Sub(from)) / float64(time.Millisecond)
}

// FormatMs renders milliseconds for a summary: "-" when unknown.
func FormatMs(ms float64) string {
	if math.IsNaN(ms) {
		return "-"
	}
	return strconv.FormatFloat(ms, 'f', 1, 64)
}
