package tour

import (
	"fmt"
	"io"
	"math"
	"strings"
	"text/tabwriter"
	"time"
)

// Result is the outcome of a tour.
type Result struct {
	Scenes []*Scene
	// LogDir holds the controller's log and one log per pod process.
	LogDir string
}

// OK reports whether every scene ran and behaved as expected.
func (r *Result) OK() bool {
	if len(r.Scenes) == 0 {
		return false
	}
	for _, s := range r.Scenes {
		if !s.OK() {
			return false
		}
	}
	return true
}

// Scene is the outcome of one scene.
type Scene struct {
	ID    string // "a", "b", ...
	Title string
	// Ran is false for a scene skipped because an earlier one failed or the tour was
	// interrupted.
	Ran bool
	// Interrupted: the tour was stopped (Ctrl-C) during the scene.
	Interrupted bool
	// WantFailover is what the scene expects; Failover what happened: a new pod was
	// made active.
	WantFailover bool
	Failover     bool
	// Problems lists every expectation that was not met; empty means the scene behaved.
	Problems []string

	ActiveBefore, ActiveAfter string // pod names ("" when none)
	EpochBefore, EpochAfter   uint64
	Removed                   []string // pods deleted during the scene
	Replacements              []string // pods that came up as standby during the scene

	// Milliseconds from the trigger written (NaN when not applicable or not seen):
	// the new active's label seen on the tour's watch, the app's ack as the controller
	// reports it, the Service's EndpointSlice listing only the new active, and the
	// replacement told it is standby.
	LabelMs, AckMs, SliceMs, StandbyMs float64

	Requests Requests
	Timeline Timeline
}

// OK reports whether the scene ran and behaved as expected.
func (s *Scene) OK() bool { return s.Ran && !s.Interrupted && len(s.Problems) == 0 }

func (s *Scene) problem(format string, args ...any) {
	s.Problems = append(s.Problems, fmt.Sprintf(format, args...))
}

func newScene(id, title string, wantFailover bool) *Scene {
	nan := math.NaN()
	return &Scene{ID: id, Title: title, WantFailover: wantFailover, LabelMs: nan, AckMs: nan, SliceMs: nan, StandbyMs: nan}
}

// Requests counts the load's requests during a scene, by outcome.
type Requests struct {
	OK int
	// NoEndpoint: the Service had no ready endpoint (kube-proxy would reject).
	NoEndpoint int
	// ConnError: the connection failed (nothing listening, reset, timeout).
	ConnError int
	// BadStatus: an answer other than 200, such as a standby's 503.
	BadStatus int
	// FirstFail and LastFail bound the failures (zero without any).
	FirstFail, LastFail time.Time
}

// Failed is every request that did not get a 200.
func (r Requests) Failed() int { return r.NoEndpoint + r.ConnError + r.BadStatus }

// Total is every request sent or attempted.
func (r Requests) Total() int { return r.OK + r.Failed() }

// describe says how many failed and why: "3 failed (2 connection errors, 1 answered
// 503 or other non-200)".
func (r Requests) describe() string {
	if r.Failed() == 0 {
		return fmt.Sprintf("%d requests, all answered 200", r.Total())
	}
	var why []string
	for _, c := range []struct {
		n    int
		what string
	}{{r.NoEndpoint, "no ready endpoint"}, {r.ConnError, "connection error"}, {r.BadStatus, "non-200 answer"}} {
		if c.n > 0 {
			why = append(why, fmt.Sprintf("%d %s", c.n, c.what))
		}
	}
	return fmt.Sprintf("%d requests, %d answered 200, %d failed (%s)", r.Total(), r.OK, r.Failed(), strings.Join(why, ", "))
}

// WriteSummary prints one row per scene.
func WriteSummary(w io.Writer, scenes []*Scene) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "scene\tfailover\tlabel ms\tack ms\tslice ms\tstandby ms\trequests ok/failed\tresult")
	for _, s := range scenes {
		fo, reqs, res := "no", "-", "ok"
		if s.Failover {
			fo = "yes"
		}
		if s.Requests.Total() > 0 {
			reqs = fmt.Sprintf("%d/%d", s.Requests.OK, s.Requests.Failed())
		}
		switch {
		case !s.Ran:
			fo, res = "-", "skipped"
		case s.Interrupted:
			res = "interrupted"
		case len(s.Problems) > 0:
			res = "UNEXPECTED"
		}
		fmt.Fprintf(tw, "%s %s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", s.ID, s.Title, fo,
			FormatMs(s.LabelMs), FormatMs(s.AckMs), FormatMs(s.SliceMs), FormatMs(s.StandbyMs), reqs, res)
	}
	return tw.Flush()
}

// WriteScene prints a scene's heading, timeline, load and verdict.
func WriteScene(w io.Writer, s *Scene) {
	fmt.Fprintf(w, "\n== scene %s: %s ==\n", s.ID, s.Title)
	for _, l := range s.Timeline.Lines() {
		fmt.Fprintln(w, "  "+l)
	}
	if s.Requests.Total() > 0 {
		fmt.Fprintf(w, "  load through the Service: %s", s.Requests.describe())
		if !s.Requests.FirstFail.IsZero() {
			fmt.Fprintf(w, "; failures from %s to %s", formatOffset(s.Requests.FirstFail.Sub(s.Timeline.Trigger)),
				formatOffset(s.Requests.LastFail.Sub(s.Timeline.Trigger)))
		}
		fmt.Fprintln(w)
	}
	if s.Interrupted {
		fmt.Fprintln(w, "  -> interrupted")
		return
	}
	if len(s.Problems) == 0 {
		fmt.Fprintln(w, "  -> as expected")
		return
	}
	for _, p := range s.Problems {
		fmt.Fprintln(w, "  -> UNEXPECTED: "+p)
	}
}
