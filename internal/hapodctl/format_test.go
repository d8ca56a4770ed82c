package hapodctl

import (
	"bytes"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/hapod/hapod/api/v1alpha1"
)

var now = time.Date(2026, 12, 3, 15, 0, 0, 0, time.UTC)

func ptr(v int64) *int64 { return &v }

func ago(d time.Duration) metav1.Time { return metav1.NewTime(now.Add(-d)) }

func cond(typ string, status metav1.ConditionStatus, reason, msg string) metav1.Condition {
	return metav1.Condition{Type: typ, Status: status, Reason: reason, Message: msg, LastTransitionTime: ago(2 * time.Minute)}
}

// fixture is a group as the controller reports it after one failover:
// web-a died (PodDeleting), web-b took over at epoch 7, web-c replaced
// web-a.
func fixture() *v1alpha1.HAGroup {
	return &v1alpha1.HAGroup{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "shop"},
		Status: v1alpha1.HAGroupStatus{
			Active: "web-b", ActiveNode: "node-2", Epoch: 7,
			Standbys: []v1alpha1.StandbyStatus{
				{Name: "web-c", Node: "node-1", Eligible: true},
				{Name: "web-d", Node: "node-3", Eligible: false, Reason: "NotReady"},
			},
			StandbySummary: "1/2",
			LastFailover: &v1alpha1.FailoverStatus{Time: ago(5 * time.Minute), Reason: "PodDeleting", From: "web-a", To: "web-b",
				Epoch: 7, AckMs: ptr(12), LabelMs: ptr(15), AckStatus: "ok", Replacement: "web-c"},
			Conditions: []metav1.Condition{
				cond(v1alpha1.ConditionAvailable, metav1.ConditionTrue, "Active", "web-b is active"),
				cond(v1alpha1.ConditionDegraded, metav1.ConditionFalse, "StandbyEligible", "1 of 2 standbys eligible"),
			},
		},
	}
}

func TestListRow(t *testing.T) {
	paused := fixture()
	paused.Spec.Paused = true
	refused := refusedSpec()
	resumed := pausedStatus()
	resumed.Generation = 3 // spec.paused set false since the status was written
	noSummary := fixture()
	noSummary.Status.StandbySummary = ""
	lonely := fixture()
	lonely.Status.Standbys, lonely.Status.StandbySummary = nil, ""
	unacked := fixture()
	unacked.Status.LastFailover.LabelMs = nil
	for _, tc := range []struct {
		name string
		g    *v1alpha1.HAGroup
		all  bool
		want []string
	}{
		{"reported group", fixture(), false, []string{"web", "web-b", "7", "1/2", "5m", "15", "True", "false"}},
		{"-A adds the namespace first", fixture(), true, []string{"shop", "web", "web-b", "7", "1/2", "5m", "15", "True", "false"}},
		// Created, never reported: nothing is known, READY is Unknown, not False.
		{"no status yet", &v1alpha1.HAGroup{ObjectMeta: metav1.ObjectMeta{Name: "new"}}, false,
			[]string{"new", none, none, none, none, none, "Unknown", "false"}},
		{"spec.paused", paused, false, []string{"web", "web-b", "7", "1/2", "5m", "15", "True", "true"}},
		// The controller paused a spec it refuses: say so and why.
		{"paused by the controller", refused, false, []string{"web", "web-b", "7", "1/2", "5m", "15", "True", "true (SpecUnsupported)"}},
		// Resumed, the controller not caught up: its Paused=True is stale.
		{"just resumed", resumed, false, []string{"web", "web-b", "7", "1/2", "5m", "15", "True", "false"}},
		// An older controller without standbySummary: counted from standbys.
		{"summary counted", noSummary, false, []string{"web", "web-b", "7", "1/2", "5m", "15", "True", "false"}},
		{"active without standbys", lonely, false, []string{"web", "web-b", "7", "0/0", "5m", "15", "True", "false"}},
		{"failover without label time", unacked, false, []string{"web", "web-b", "7", "1/2", "5m", none, "True", "false"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := listRow(tc.g, now, tc.all)
			if !slices.Equal(got, tc.want) {
				t.Errorf("listRow = %q, want %q", got, tc.want)
			}
			if h := listHeader(tc.all); len(h) != len(got) {
				t.Errorf("%d columns in the row, %d in the header %q", len(got), len(h), h)
			}
		})
	}
}

func TestTimeline(t *testing.T) {
	for _, tc := range []struct {
		name string
		f    v1alpha1.FailoverStatus
		want []string
	}{
		{"label then ack", v1alpha1.FailoverStatus{Reason: "PodDeleting", From: "a", To: "b", LabelMs: ptr(15), AckMs: ptr(20), AckStatus: "ok"},
			[]string{"+0ms\ttrigger: PodDeleting (a)", "+15ms\tb labelled active", "+20ms\tb acked active"}},
		// The ack may come before the label commits: shown in the order it happened.
		{"ack before label", v1alpha1.FailoverStatus{Reason: "LeaseLapsed", From: "a", To: "b", LabelMs: ptr(30), AckMs: ptr(8), AckStatus: "ok"},
			[]string{"+0ms\ttrigger: LeaseLapsed (a)", "+8ms\tb acked active", "+30ms\tb labelled active"}},
		{"initial election: no from", v1alpha1.FailoverStatus{Reason: "Initial", To: "b", LabelMs: ptr(3), AckMs: ptr(3), AckStatus: "ok"},
			[]string{"+0ms\ttrigger: Initial", "+3ms\tb labelled active", "+3ms\tb acked active"}},
		// No ack: no time to give it, the status says why, last.
		{"not acked", v1alpha1.FailoverStatus{Reason: "PodDeleting", From: "a", To: "b", LabelMs: ptr(15), AckStatus: "timeout"},
			[]string{"+0ms\ttrigger: PodDeleting (a)", "+15ms\tb labelled active", "-\tb not acked: timeout"}},
		{"an ack that was not ok", v1alpha1.FailoverStatus{Reason: "PodDeleting", To: "b", AckMs: ptr(4), AckStatus: "stale"},
			[]string{"+0ms\ttrigger: PodDeleting", "+4ms\tb acked active (stale)"}},
		{"nothing recorded", v1alpha1.FailoverStatus{Reason: "PodDeleting", To: "b"},
			[]string{"+0ms\ttrigger: PodDeleting", "-\tb not acked: no ack recorded"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := timeline(&tc.f); !slices.Equal(got, tc.want) {
				t.Errorf("timeline = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestSwitchoverText(t *testing.T) {
	done := &v1alpha1.SwitchoverStatus{ID: "s1", Phase: v1alpha1.SwitchoverSucceeded, From: "a", To: "b", GapMs: ptr(3)}
	for _, tc := range []struct {
		name string
		req  *v1alpha1.SwitchoverRequest
		st   *v1alpha1.SwitchoverStatus
		want string
	}{
		{"never asked", nil, nil, none},
		{"reported", &v1alpha1.SwitchoverRequest{ID: "s1", To: "b"}, done, "s1 Succeeded: a -> b, gap 3ms"},
		{"asked, not reported", &v1alpha1.SwitchoverRequest{ID: "s2"}, nil, "s2 requested (to the best eligible standby), not yet reported"},
		// A new request while status still shows the previous one.
		{"asked again", &v1alpha1.SwitchoverRequest{ID: "s2", To: "c"}, done,
			"s2 requested (to c), not yet reported; last: s1 Succeeded: a -> b, gap 3ms"},
		{"failed, with the message", nil, &v1alpha1.SwitchoverStatus{ID: "s3", Phase: v1alpha1.SwitchoverFailed, From: "a", To: "c", Message: "c is not eligible: NotReady"},
			"s3 Failed: a -> c: c is not eligible: NotReady"},
		{"pending, nothing else known", nil, &v1alpha1.SwitchoverStatus{ID: "s4", Phase: v1alpha1.SwitchoverPending}, "s4 Pending"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := &v1alpha1.HAGroup{Spec: v1alpha1.HAGroupSpec{Switchover: tc.req}, Status: v1alpha1.HAGroupStatus{Switchover: tc.st}}
			if got := switchoverText(g); got != tc.want {
				t.Errorf("switchoverText = %q, want %q", got, tc.want)
			}
		})
	}
}

// TestDescribe checks the detailed view as a whole: its sections, their
// order and alignment, as a user reads them.
func TestDescribe(t *testing.T) {
	g := fixture()
	g.Status.Switchover = &v1alpha1.SwitchoverStatus{ID: "s1", Phase: v1alpha1.SwitchoverSucceeded, From: "web-a", To: "web-b", GapMs: ptr(3)}
	want := `Name:          web
Namespace:     shop
Active:        web-b on node node-2, epoch 7
Paused:        false
Standbys:      1/2 eligible
  NAME    NODE     ELIGIBLE   WHY
  web-c   node-1   yes        
  web-d   node-3   no         NotReady
Conditions:
  TYPE        STATUS   REASON            AGE   MESSAGE
  Available   True     Active            2m    web-b is active
  Degraded    False    StandbyEligible   2m    1 of 2 standbys eligible
Last failover: 5m ago (2026-12-03T14:55:00Z): PodDeleting, web-a -> web-b, epoch 7
  +0ms          trigger: PodDeleting (web-a)
  +12ms         web-b acked active
  +15ms         web-b labelled active
  replacement   web-c joined as standby
Switchover:    s1 Succeeded: web-a -> web-b, gap 3ms
`
	if got := describe(g, now); got != want {
		t.Errorf("describe:\n%s\nwant:\n%s", got, want)
	}
	behind := fixture()
	behind.Generation, behind.Status.ObservedGeneration = 3, 2
	if got := describe(behind, now); !strings.HasSuffix(got, "Note:          status is of spec generation 2, the spec is at 3: the controller has not caught up\n") {
		t.Errorf("describe of a status behind its spec:\n%s", got)
	}
	empty := describe(&v1alpha1.HAGroup{ObjectMeta: metav1.ObjectMeta{Name: "new", Namespace: "shop"}}, now)
	for _, s := range []string{"Active:        <none>\n", "Standbys:      <none> eligible\n", "Conditions:    <none>\n", "Last failover: <none>\n", "Switchover:    <none>\n"} {
		if !strings.Contains(empty, s) {
			t.Errorf("describe of an unreported group lacks %q:\n%s", s, empty)
		}
	}
}

func TestHistoryRows(t *testing.T) {
	h := []v1alpha1.FailoverStatus{
		{Time: ago(time.Minute), Reason: "PlannedSwitchover", From: "b", To: "c", Epoch: 3, AckMs: ptr(2), LabelMs: ptr(4)},
		{Time: ago(time.Hour), Reason: "PodDeleting", From: "a", To: "b", Epoch: 2, AckStatus: "timeout", LabelMs: ptr(9)},
		{Time: ago(2 * time.Hour), Reason: "Initial", To: "a", Epoch: 1},
	}
	want := [][]string{
		{"2026-12-03T14:59:00Z", "60s", "PlannedSwitchover", "b -> c", "3", "2", "4"},
		// No ack: its status (timeout) in place of a time.
		{"2026-12-03T14:00:00Z", "60m", "PodDeleting", "a -> b", "2", "timeout", "9"},
		{"2026-12-03T13:00:00Z", "120m", "Initial", "<none> -> a", "1", none, none},
	}
	for _, tc := range []struct {
		limit int
		want  [][]string
	}{{0, want}, {2, want[:2]}, {10, want}} {
		got := historyRows(h, now, tc.limit)
		if !slices.EqualFunc(got, tc.want, slices.Equal) {
			t.Errorf("historyRows(limit %d) = %q, want %q", tc.limit, got, tc.want)
		}
	}
}

func event(name, reason, pod string, at time.Duration) eventsv1.Event {
	return eventsv1.Event{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		EventTime:  metav1.NewMicroTime(now.Add(-at)),
		Reason:     reason, Type: corev1.EventTypeNormal, Note: "note of " + name,
		Regarding: corev1.ObjectReference{Kind: "Pod", Name: pod},
	}
}

func TestGroupEvents(t *testing.T) {
	g := fixture()
	g.Status.History = []v1alpha1.FailoverStatus{*g.Status.LastFailover, {Reason: "Initial", To: "web-old"}}
	other := event("other-kind", "Promoted", "web-b", time.Second)
	other.Regarding.Kind = "Lease"
	series := event("series", "SwitchStuck", "web-b", time.Hour)
	series.Series = &eventsv1.EventSeries{Count: 4, LastObservedTime: metav1.NewMicroTime(now.Add(-30 * time.Second))}
	evs := []eventsv1.Event{
		event("promoted", "Promoted", "web-b", 5*time.Minute),
		event("died", "CriticalContainerDied", "web-a", 6*time.Minute),
		event("old", "Promoted", "web-old", 3*time.Hour),            // named only by the history
		event("labelled", "NoStandbyReady", "web-now", time.Minute), // labelled as the group's now
		event("stranger", "Promoted", "db-0", time.Second),          // another group's pod
		event("scheduled", "Scheduled", "web-b", time.Second),       // not a controller reason
		other,
		series, // a series is as recent as its last observation
	}
	names := func(evs []eventsv1.Event) []string {
		var n []string
		for _, e := range evs {
			n = append(n, e.Name)
		}
		return n
	}
	pods := groupPods(g, []string{"web-now"})
	if got, want := names(groupEvents(evs, pods, 0)), []string{"series", "labelled", "promoted", "died", "old"}; !slices.Equal(got, want) {
		t.Errorf("groupEvents = %q, want %q", got, want)
	}
	if got, want := names(groupEvents(evs, pods, 2)), []string{"series", "labelled"}; !slices.Equal(got, want) {
		t.Errorf("groupEvents(limit 2) = %q, want %q", got, want)
	}
	rows := eventRows(groupEvents(evs, pods, 1), now)
	if want := [][]string{{"30s", "Normal", "SwitchStuck", "web-b", "4", "note of series"}}; !slices.EqualFunc(rows, want, slices.Equal) {
		t.Errorf("eventRows = %q, want %q", rows, want)
	}
}

func TestSwitchoverDone(t *testing.T) {
	for _, tc := range []struct {
		name         string
		st           *v1alpha1.SwitchoverStatus
		done, failed bool
	}{
		{"nothing reported", nil, false, false},
		// The previous request's outcome is not ours.
		{"another id succeeded", &v1alpha1.SwitchoverStatus{ID: "old", Phase: v1alpha1.SwitchoverSucceeded}, false, false},
		{"pending", &v1alpha1.SwitchoverStatus{ID: "id", Phase: v1alpha1.SwitchoverPending}, false, false},
		{"in progress", &v1alpha1.SwitchoverStatus{ID: "id", Phase: v1alpha1.SwitchoverInProgress}, false, false},
		{"succeeded", &v1alpha1.SwitchoverStatus{ID: "id", Phase: v1alpha1.SwitchoverSucceeded}, true, false},
		{"failed", &v1alpha1.SwitchoverStatus{ID: "id", Phase: v1alpha1.SwitchoverFailed}, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if done, failed := switchoverDone(tc.st, "id"); done != tc.done || failed != tc.failed {
				t.Errorf("switchoverDone = %v, %v; want %v, %v", done, failed, tc.done, tc.failed)
			}
		})
	}
}

// pausedStatus is fixture as the controller reports it paused, at
// generation 2.
func pausedStatus() *v1alpha1.HAGroup {
	g := fixture()
	g.Generation, g.Status.ObservedGeneration = 2, 2
	c := cond(v1alpha1.ConditionPaused, metav1.ConditionTrue, "SpecPaused", "spec.paused: no automatic failover")
	c.ObservedGeneration = 2
	g.Status.Conditions = append(g.Status.Conditions, c)
	return g
}

// refusedSpec is fixture with a spec the controller refuses: it pauses the
// group (Paused=True, SpecPaused) and says why in Accepted=False.
func refusedSpec() *v1alpha1.HAGroup {
	g := pausedStatus()
	c := cond(v1alpha1.ConditionAccepted, metav1.ConditionFalse, "SpecUnsupported", "spec.roleLabel \"r\" differs from the controller's -role-label \"role\"")
	c.ObservedGeneration = 2
	g.Status.Conditions = append(g.Status.Conditions, c)
	return g
}

func TestRefuseSwitchover(t *testing.T) {
	paused := fixture()
	paused.Spec.Paused = true
	refused := refusedSpec()
	resumed := fixture()
	// Paused condition False: resumed, the controller caught up.
	resumed.Status.Conditions = append(resumed.Status.Conditions, cond(v1alpha1.ConditionPaused, metav1.ConditionFalse, "NotPaused", ""))
	justResumed := pausedStatus()
	justResumed.Generation = 3
	// Resumed with the status still of the paused spec; a controller that
	// sets no observedGeneration on its conditions: the status's counts.
	justResumedOld := pausedStatus()
	justResumedOld.Generation = 3
	for i := range justResumedOld.Status.Conditions {
		justResumedOld.Status.Conditions[i].ObservedGeneration = 0
	}
	for _, tc := range []struct {
		name string
		g    *v1alpha1.HAGroup
		want string // substring of the error; "" for none
	}{
		{"running group", fixture(), ""},
		{"resumed group", resumed, ""},
		{"just resumed, status stale", justResumed, ""},
		{"just resumed, status stale, no condition generations", justResumedOld, ""},
		{"spec.paused", paused, "hagroup/web is paused, and a paused group does not switch over: kubectl hapod resume web first"},
		{"paused by the controller", refused, `paused by the controller (SpecUnsupported: spec.roleLabel "r" differs`},
		{"paused condition of the current spec", pausedStatus(), "paused by the controller (SpecPaused: spec.paused: no automatic failover)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := refuseSwitchover(tc.g)
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("refused: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("refuseSwitchover = %v, want an error with %q", err, tc.want)
			}
		})
	}
}

func TestNewID(t *testing.T) {
	id, err := newID(now, bytes.NewReader([]byte{0xde, 0xad, 0xbe, 0xef}))
	if err != nil {
		t.Fatal(err)
	}
	if want := "20261203-150000-deadbeef"; id != want {
		t.Errorf("newID = %q, want %q", id, want)
	}
	if _, err := newID(now, bytes.NewReader(nil)); err == nil {
		t.Error("newID without randomness: no error")
	}
}

func TestSwitchoverPatch(t *testing.T) {
	for _, tc := range []struct{ to, want string }{
		{"web-b", `{"metadata":{"resourceVersion":"42"},"spec":{"switchover":{"id":"s1","to":"web-b"}}}`},
		// No target: to is null, so an earlier request's target is removed.
		{"", `{"metadata":{"resourceVersion":"42"},"spec":{"switchover":{"id":"s1","to":null}}}`},
	} {
		got, err := switchoverPatch("42", "s1", tc.to)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != tc.want {
			t.Errorf("switchoverPatch(to %q) = %s, want %s", tc.to, got, tc.want)
		}
	}
}

func TestOneLine(t *testing.T) {
	err := errors.New("HAGroup.hapod.io \"web\" is invalid:\n  * spec.switchover.id: Required value\n  * spec.rolePort: Invalid value")
	if got, want := OneLine(err), `HAGroup.hapod.io "web" is invalid: * spec.switchover.id: Required value * spec.rolePort: Invalid value`; got != want {
		t.Errorf("OneLine = %q, want %q", got, want)
	}
}

// TestExplainNoMatch: a cluster without the CRD gets a sentence that says
// what to install, any other error is passed on as it is.
func TestExplainNoMatch(t *testing.T) {
	err := explain(&meta.NoKindMatchError{GroupKind: schema.GroupKind{Group: "hapod.io", Kind: "HAGroup"}, SearchedVersions: []string{"v1alpha1"}})
	if !strings.Contains(err.Error(), "install the CRD") {
		t.Errorf("explain = %v", err)
	}
	plain := errors.New("boom")
	if !errors.Is(explain(plain), plain) {
		t.Error("explain changed another error")
	}
}

func TestPromotions(t *testing.T) {
	g := fixture()
	// A controller that keeps only lastFailover: that one.
	if got := promotions(&g.Status); len(got) != 1 || got[0].To != "web-b" {
		t.Errorf("promotions without history = %+v", got)
	}
	g.Status.History = []v1alpha1.FailoverStatus{*g.Status.LastFailover, {Reason: "Initial", To: "web-a"}}
	if got := promotions(&g.Status); len(got) != 2 {
		t.Errorf("promotions = %+v, want the history", got)
	}
	if got := promotions(&v1alpha1.HAGroupStatus{}); len(got) != 0 {
		t.Errorf("promotions of an unreported group = %+v", got)
	}
}
