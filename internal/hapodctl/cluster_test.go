package hapodctl

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"github.com/hapod/hapod/api/v1alpha1"
	"github.com/hapod/hapod/internal/dev/clustertest"
)

func TestMain(m *testing.M) { clustertest.Main(m) }

// result is one in-process run of kubectl hapod.
type result struct {
	stdout, stderr string
	err            error
}

// kubectlHapod runs kubectl hapod in-process against the test cluster, in
// namespace ns, as a user would with --kubeconfig and -n.
func kubectlHapod(t *testing.T, ns string, args ...string) result {
	t.Helper()
	var out, errOut bytes.Buffer
	args = append(args, "--kubeconfig", clustertest.Kubeconfig(t), "-n", ns)
	err := Run(t.Context(), args, genericiooptions.IOStreams{In: strings.NewReader(""), Out: &out, ErrOut: &errOut})
	return result{out.String(), errOut.String(), err}
}

// mustRun is kubectlHapod that fails the test on an error.
func mustRun(t *testing.T, ns string, args ...string) string {
	t.Helper()
	r := kubectlHapod(t, ns, args...)
	if r.err != nil {
		t.Fatalf("kubectl hapod %s: %v\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), r.err, r.stdout, r.stderr)
	}
	return r.stdout
}

// setup installs the CRD and returns a client and a fresh namespace.
func setup(t *testing.T) (client.Client, string) {
	t.Helper()
	clustertest.InstallCRD(t)
	c, err := client.New(clustertest.RESTConfig(t), client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	return c, clustertest.Namespace(t)
}

// createGroup creates HAGroup name and, if st is not nil, writes st through
// the status subresource, as the controller does.
func createGroup(t *testing.T, c client.Client, ns, name string, st *v1alpha1.HAGroupStatus) *v1alpha1.HAGroup {
	t.Helper()
	g := &v1alpha1.HAGroup{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	if err := c.Create(t.Context(), g); err != nil {
		t.Fatalf("create hagroup %s: %v", name, err)
	}
	if st != nil {
		g.Status = *st
		if err := c.Status().Update(t.Context(), g); err != nil {
			t.Fatalf("write the status of hagroup %s: %v", name, err)
		}
	}
	return g
}

// reportedStatus is what a controller reports for group name with pods
// <name>-a (active) and <name>-b, <name>-c after <name>-z failed over.
func reportedStatus(name string) *v1alpha1.HAGroupStatus {
	at := metav1.NewTime(time.Now().Add(-20 * time.Minute).Truncate(time.Second))
	f := v1alpha1.FailoverStatus{Time: at, Reason: "PodDeleting", From: name + "-z", To: name + "-a", Epoch: 4,
		AckMs: ptr(12), LabelMs: ptr(15), AckStatus: "ok", Replacement: name + "-c"}
	first := v1alpha1.FailoverStatus{Time: metav1.NewTime(at.Add(-time.Hour)), Reason: "Initial", To: name + "-z", Epoch: 3,
		AckMs: ptr(3), LabelMs: ptr(5), AckStatus: "ok"}
	lt := metav1.NewTime(at.Time)
	return &v1alpha1.HAGroupStatus{
		ObservedGeneration: 1,
		Active:             name + "-a", ActiveNode: "node-1", Epoch: 4,
		Standbys: []v1alpha1.StandbyStatus{
			{Name: name + "-b", Node: "node-2", Eligible: true},
			{Name: name + "-c", Node: "node-3", Eligible: false, Reason: "NotReady"},
		},
		StandbySummary: "1/2",
		LastFailover:   &f,
		History:        []v1alpha1.FailoverStatus{f, first},
		Conditions: []metav1.Condition{
			{Type: v1alpha1.ConditionAvailable, Status: metav1.ConditionTrue, Reason: "Active", Message: name + "-a is active", LastTransitionTime: lt},
			{Type: v1alpha1.ConditionDegraded, Status: metav1.ConditionFalse, Reason: "StandbyEligible", Message: "1 of 2 standbys eligible", LastTransitionTime: lt},
		},
	}
}

// createPod creates a pod of group in ns; it never runs (no test node),
// which switchover's check of --to does not need.
func createPod(t *testing.T, c client.Client, ns, name, group string) {
	t.Helper()
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{"app": group}},
		Spec: corev1.PodSpec{
			Containers: []corev1.Container{{Name: "app", Image: "registry.invalid/app"}},
			// No node matches: the pod stays Pending wherever kwok nodes are.
			NodeSelector: map[string]string{"kubernetes.io/hostname": "no-such-node"},
		},
	}
	if err := c.Create(t.Context(), p); err != nil {
		t.Fatalf("create pod %s: %v", name, err)
	}
}

func getGroupT(t *testing.T, c client.Client, ns, name string) *v1alpha1.HAGroup {
	t.Helper()
	g, err := getGroup(t.Context(), c, ns, name)
	if err != nil {
		t.Fatal(err)
	}
	return g
}

func TestStatus(t *testing.T) {
	c, ns := setup(t)
	createGroup(t, c, ns, "web", reportedStatus("web"))
	createGroup(t, c, ns, "fresh", nil) // created, not reported yet

	out := mustRun(t, ns, "status")
	t.Logf("kubectl hapod status:\n%s", out)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 {
		t.Fatalf("status: want a header and 2 rows:\n%s", out)
	}
	if h := strings.Fields(lines[0]); strings.Join(h, " ") != "NAME ACTIVE EPOCH STANDBYS LAST-FAILOVER FAILOVER-MS READY PAUSED" {
		t.Errorf("header %q", lines[0])
	}
	// Listed by name: fresh, then web.
	if got, want := strings.Fields(lines[1]), []string{"fresh", none, none, none, none, none, "Unknown", "false"}; strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("row of fresh: %q, want %q", got, want)
	}
	if got, want := strings.Fields(lines[2]), []string{"web", "web-a", "4", "1/2", "20m", "15", "True", "false"}; strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("row of web: %q, want %q", got, want)
	}

	all := mustRun(t, ns, "status", "-A")
	if !strings.HasPrefix(all, "NAMESPACE") || !strings.Contains(all, ns) {
		t.Errorf("status -A has no namespace column with %s:\n%s", ns, all)
	}

	one := mustRun(t, ns, "status", "web")
	t.Logf("kubectl hapod status web:\n%s", one)
	for _, s := range []string{
		"Active:        web-a on node node-1, epoch 4",
		"web-c   node-3   no         NotReady",
		"Available   True     Active",
		"PodDeleting, web-z -> web-a, epoch 4",
		"+12ms         web-a acked active",
		"+15ms         web-a labelled active",
		"replacement   web-c joined as standby",
		"Switchover:    <none>",
	} {
		if !strings.Contains(one, s) {
			t.Errorf("status web lacks %q", s)
		}
	}

	var g v1alpha1.HAGroup
	if err := json.Unmarshal([]byte(mustRun(t, ns, "status", "web", "-o", "json")), &g); err != nil {
		t.Fatalf("status -o json: %v", err)
	}
	if g.Kind != "HAGroup" || g.APIVersion != v1alpha1.GroupVersion.String() || g.Name != "web" || g.Status.Active != "web-a" || g.Status.Epoch != 4 {
		t.Errorf("status -o json decodes to %s %s: active %q epoch %d", g.APIVersion+"/"+g.Kind, g.Name, g.Status.Active, g.Status.Epoch)
	}
	if len(g.ManagedFields) != 0 {
		t.Error("status -o json prints managedFields")
	}
	var list v1alpha1.HAGroupList
	if err := yaml.UnmarshalStrict([]byte(mustRun(t, ns, "status", "-o", "yaml")), &list); err != nil {
		t.Fatalf("status -o yaml: %v", err)
	}
	if list.Kind != "HAGroupList" || len(list.Items) != 2 || list.Items[1].Kind != "HAGroup" {
		t.Errorf("status -o yaml: kind %q, %d items", list.Kind, len(list.Items))
	}

	empty := clustertest.Namespace(t)
	if r := kubectlHapod(t, empty, "status"); r.err != nil || r.stdout != "" || !strings.Contains(r.stderr, "No HAGroups found in namespace "+empty) {
		t.Errorf("status of an empty namespace: %v, stdout %q, stderr %q", r.err, r.stdout, r.stderr)
	}
}

func TestPauseResume(t *testing.T) {
	c, ns := setup(t)
	createGroup(t, c, ns, "web", reportedStatus("web"))

	if out := mustRun(t, ns, "pause", "web"); out != "hagroup/web paused\n" {
		t.Errorf("pause printed %q", out)
	}
	if !getGroupT(t, c, ns, "web").Spec.Paused {
		t.Error("spec.paused is false after pause")
	}
	if out := mustRun(t, ns, "pause", "web"); out != "hagroup/web already paused\n" {
		t.Errorf("second pause printed %q", out)
	}
	if out := mustRun(t, ns, "status"); !strings.Contains(strings.Join(strings.Fields(out), " "), "True true") {
		t.Errorf("status of a paused group does not show PAUSED true:\n%s", out)
	}
	if out := mustRun(t, ns, "resume", "web"); out != "hagroup/web resumed\n" {
		t.Errorf("resume printed %q", out)
	}
	if getGroupT(t, c, ns, "web").Spec.Paused {
		t.Error("spec.paused is true after resume")
	}
	// The status the controller wrote is untouched by the plugin's writes.
	if g := getGroupT(t, c, ns, "web"); g.Status.Active != "web-a" || g.Status.Epoch != 4 {
		t.Errorf("status after pause and resume: active %q epoch %d", g.Status.Active, g.Status.Epoch)
	}
}

func TestSwitchoverNoWait(t *testing.T) {
	c, ns := setup(t)
	createGroup(t, c, ns, "web", reportedStatus("web"))
	createPod(t, c, ns, "web-b", "web")

	out := mustRun(t, ns, "switchover", "web", "--to", "web-b", "--wait=false")
	g := getGroupT(t, c, ns, "web")
	req := g.Spec.Switchover
	if req == nil || req.ID == "" || req.To != "web-b" {
		t.Fatalf("spec.switchover after switchover --to web-b: %+v", req)
	}
	if want := fmt.Sprintf("hagroup/web switchover %s requested (to web-b)\n", req.ID); out != want {
		t.Errorf("printed %q, want %q", out, want)
	}

	// Again without --to: a new id, and the earlier target gone.
	mustRun(t, ns, "switchover", "web", "--wait=false")
	again := getGroupT(t, c, ns, "web").Spec.Switchover
	if again == nil || again.ID == "" || again.ID == req.ID {
		t.Errorf("second switchover: id %+v, first was %q", again, req.ID)
	}
	if again != nil && again.To != "" {
		t.Errorf("second switchover without --to kept to %q", again.To)
	}
	if s := mustRun(t, ns, "status", "web"); !strings.Contains(s, again.ID+" requested (to the best eligible standby), not yet reported") {
		t.Errorf("status web does not show the pending request:\n%s", s)
	}
}

// fakeController plays the controller's part of a switchover: once
// spec.switchover has an id, it reports that id InProgress and then in
// phase final, from web-a to web-b.
func fakeController(ctx context.Context, c client.Client, ns, name string, final v1alpha1.SwitchoverPhase, msg string) <-chan error {
	done := make(chan error, 1)
	go func() {
		done <- func() error {
			tick := time.NewTicker(20 * time.Millisecond)
			defer tick.Stop()
			for {
				var g v1alpha1.HAGroup
				if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, &g); err != nil {
					return err
				}
				if req := g.Spec.Switchover; req != nil {
					for _, phase := range []v1alpha1.SwitchoverPhase{v1alpha1.SwitchoverInProgress, final} {
						g.Status.Switchover = &v1alpha1.SwitchoverStatus{ID: req.ID, Phase: phase, From: "web-a", To: "web-b"}
						if phase == final {
							g.Status.Switchover.Message = msg
							if final == v1alpha1.SwitchoverSucceeded {
								g.Status.Switchover.GapMs = ptr(3)
								g.Status.Active = "web-b"
							}
						}
						if err := c.Status().Update(ctx, &g); err != nil {
							return err
						}
					}
					return nil
				}
				select {
				case <-ctx.Done():
					return ctx.Err()
				case <-tick.C:
				}
			}
		}()
	}()
	return done
}

func TestSwitchoverWait(t *testing.T) {
	c, ns := setup(t)
	createGroup(t, c, ns, "web", reportedStatus("web"))
	createPod(t, c, ns, "web-b", "web")

	t.Run("Succeeded", func(t *testing.T) {
		ctrl := fakeController(t.Context(), c, ns, "web", v1alpha1.SwitchoverSucceeded, "")
		out := mustRun(t, ns, "switchover", "web", "--to", "web-b", "--timeout", "20s")
		if err := <-ctrl; err != nil {
			t.Fatalf("fake controller: %v", err)
		}
		t.Logf("kubectl hapod switchover web --to web-b:\n%s", out)
		id := getGroupT(t, c, ns, "web").Spec.Switchover.ID
		if want := fmt.Sprintf("switchover %s Succeeded: web-a -> web-b, gap 3ms\n", id); !strings.HasSuffix(out, want) {
			t.Errorf("printed:\n%s\nwant it to end with %q", out, want)
		}
	})

	t.Run("Failed", func(t *testing.T) {
		// Clear the request, so that the fake controller waits for the new one.
		if err := c.Patch(t.Context(), getGroupT(t, c, ns, "web"), client.RawPatch("application/merge-patch+json", []byte(`{"spec":{"switchover":null}}`))); err != nil {
			t.Fatal(err)
		}
		ctrl := fakeController(t.Context(), c, ns, "web", v1alpha1.SwitchoverFailed, "web-b is not eligible: NotReady")
		r := kubectlHapod(t, ns, "switchover", "web", "--timeout", "20s")
		if err := <-ctrl; err != nil {
			t.Fatalf("fake controller: %v", err)
		}
		t.Logf("kubectl hapod switchover web (Failed):\n%s", r.stdout)
		if r.err == nil || !strings.Contains(r.err.Error(), "failed: web-b is not eligible: NotReady") {
			t.Errorf("switchover that failed: err %v", r.err)
		}
		if !strings.Contains(r.stdout, "Failed: web-a -> web-b: web-b is not eligible: NotReady") {
			t.Errorf("no outcome printed:\n%s", r.stdout)
		}
	})

	t.Run("no controller", func(t *testing.T) {
		r := kubectlHapod(t, ns, "switchover", "web", "--timeout", "1s")
		if r.err == nil || !strings.Contains(r.err.Error(), "no outcome within 1s: the controller has not reported it") ||
			!strings.Contains(r.err.Error(), "the request stands") {
			t.Errorf("switchover with nobody to carry it out: err %v", r.err)
		}
	})
}

// TestSwitchoverInterrupted: ^C during --wait says the request stands,
// not that the controller was too slow.
func TestSwitchoverInterrupted(t *testing.T) {
	c, ns := setup(t)
	createGroup(t, c, ns, "web", reportedStatus("web"))
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	// Interrupt once the request is written, as a user would while waiting.
	go func() {
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			var g v1alpha1.HAGroup
			if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: "web"}, &g); err == nil && g.Spec.Switchover != nil {
				cancel()
				return
			}
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	var out, errOut bytes.Buffer
	err := Run(ctx, []string{"switchover", "web", "--timeout", "1m", "--kubeconfig", clustertest.Kubeconfig(t), "-n", ns},
		genericiooptions.IOStreams{In: strings.NewReader(""), Out: &out, ErrOut: &errOut})
	if err == nil || !strings.Contains(err.Error(), "interrupted before its outcome; the request stands") {
		t.Errorf("interrupted switchover: err %v", err)
	}
}

// TestRefusals checks the errors a user meets first: each one line, and
// nothing written.
func TestRefusals(t *testing.T) {
	c, ns := setup(t)
	createGroup(t, c, ns, "web", reportedStatus("web"))
	paused := createGroup(t, c, ns, "held", reportedStatus("held"))
	paused.Spec.Paused = true
	if err := c.Update(t.Context(), paused); err != nil {
		t.Fatal(err)
	}
	createPod(t, c, ns, "held-b", "held")

	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"status of a missing group", []string{"status", "nope"}, fmt.Sprintf(`hagroup "nope" not found in namespace %q`, ns)},
		{"switchover of a missing group", []string{"switchover", "nope", "--wait=false"}, fmt.Sprintf(`hagroup "nope" not found in namespace %q`, ns)},
		{"pause of a missing group", []string{"pause", "nope"}, `hagroup "nope" not found`},
		{"history of a missing group", []string{"history", "nope"}, `hagroup "nope" not found`},
		{"switchover to a missing pod", []string{"switchover", "web", "--to", "web-x"}, fmt.Sprintf(`--to: pod "web-x" not found in namespace %q`, ns)},
		{"switchover of a paused group", []string{"switchover", "held", "--to", "held-b"}, "hagroup/held is paused, and a paused group does not switch over"},
		{"a group with -A", []string{"status", "web", "-A"}, "do not go together"},
		{"an unknown -o", []string{"status", "-o", "wide"}, `unknown output format "wide"`},
		{"no group", []string{"pause"}, "accepts 1 arg(s), received 0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := kubectlHapod(t, ns, tc.args...)
			if r.err == nil || !strings.Contains(r.err.Error(), tc.want) {
				t.Fatalf("err %v, want one with %q", r.err, tc.want)
			}
			if line := OneLine(r.err); strings.Contains(line, "\n") {
				t.Errorf("not one line: %q", line)
			}
			if r.stdout != "" {
				t.Errorf("printed %q", r.stdout)
			}
		})
	}
	for _, name := range []string{"web", "held"} {
		if g := getGroupT(t, c, ns, name); g.Spec.Switchover != nil {
			t.Errorf("a refused switchover was written to hagroup/%s: %+v", name, g.Spec.Switchover)
		}
	}
}

func TestHistory(t *testing.T) {
	c, ns := setup(t)
	createGroup(t, c, ns, "web", reportedStatus("web"))
	createPod(t, c, ns, "web-n", "web") // labelled, named nowhere in status
	at := time.Now().Add(-4 * time.Minute)
	for i, e := range []struct{ reason, pod, note string }{
		{"Promoted", "web-a", "promoted to active at epoch 4, acked in 12ms"},
		{"CriticalContainerDied", "web-z", "critical container app exited 137"},
		{"NoStandbyReady", "web-n", "no pod of group web is eligible"},
		{"Promoted", "db-0", "another group's"},
		{"Scheduled", "web-a", "not the controller's"},
	} {
		ev := &eventsv1.Event{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("ev-%d", i)},
			EventTime:  metav1.NewMicroTime(at.Add(time.Duration(i) * time.Second)),
			Reason:     e.reason, Note: e.note, Type: corev1.EventTypeNormal, Action: "Test",
			ReportingController: "hapod.io/controller", ReportingInstance: "test",
			Regarding: corev1.ObjectReference{Kind: "Pod", Namespace: ns, Name: e.pod},
		}
		if err := c.Create(t.Context(), ev); err != nil {
			t.Fatalf("create event: %v", err)
		}
	}

	out := mustRun(t, ns, "history", "web")
	t.Logf("kubectl hapod history web:\n%s", out)
	promotions, events, ok := strings.Cut(out, "Events of its pods")
	if !ok {
		t.Fatalf("no events section:\n%s", out)
	}
	if !strings.Contains(promotions, "PodDeleting   web-z -> web-a    4       12       15") ||
		!strings.Contains(promotions, "Initial       <none> -> web-z   3       3        5") {
		t.Errorf("promotions:\n%s", promotions)
	}
	if strings.Index(promotions, "PodDeleting") > strings.Index(promotions, "Initial") {
		t.Error("promotions not newest first")
	}
	for _, s := range []string{"Promoted", "CriticalContainerDied", "NoStandbyReady"} {
		if !strings.Contains(events, s) {
			t.Errorf("events lack %s:\n%s", s, events)
		}
	}
	if strings.Contains(events, "db-0") || strings.Contains(events, "Scheduled") {
		t.Errorf("events of another group or reason:\n%s", events)
	}
	// Newest first: NoStandbyReady (at+2s) above Promoted (at).
	if strings.Index(events, "NoStandbyReady") > strings.Index(events, "Promoted") {
		t.Errorf("events not newest first:\n%s", events)
	}

	// --group-label: with another label, web-n is not the group's.
	other := mustRun(t, ns, "history", "web", "--group-label", "app.kubernetes.io/name", "--limit", "1")
	if strings.Contains(other, "web-n") {
		t.Errorf("--group-label app.kubernetes.io/name still finds web-n:\n%s", other)
	}
	if strings.Contains(other, "Initial") {
		t.Errorf("--limit 1 shows the second promotion:\n%s", other)
	}
}
