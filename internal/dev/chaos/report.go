package chaos

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Summary is what a run writes to its results: the report and how the run
// was made.
type Summary struct {
	Seed                    uint64    `json:"seed"`
	Faults                  int       `json:"faults"`
	Groups, Replicas, Nodes int       `json:"-"`
	Setup                   string    `json:"setup"`
	Commit                  string    `json:"commit,omitempty"`
	When                    time.Time `json:"when"`
	Took                    Duration  `json:"took"`
	ControllerExits         int       `json:"controllerExits"`
	Left                    []string  `json:"left"`
	Report                  Report    `json:"report"`
}

// Duration marshals as a string ("1m2.5s").
type Duration time.Duration

// MarshalJSON writes d as time.Duration's String.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// Summarize describes a run's result.
func Summarize(res *Result, o Options, commit string) Summary {
	o.defaults()
	return Summary{
		Seed: o.Seed, Faults: o.Faults, Groups: o.Groups, Replicas: o.Replicas, Nodes: o.Nodes,
		Setup: fmt.Sprintf("%d groups of %d pods on %d kwok nodes, every app a real hapod-demo process (pkg/role, authenticated role messages) behind a UDP relay of its own; two hapod-controller replicas with leader election (3s/2s/250ms) and default role-lease flags, their API traffic through a fault-injecting proxy; bound for one acked active after each fault: %s",
			o.Groups, o.Replicas, o.Nodes, o.SettleBound),
		Commit: commit, When: time.Now().UTC().Truncate(time.Second), Took: Duration(res.Took.Round(time.Second)),
		ControllerExits: res.Exits, Left: res.Left, Report: res.Report,
	}
}

// Markdown writes the summary's table.
func (s Summary) Markdown(w io.Writer) {
	r := s.Report
	fmt.Fprintf(w, "# make chaos\n\n%s.\n\nSeed %d (replay: `make chaos CHAOS_FLAGS=\"-seed %d -faults %d\"`), %d faults, took %s", s.Setup, s.Seed, s.Seed, s.Faults, r.Faults, time.Duration(s.Took))
	if s.Commit != "" {
		fmt.Fprintf(w, ", commit %s", s.Commit)
	}
	fmt.Fprintf(w, ", %s.\n\n", s.When.Format(time.RFC3339))
	fmt.Fprintln(w, "| fault | injected | failed over | not settled | failover p50 / p99 | settled p50 / max |")
	fmt.Fprintln(w, "|---|--:|--:|--:|--:|--:|")
	total := KindRow{Kind: "**all**"}
	for _, k := range r.ByKind {
		fmt.Fprintf(w, "| %s | %d | %d | %d | %s | %s |\n", k.Kind, k.Faults, k.FailedOver, k.Unsettled, pair(k.FailoverP50, k.FailoverP99, k.FailedOver), pair(k.SettleP50, k.SettleMax, k.Faults-k.Unsettled))
		total.Faults += k.Faults
		total.FailedOver += k.FailedOver
		total.Unsettled += k.Unsettled
	}
	fmt.Fprintf(w, "| %s | %d | %d | %d | | |\n\n", total.Kind, total.Faults, total.FailedOver, total.Unsettled)
	fmt.Fprintf(w, "| invariant, over the whole history | count |\n|---|--:|\n")
	fmt.Fprintf(w, "| moments two pods of a group were labelled active (%d label events) | **%d** |\n", r.LabelEvents, len(r.LabelDoubles))
	fmt.Fprintf(w, "| moments two apps of a group held the active role (%d app reports) | **%d** |\n", r.AppChanges, len(r.AppOverlaps))
	fmt.Fprintf(w, "| epochs handed to two pods, not increasing, or forged | **%d** |\n", len(r.Epochs))
	fmt.Fprintf(w, "| faults not followed by one acked active within the bound | **%d** |\n", len(r.Unsettled))
	fmt.Fprintf(w, "| processes left running after the run | **%d** |\n\n", len(s.Left))
	if r.MaxNoActive > 0 {
		fmt.Fprintf(w, "Longest time a group had no app holding the active role: %s (%s, from %s).\n", r.MaxNoActive.Round(time.Millisecond), r.MaxNoActiveGroup, r.MaxNoActiveAt.Format("15:04:05.000"))
	}
	fmt.Fprintf(w, "Controller processes that exited by themselves (and were restarted): %d.\n", s.ControllerExits)
	var all []Violation
	for _, vs := range [][]Violation{r.LabelDoubles, r.AppOverlaps, r.Epochs, r.Unsettled} {
		all = append(all, vs...)
	}
	if len(all) > 0 {
		fmt.Fprintf(w, "\n## Violations\n\n")
		for i, v := range all {
			if i == 50 {
				fmt.Fprintf(w, "- … and %d more\n", len(all)-50)
				break
			}
			fmt.Fprintf(w, "- %s\n", v)
		}
	}
	for _, l := range s.Left {
		fmt.Fprintf(w, "- left running: %s\n", l)
	}
}

func pair(a, b time.Duration, n int) string {
	if n == 0 {
		return "–"
	}
	return ms(a) + " / " + ms(b)
}

func ms(d time.Duration) string {
	if d >= 10*time.Second {
		return fmt.Sprintf("%.1f s", d.Seconds())
	}
	if d >= time.Second {
		return fmt.Sprintf("%.2f s", d.Seconds())
	}
	return fmt.Sprintf("%d ms", d.Milliseconds())
}

// Write writes results.md and results.json into dir.
func (s Summary) Write(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	var md strings.Builder
	s.Markdown(&md)
	if err := os.WriteFile(filepath.Join(dir, "results.md"), []byte(md.String()), 0o644); err != nil {
		return err
	}
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "results.json"), append(b, '\n'), 0o644)
}
