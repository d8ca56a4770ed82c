package hapodctl

import (
	"bytes"
	"cmp"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"

	eventsv1 "k8s.io/api/events/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/duration"
	"k8s.io/cli-runtime/pkg/printers"

	"github.com/hapod/hapod/api/v1alpha1"
)

// Everything here is a pure function of objects and the time: what the
// commands print, tested by table without a cluster.

// none is what a table shows for an absent value, as kubectl's custom
// columns do.
const none = "<none>"

// age is kubectl's age of t at now ("5m", "3h2m"); <unknown> for no time.
func age(t metav1.Time, now time.Time) string {
	if t.IsZero() {
		return "<unknown>"
	}
	return duration.HumanDuration(now.Sub(t.Time))
}

func orNone(s string) string {
	if s == "" {
		return none
	}
	return s
}

func ms(p *int64) string {
	if p == nil {
		return none
	}
	return strconv.FormatInt(*p, 10)
}

// writeTable writes a header and rows aligned in columns, as kubectl get.
func writeTable(w io.Writer, header []string, rows [][]string) error {
	tw := printers.GetNewTabWriter(w)
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	return tw.Flush()
}

// listHeader is the status table's header; NAMESPACE only with -A, as
// kubectl get.
func listHeader(allNamespaces bool) []string {
	h := []string{"NAME", "ACTIVE", "EPOCH", "STANDBYS", "LAST-FAILOVER", "FAILOVER-MS", "READY", "PAUSED"}
	if allNamespaces {
		h = append([]string{"NAMESPACE"}, h...)
	}
	return h
}

// listRow is one HAGroup's row of the status table. FAILOVER-MS is the
// last failover's labelMs: from its trigger to the new active's label, the
// moment the Service routes to it.
func listRow(g *v1alpha1.HAGroup, now time.Time, allNamespaces bool) []string {
	st := &g.Status
	epoch := none
	if st.Epoch != 0 || st.Active != "" {
		epoch = strconv.FormatInt(st.Epoch, 10)
	}
	last, lastMs := none, none
	if f := st.LastFailover; f != nil {
		last, lastMs = age(f.Time, now), ms(f.LabelMs)
	}
	r := []string{g.Name, orNone(st.Active), epoch, standbySummary(st), last, lastMs, ready(g), pausedText(g)}
	if allNamespaces {
		r = append([]string{g.Namespace}, r...)
	}
	return r
}

// standbySummary is status.standbySummary, or, from a controller that does
// not write it, the same "eligible/total" counted from status.standbys.
func standbySummary(st *v1alpha1.HAGroupStatus) string {
	if st.StandbySummary != "" {
		return st.StandbySummary
	}
	if len(st.Standbys) == 0 {
		if st.Active != "" {
			return "0/0"
		}
		return none
	}
	eligible := 0
	for _, s := range st.Standbys {
		if s.Eligible {
			eligible++
		}
	}
	return fmt.Sprintf("%d/%d", eligible, len(st.Standbys))
}

// ready is the Available condition's status; Unknown before the controller
// has written one.
func ready(g *v1alpha1.HAGroup) string {
	if c := meta.FindStatusCondition(g.Status.Conditions, v1alpha1.ConditionAvailable); c != nil {
		return string(c.Status)
	}
	return string(metav1.ConditionUnknown)
}

// pausedBy says whether the group is paused and, if the controller
// paused it on its own, why. spec.paused is what was asked for. Beyond it,
// the controller pauses a group whose spec it refuses (Accepted=False);
// a Paused condition counts only if written for the current spec, since
// status lags the spec: a group just resumed still shows Paused=True until
// the controller's next status write, and is not paused.
func pausedBy(g *v1alpha1.HAGroup) (paused bool, why string) {
	if g.Spec.Paused {
		return true, ""
	}
	current := func(c *metav1.Condition) bool {
		obs := c.ObservedGeneration
		if obs == 0 {
			obs = g.Status.ObservedGeneration
		}
		return obs >= g.Generation
	}
	if c := meta.FindStatusCondition(g.Status.Conditions, v1alpha1.ConditionAccepted); c != nil && c.Status == metav1.ConditionFalse && current(c) {
		return true, c.Reason + ": " + oneLine(c.Message)
	}
	if c := meta.FindStatusCondition(g.Status.Conditions, v1alpha1.ConditionPaused); c != nil && c.Status == metav1.ConditionTrue && current(c) {
		return true, c.Reason + ": " + oneLine(c.Message)
	}
	return false, ""
}

// pausedText is pausedBy for the tables: true, false, or true with the
// controller's reason.
func pausedText(g *v1alpha1.HAGroup) string {
	paused, why := pausedBy(g)
	switch {
	case !paused:
		return "false"
	case why == "":
		return "true"
	default:
		reason, _, _ := strings.Cut(why, ":")
		return "true (" + reason + ")"
	}
}

// describe is the detailed view of one HAGroup (status GROUP), in
// kubectl describe's shape: fields, with the lists as indented tables.
func describe(g *v1alpha1.HAGroup, now time.Time) string {
	var b bytes.Buffer
	st := &g.Status
	field(&b, "Name", g.Name)
	field(&b, "Namespace", g.Namespace)
	switch {
	case st.Active == "":
		field(&b, "Active", none)
	case st.ActiveNode == "":
		field(&b, "Active", fmt.Sprintf("%s, epoch %d", st.Active, st.Epoch))
	default:
		field(&b, "Active", fmt.Sprintf("%s on node %s, epoch %d", st.Active, st.ActiveNode, st.Epoch))
	}
	field(&b, "Paused", pausedText(g))
	field(&b, "Standbys", standbySummary(st)+" eligible")
	if len(st.Standbys) > 0 {
		rows := make([][]string, 0, len(st.Standbys))
		for _, s := range st.Standbys {
			rows = append(rows, []string{s.Name, orNone(s.Node), yesNo(s.Eligible), s.Reason})
		}
		_ = writeTable(indent(&b), []string{"NAME", "NODE", "ELIGIBLE", "WHY"}, rows)
	}

	if len(st.Conditions) == 0 {
		field(&b, "Conditions", none)
	} else {
		field(&b, "Conditions", "")
		rows := make([][]string, 0, len(st.Conditions))
		for _, c := range st.Conditions {
			rows = append(rows, []string{c.Type, string(c.Status), c.Reason, age(c.LastTransitionTime, now), oneLine(c.Message)})
		}
		_ = writeTable(indent(&b), []string{"TYPE", "STATUS", "REASON", "AGE", "MESSAGE"}, rows)
	}

	if f := st.LastFailover; f == nil {
		field(&b, "Last failover", none)
	} else {
		field(&b, "Last failover", fmt.Sprintf("%s ago (%s): %s, %s, epoch %d",
			age(f.Time, now), f.Time.UTC().Format(time.RFC3339), f.Reason, fromTo(f.From, f.To), f.Epoch))
		tw := printers.GetNewTabWriter(indent(&b))
		for _, l := range timeline(f) {
			fmt.Fprintln(tw, l)
		}
		if f.Replacement != "" {
			fmt.Fprintf(tw, "replacement\t%s joined as standby\n", f.Replacement)
		}
		_ = tw.Flush()
	}

	field(&b, "Switchover", switchoverText(g))
	// A spec written since the controller's last status (a pause, a
	// switchover request) is not reflected above yet.
	if st.ObservedGeneration != 0 && st.ObservedGeneration < g.Generation {
		field(&b, "Note", fmt.Sprintf("status is of spec generation %d, the spec is at %d: the controller has not caught up", st.ObservedGeneration, g.Generation))
	}
	return b.String()
}

// field is one "Key:   value" line of describe, values aligned.
func field(b *bytes.Buffer, key, value string) {
	fmt.Fprintf(b, "%-15s%s", key+":", value)
	// No trailing blanks after a key whose table follows.
	b.Truncate(len(bytes.TrimRight(b.Bytes(), " ")))
	b.WriteByte('\n')
}

func yesNo(v bool) string {
	if v {
		return "yes"
	}
	return "no"
}

// fromTo is "a -> b", or "<none> -> b" for an initial election.
func fromTo(from, to string) string {
	return orNone(from) + " -> " + orNone(to)
}

// timeline is a failover's steps in the order they happened, each
// "+<ms>\t<what>", from the trigger at +0ms. An ack that never came has no
// time and goes last with its status (timeout, stale, wrong-pod).
func timeline(f *v1alpha1.FailoverStatus) []string {
	type step struct {
		ms   int64
		what string
	}
	trigger := "trigger: " + f.Reason
	if f.From != "" {
		trigger += " (" + f.From + ")"
	}
	steps := []step{{0, trigger}}
	if f.LabelMs != nil {
		steps = append(steps, step{*f.LabelMs, f.To + " labelled active"})
	}
	if f.AckMs != nil {
		what := f.To + " acked active"
		if f.AckStatus != "" && f.AckStatus != "ok" {
			what += " (" + f.AckStatus + ")"
		}
		steps = append(steps, step{*f.AckMs, what})
	}
	// Stable: at equal times the label, written first, stays first.
	slices.SortStableFunc(steps, func(a, b step) int { return cmp.Compare(a.ms, b.ms) })
	lines := make([]string, 0, len(steps)+1)
	for _, s := range steps {
		lines = append(lines, fmt.Sprintf("+%dms\t%s", s.ms, s.what))
	}
	if f.AckMs == nil {
		st := f.AckStatus
		if st == "" {
			st = "no ack recorded"
		}
		lines = append(lines, fmt.Sprintf("-\t%s not acked: %s", f.To, st))
	}
	return lines
}

// switchoverText is status.switchover in one line, with what the spec asks
// for when the controller has not reported that request yet.
func switchoverText(g *v1alpha1.HAGroup) string {
	req, st := g.Spec.Switchover, g.Status.Switchover
	var reported string
	if st != nil {
		reported = outcome(st)
	}
	if req != nil && (st == nil || st.ID != req.ID) {
		asked := fmt.Sprintf("%s requested (to %s), not yet reported", req.ID, target(req.To))
		if reported != "" {
			return asked + "; last: " + reported
		}
		return asked
	}
	return orNone(reported)
}

// target names a switchover's target for a reader.
func target(to string) string {
	if to == "" {
		return "the best eligible standby"
	}
	return to
}

// outcome is a reported switchover in one line: "<id> Succeeded: a -> b,
// gap 3ms: message".
func outcome(s *v1alpha1.SwitchoverStatus) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s", s.ID, orNone(string(s.Phase)))
	if s.From != "" || s.To != "" {
		fmt.Fprintf(&b, ": %s", fromTo(s.From, s.To))
	}
	if s.GapMs != nil {
		fmt.Fprintf(&b, ", gap %dms", *s.GapMs)
	}
	if s.Message != "" {
		fmt.Fprintf(&b, ": %s", s.Message)
	}
	return b.String()
}

// indent writes into w with two spaces before every line, for the tables
// nested in describe's sections.
func indent(w io.Writer) io.Writer { return &indenter{w: w, bol: true} }

type indenter struct {
	w   io.Writer
	bol bool
}

func (in *indenter) Write(p []byte) (int, error) {
	for i, c := range p {
		if in.bol {
			if _, err := in.w.Write([]byte("  ")); err != nil {
				return i, err
			}
		}
		if _, err := in.w.Write([]byte{c}); err != nil {
			return i, err
		}
		in.bol = c == '\n'
	}
	return len(p), nil
}

// historyHeader and historyRow make the promotions table of history.
func historyHeader() []string {
	return []string{"TIME", "AGE", "REASON", "SWITCH", "EPOCH", "ACK-MS", "LABEL-MS"}
}

// promotions is status.history, or, from a controller that keeps only
// lastFailover, that one.
func promotions(st *v1alpha1.HAGroupStatus) []v1alpha1.FailoverStatus {
	if len(st.History) == 0 && st.LastFailover != nil {
		return []v1alpha1.FailoverStatus{*st.LastFailover}
	}
	return st.History
}

// historyRows is the promotions, newest first as the controller keeps
// them, at most limit rows (0: all). ACK-MS shows the ack's status when
// there was no ack (timeout).
func historyRows(h []v1alpha1.FailoverStatus, now time.Time, limit int) [][]string {
	if limit > 0 && len(h) > limit {
		h = h[:limit]
	}
	rows := make([][]string, 0, len(h))
	for _, f := range h {
		ack := ms(f.AckMs)
		if f.AckMs == nil && f.AckStatus != "" {
			ack = f.AckStatus
		}
		rows = append(rows, []string{f.Time.UTC().Format(time.RFC3339), age(f.Time, now), f.Reason,
			fromTo(f.From, f.To), strconv.FormatInt(f.Epoch, 10), ack, ms(f.LabelMs)})
	}
	return rows
}

// eventReasons are the controller's Event reasons that history shows: the
// ones that tell of a promotion or of why one happened or could not
// (internal/controller/events.go).
var eventReasons = map[string]bool{
	"Promoted":              true,
	"PromotedNotAcked":      true,
	"LeaseLapsed":           true,
	"Demoted":               true,
	"SwitchStuck":           true,
	"CriticalContainerDied": true,
	"NoStandbyReady":        true,
}

// groupPods is every pod name the group's history and status mention,
// with the pods labelled as the group's now: events of pods since replaced
// still belong to the group's story.
func groupPods(g *v1alpha1.HAGroup, labelled []string) map[string]bool {
	pods := map[string]bool{}
	add := func(n string) {
		if n != "" {
			pods[n] = true
		}
	}
	for _, n := range labelled {
		add(n)
	}
	st := &g.Status
	add(st.Active)
	for _, s := range st.Standbys {
		add(s.Name)
	}
	fs := st.History
	if st.LastFailover != nil {
		fs = append([]v1alpha1.FailoverStatus{*st.LastFailover}, fs...)
	}
	for _, f := range fs {
		add(f.From)
		add(f.To)
		add(f.Replacement)
	}
	if st.Switchover != nil {
		add(st.Switchover.From)
		add(st.Switchover.To)
	}
	return pods
}

// eventTime is when an event last happened: its series' last observation,
// its eventTime, or, for an event written through core/v1, the deprecated
// timestamps.
func eventTime(e *eventsv1.Event) time.Time {
	switch {
	case e.Series != nil && !e.Series.LastObservedTime.IsZero():
		return e.Series.LastObservedTime.Time
	case !e.EventTime.IsZero():
		return e.EventTime.Time
	case !e.DeprecatedLastTimestamp.IsZero():
		return e.DeprecatedLastTimestamp.Time
	default:
		return e.CreationTimestamp.Time
	}
}

func eventCount(e *eventsv1.Event) int32 {
	switch {
	case e.Series != nil:
		return e.Series.Count
	case e.DeprecatedCount > 0:
		return e.DeprecatedCount
	default:
		return 1
	}
}

// groupEvents picks the events with eventReasons about one of pods, newest
// first, at most limit (0: all).
func groupEvents(evs []eventsv1.Event, pods map[string]bool, limit int) []eventsv1.Event {
	var out []eventsv1.Event
	for _, e := range evs {
		if eventReasons[e.Reason] && e.Regarding.Kind == "Pod" && pods[e.Regarding.Name] {
			out = append(out, e)
		}
	}
	slices.SortStableFunc(out, func(a, b eventsv1.Event) int { return eventTime(&b).Compare(eventTime(&a)) })
	if limit > 0 && len(out) > limit {
		out = out[:limit]
	}
	return out
}

func eventHeader() []string {
	return []string{"LAST-SEEN", "TYPE", "REASON", "POD", "COUNT", "NOTE"}
}

func eventRows(evs []eventsv1.Event, now time.Time) [][]string {
	rows := make([][]string, 0, len(evs))
	for i := range evs {
		e := &evs[i]
		rows = append(rows, []string{age(metav1.NewTime(eventTime(e)), now), e.Type, e.Reason, e.Regarding.Name,
			strconv.Itoa(int(eventCount(e))), oneLine(e.Note)})
	}
	return rows
}
