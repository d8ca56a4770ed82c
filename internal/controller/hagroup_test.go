package controller_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/hapod/hapod/api/v1alpha1"
	"github.com/hapod/hapod/internal/controller"
	"github.com/hapod/hapod/internal/dev/clustertest"
	"github.com/hapod/hapod/internal/election"
	"github.com/hapod/hapod/pkg/role"
)

// hagroups is a client for HAGroups in the test's namespace.
func (e *env) hagroups() client.Client {
	e.t.Helper()
	clustertest.InstallCRD(e.t)
	s, err := controller.ManagerOptions(e.cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	c, err := client.New(clustertest.RESTConfig(e.t), client.Options{Scheme: s.Scheme})
	if err != nil {
		e.t.Fatal(err)
	}
	return c
}

func (e *env) createHAGroup(c client.Client, name string, spec v1alpha1.HAGroupSpec) {
	e.t.Helper()
	hg := &v1alpha1.HAGroup{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: e.ns}, Spec: spec}
	if err := c.Create(e.t.Context(), hg); err != nil {
		e.t.Fatal(err)
	}
}

// patchSpec merge-patches the HAGroup's spec, as kubectl hapod does.
func (e *env) patchSpec(c client.Client, name string, spec map[string]any) {
	e.t.Helper()
	b, err := json.Marshal(map[string]any{"spec": spec})
	if err != nil {
		e.t.Fatal(err)
	}
	hg := &v1alpha1.HAGroup{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: e.ns}}
	if err := c.Patch(e.t.Context(), hg, client.RawPatch(types.MergePatchType, b)); err != nil {
		e.t.Fatal(err)
	}
}

// status waits until the HAGroup's status satisfies cond and returns it.
func (e *env) status(c client.Client, name string, cond func(s v1alpha1.HAGroupStatus) bool) v1alpha1.HAGroupStatus {
	e.t.Helper()
	var hg v1alpha1.HAGroup
	e.t.Cleanup(func() {
		if e.t.Failed() {
			b, _ := json.MarshalIndent(hg.Status, "", "  ")
			e.t.Logf("HAGroup %s status when the test failed:\n%s", name, b)
		}
	})
	clustertest.Eventually(e.t, 15*time.Second, func() (bool, error) {
		if err := c.Get(e.t.Context(), types.NamespacedName{Namespace: e.ns, Name: name}, &hg); err != nil {
			return false, err
		}
		return cond(hg.Status), nil
	})
	return hg.Status
}

// hagroupTable gets the HAGroup as kubectl get does (as a meta.k8s.io
// Table) and returns the column names and the group's row.
func (e *env) hagroupTable(name string) ([]string, []any) {
	e.t.Helper()
	rc := clustertest.RESTConfig(e.t)
	hc, err := rest.HTTPClientFor(rc)
	if err != nil {
		e.t.Fatal(err)
	}
	url := fmt.Sprintf("%s/apis/hapod.io/v1alpha1/namespaces/%s/hagroups/%s", rc.Host, e.ns, name)
	req, err := http.NewRequestWithContext(e.t.Context(), http.MethodGet, url, nil)
	if err != nil {
		e.t.Fatal(err)
	}
	req.Header.Set("Accept", "application/json;as=Table;g=meta.k8s.io;v=v1")
	resp, err := hc.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	var tbl metav1.Table
	if err := json.NewDecoder(resp.Body).Decode(&tbl); err != nil || len(tbl.Rows) != 1 {
		e.t.Fatalf("table of hagroups/%s: %v, %d rows", name, err, len(tbl.Rows))
	}
	var cols []string
	for _, c := range tbl.ColumnDefinitions {
		cols = append(cols, c.Name)
	}
	return cols, tbl.Rows[0].Cells
}

// activeHAGroup starts the common case: an HAGroup "hapod", a ReplicaSet
// of two with their apps listening, the controller, and the first active
// labelled and its app told so.
func (e *env) activeHAGroup() (client.Client, map[string]*role.Listener, corev1.Pod) {
	e.t.Helper()
	c := e.hagroups()
	e.neverTwoActive("hapod")
	e.createHAGroup(c, "hapod", v1alpha1.HAGroupSpec{})
	e.replicaSet("hapod", 2)
	ls := e.listeners(e.runningPods("hapod", 2))
	e.startController()
	act := e.active("hapod")
	waitRole(e.t, ls[act.Name], role.Active, 1)
	return c, ls, act
}

func condition(s v1alpha1.HAGroupStatus, typ string) metav1.ConditionStatus {
	if c := meta.FindStatusCondition(s.Conditions, typ); c != nil {
		return c.Status
	}
	return ""
}

// The status shows the group as the labels and the apps have it: the
// active pod and its epoch, the standby and whether it can take over, the
// conditions, and after a failover its timeline.
func TestHAGroupStatus(t *testing.T) {
	e := newEnv(t)
	c, ls, act := e.activeHAGroup()
	s := e.status(c, "hapod", func(s v1alpha1.HAGroupStatus) bool {
		return s.Active == act.Name && s.StandbySummary == "1/1" && condition(s, v1alpha1.ConditionAvailable) == metav1.ConditionTrue
	})
	if s.Epoch != int64(epochOf(act)) || s.ActiveNode != e.node || s.ObservedGeneration != 1 {
		t.Errorf("status epoch %d node %q generation %d, want %d %q 1", s.Epoch, s.ActiveNode, s.ObservedGeneration, epochOf(act), e.node)
	}
	if len(s.Standbys) != 1 || !s.Standbys[0].Eligible || s.Standbys[0].Reason != "" {
		t.Errorf("standbys %+v, want one eligible", s.Standbys)
	}
	if condition(s, v1alpha1.ConditionDegraded) != metav1.ConditionFalse || condition(s, v1alpha1.ConditionPaused) != metav1.ConditionFalse {
		t.Errorf("conditions %+v", s.Conditions)
	}
	// What kubectl get hagroups prints: the API server's Table of the
	// CRD's printer columns.
	cols, row := e.hagroupTable("hapod")
	want := map[string]string{"Active": act.Name, "Epoch": fmt.Sprint(epochOf(act)), "Standbys": "1/1", "Ready": "True"}
	for i, c := range cols {
		if w, ok := want[c]; ok && fmt.Sprint(row[i]) != w {
			t.Errorf("kubectl get hagroups column %s = %v, want %s", c, row[i], w)
		}
		delete(want, c)
	}
	if len(want) > 0 {
		t.Errorf("kubectl get hagroups lacks columns %v (has %v)", want, cols)
	}

	e.deletePod(act.Name, ls)
	next := e.active("hapod", act.Name)
	waitRole(t, ls[next.Name], role.Active, epochOf(next))
	s = e.status(c, "hapod", func(s v1alpha1.HAGroupStatus) bool {
		return s.Active == next.Name && s.LastFailover != nil && s.LastFailover.From == act.Name && s.LastFailover.AckMs != nil
	})
	f := s.LastFailover
	if f.To != next.Name || f.Reason != string(election.Deleting) || f.Epoch != int64(epochOf(next)) || f.LabelMs == nil || f.AckStatus != "ok" {
		t.Errorf("last failover %+v, want %s -> %s (%s) at epoch %d, label and ack times", *f, act.Name, next.Name, election.Deleting, epochOf(next))
	}
	if len(s.History) < 2 || s.History[0].To != next.Name || s.History[len(s.History)-1].Reason != string(election.Initial) {
		t.Errorf("history %+v, want the failover first and the initial election last", s.History)
	}
	// The replacement the ReplicaSet creates joins as an eligible standby
	// and is named in the timeline.
	e.listenNew("hapod", ls, 2)
	e.status(c, "hapod", func(s v1alpha1.HAGroupStatus) bool {
		return s.StandbySummary == "1/1" && s.LastFailover.Replacement != "" && s.LastFailover.Replacement == s.Standbys[0].Name
	})
}

// A planned switchover moves the role with the apps never both active:
// the old active acks standby before the new one is told active, and the
// status reports the request done with its gap. A request is carried out
// once; a second one names the pod to go back to.
func TestPlannedSwitchover(t *testing.T) {
	e := newEnv(t)
	e.history = &controller.AppHistory{}
	c, ls, first := e.activeHAGroup()
	e.status(c, "hapod", func(s v1alpha1.HAGroupStatus) bool { return s.Active == first.Name })

	e.patchSpec(c, "hapod", map[string]any{"switchover": map[string]any{"id": "one"}})
	s := e.status(c, "hapod", func(s v1alpha1.HAGroupStatus) bool {
		return s.Switchover != nil && s.Switchover.ID == "one" && s.Switchover.Phase == v1alpha1.SwitchoverSucceeded && s.Switchover.GapMs != nil
	})
	second := e.active("hapod", first.Name)
	if s.Switchover.From != first.Name || s.Switchover.To != second.Name {
		t.Errorf("switchover %+v, want %s -> %s", *s.Switchover, first.Name, second.Name)
	}
	waitRole(t, ls[second.Name], role.Active, epochOf(second))
	if st := ls[first.Name].State(); st.Role != role.Standby || st.Epoch != epochOf(second) || st.Fenced {
		t.Errorf("old active holds %+v, want standby at epoch %d, told (not fenced by a lapse)", st, epochOf(second))
	}
	t.Logf("switchover gap %d ms", *s.Switchover.GapMs)
	if f := s.LastFailover; f == nil || f.Reason != string(election.PlannedSwitchover) {
		t.Errorf("last failover %+v, want reason %s", f, election.PlannedSwitchover)
	}
	// Reconciles after the switch (a standby's label, the lease renewals)
	// do not carry "one" out again.
	stays(t, 500*time.Millisecond, func() error {
		if a := e.active("hapod"); a.Name != second.Name {
			return fmt.Errorf("switchover one carried out twice: %s active", a.Name)
		}
		return nil
	})

	e.patchSpec(c, "hapod", map[string]any{"switchover": map[string]any{"id": "two", "to": first.Name}})
	e.status(c, "hapod", func(s v1alpha1.HAGroupStatus) bool {
		return s.Switchover.ID == "two" && s.Switchover.Phase == v1alpha1.SwitchoverSucceeded && s.Active == first.Name
	})
	waitRole(t, ls[first.Name], role.Active, epochOf(second)+1)

	// A request for a pod that is not in the group fails, and changes nothing.
	e.patchSpec(c, "hapod", map[string]any{"switchover": map[string]any{"id": "three", "to": "nosuchpod"}})
	s = e.status(c, "hapod", func(s v1alpha1.HAGroupStatus) bool {
		return s.Switchover.ID == "three" && s.Switchover.Phase == v1alpha1.SwitchoverFailed
	})
	if s.Active != first.Name {
		t.Errorf("active %s after a failed switchover, want %s", s.Active, first.Name)
	}
	e.history.Check(t)
}

// A paused group does not fail over: its active's critical container dies
// and the pod stays active and undeleted; resumed, it fails over.
func TestPausedGroup(t *testing.T) {
	e := newEnv(t)
	c, ls, act := e.activeHAGroup()

	e.patchSpec(c, "hapod", map[string]any{"paused": true})
	e.status(c, "hapod", func(s v1alpha1.HAGroupStatus) bool {
		return condition(s, v1alpha1.ConditionPaused) == metav1.ConditionTrue
	})
	e.patchSpec(c, "hapod", map[string]any{"switchover": map[string]any{"id": "while-paused"}})
	e.status(c, "hapod", func(s v1alpha1.HAGroupStatus) bool {
		return s.Switchover != nil && s.Switchover.ID == "while-paused" && s.Switchover.Phase == v1alpha1.SwitchoverFailed
	})
	clustertest.SetContainerTerminated(t, e.ns, act.Name, "app", 1, "Error")
	stays(t, time.Second, func() error {
		cur, err := e.cs.CoreV1().Pods(e.ns).Get(t.Context(), act.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if cur.Labels["role"] != "active" || cur.DeletionTimestamp != nil {
			return fmt.Errorf("paused group changed: %s role %q deleting %v", cur.Name, cur.Labels["role"], cur.DeletionTimestamp != nil)
		}
		return nil
	})
	e.patchSpec(c, "hapod", map[string]any{"paused": false})
	next := e.active("hapod", act.Name)
	waitRole(t, ls[next.Name], role.Active, epochOf(next))
	e.gone(act)
}

// An active on a node that is cordoned moves to a standby on another node
// before the drain evicts it; a spec that describes other pods than the
// controller's flags is refused and its group paused.
func TestCordonMovesActive(t *testing.T) {
	e := newEnv(t)
	c := e.hagroups()
	e.neverTwoActive("hapod")
	e.createHAGroup(c, "hapod", v1alpha1.HAGroupSpec{})
	other := clustertest.Node(t)
	for i, node := range []string{e.node, other} {
		tmpl := e.podTemplate("hapod")
		pod := &corev1.Pod{ObjectMeta: tmpl.ObjectMeta, Spec: tmpl.Spec}
		pod.Name, pod.Spec.NodeName = fmt.Sprintf("hapod-%d", i), node
		if _, err := e.cs.CoreV1().Pods(e.ns).Create(t.Context(), pod, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	ls := e.listeners(e.runningPods("hapod", 2))
	e.startController()
	act := e.active("hapod")
	waitRole(t, ls[act.Name], role.Active, 1)

	cordon := []byte(`{"spec":{"unschedulable":true}}`)
	if _, err := e.cs.CoreV1().Nodes().Patch(t.Context(), act.Spec.NodeName, types.MergePatchType, cordon, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	next := e.active("hapod", act.Name)
	if next.Spec.NodeName == act.Spec.NodeName {
		t.Fatalf("moved to %s on the cordoned node", next.Name)
	}
	waitRole(t, ls[next.Name], role.Active, epochOf(next))
	s := e.status(c, "hapod", func(s v1alpha1.HAGroupStatus) bool {
		return s.Active == next.Name && len(s.Standbys) == 1 && s.Standbys[0].Reason == "NodeCordoned"
	})
	if s.LastFailover == nil || s.LastFailover.Reason != string(election.NodeCordoned) {
		t.Errorf("last failover %+v, want reason %s", s.LastFailover, election.NodeCordoned)
	}

	e.patchSpec(c, "hapod", map[string]any{"roleLabel": "tier"})
	s = e.status(c, "hapod", func(s v1alpha1.HAGroupStatus) bool {
		return condition(s, v1alpha1.ConditionAccepted) == metav1.ConditionFalse && condition(s, v1alpha1.ConditionPaused) == metav1.ConditionTrue
	})
	if cnd := meta.FindStatusCondition(s.Conditions, v1alpha1.ConditionAccepted); cnd.Reason != "SpecUnsupported" {
		t.Errorf("Accepted %+v, want reason SpecUnsupported", cnd)
	}
}

// An eviction (a drain's, through the Eviction API) fails the active over
// while its app still runs: the API server marks the pod DisruptionTarget
// and then deletes it, and either is a trigger.
func TestEvictionFailsOver(t *testing.T) {
	e := newEnv(t)
	e.history = &controller.AppHistory{}
	e.neverTwoActive("hapod")
	e.replicaSet("hapod", 2)
	ls := e.listeners(e.runningPods("hapod", 2))
	e.startController()
	act := e.active("hapod")
	waitRole(t, ls[act.Name], role.Active, 1)
	ev := &policyv1.Eviction{ObjectMeta: metav1.ObjectMeta{Name: act.Name, Namespace: e.ns}}
	if err := e.cs.CoreV1().Pods(e.ns).EvictV1(t.Context(), ev); err != nil {
		t.Fatal(err)
	}
	next := e.active("hapod", act.Name)
	waitRole(t, ls[next.Name], role.Active, epochOf(next))
	if st := ls[act.Name].State(); st.Role != role.Standby {
		t.Errorf("evicted pod's app holds %+v, want standby", st)
	}
	e.history.Check(t)
}
