package realtour

import (
	"fmt"
	"io"
	"math"
	"slices"
	"text/tabwriter"

	"github.com/hapod/hapod/internal/dev/tour"
)

// Result is the outcome of a tour.
type Result struct {
	Scenes []*Scene
	// LogDir: the controller's log and records, and nft's output.
	LogDir string
}

// OK reports whether every scene ran and behaved as expected.
func (r *Result) OK() bool {
	return len(r.Scenes) > 0 && !slices.ContainsFunc(r.Scenes, func(s *Scene) bool { return !s.OK() })
}

// Scene is the outcome of one scene.
type Scene struct {
	ID, Title string
	// Ran is false for a scene skipped because an earlier one failed or the
	// tour was interrupted.
	Ran bool
	// WantFailover is what the scene expects; Failover what happened: another
	// pod was labelled active.
	WantFailover, Failover bool
	// Reason is the controller's reason for the promotion (its record).
	Reason string
	// Problems lists every expectation that was not met.
	Problems []string

	// Milliseconds from the trigger (NaN when not applicable or not seen):
	// the kubelet's report of the death in the API, the new active's app
	// holding the role (its own record), its label on the tour's watch, the
	// EndpointSlice listing it alone, kube-proxy's rule pointing the
	// Service at it, and the first request through the ClusterIP it
	// answered.
	TerminatedMs, AppMs, LabelMs, SliceMs, RuleMs, AnswerMs float64
	// GapMs, for a planned switchover: from the old app's record of
	// standby to the new one's of active, the time no app held the role.
	GapMs float64
	// Failed counts the requests through the ClusterIP that got no 200 in
	// the scene; Requests all of them.
	Failed, Requests int

	Timeline tour.Timeline
}

// OK reports whether the scene ran and behaved as expected.
func (s *Scene) OK() bool { return s.Ran && len(s.Problems) == 0 }

func (s *Scene) problem(format string, args ...any) {
	s.Problems = append(s.Problems, fmt.Sprintf(format, args...))
}

func newScene(id, title string, wantFailover bool) *Scene {
	nan := math.NaN()
	return &Scene{ID: id, Title: title, WantFailover: wantFailover,
		TerminatedMs: nan, AppMs: nan, LabelMs: nan, SliceMs: nan, RuleMs: nan, AnswerMs: nan, GapMs: nan}
}

// WriteSummary prints one row per scene.
func WriteSummary(w io.Writer, scenes []*Scene) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "scene\tfailover\tterminated\tapp active\tlabel\tslice\tkube-proxy rule\tfirst answer\tno app active\trequests failed\tresult")
	for _, s := range scenes {
		fo, res := "no", "ok"
		if s.Failover {
			fo = "yes (" + s.Reason + ")"
		}
		switch {
		case !s.Ran:
			fo, res = "-", "skipped"
		case len(s.Problems) > 0:
			res = "UNEXPECTED"
		}
		fmt.Fprintf(tw, "%s %s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d/%d\t%s\n", s.ID, s.Title, fo,
			tour.FormatMs(s.TerminatedMs), tour.FormatMs(s.AppMs), tour.FormatMs(s.LabelMs), tour.FormatMs(s.SliceMs),
			tour.FormatMs(s.RuleMs), tour.FormatMs(s.AnswerMs), tour.FormatMs(s.GapMs), s.Failed, s.Requests, res)
	}
	return tw.Flush()
}

// WriteScene prints a scene's heading, timeline and verdict.
func WriteScene(w io.Writer, s *Scene) {
	fmt.Fprintf(w, "\n== scene %s: %s ==\n", s.ID, s.Title)
	for _, l := range s.Timeline.Lines() {
		fmt.Fprintln(w, "  "+l)
	}
	if len(s.Problems) == 0 {
		fmt.Fprintln(w, "  -> as expected")
		return
	}
	for _, p := range s.Problems {
		fmt.Fprintln(w, "  -> UNEXPECTED: "+p)
	}
}
