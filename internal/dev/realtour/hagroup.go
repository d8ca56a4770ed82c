package realtour

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/hapod/hapod/api/v1alpha1"
	"github.com/hapod/hapod/internal/dev/crdinstall"
	"github.com/hapod/hapod/internal/dev/poll"
	"github.com/hapod/hapod/internal/dev/realpod"
	"github.com/hapod/hapod/internal/dev/tour"
)

func hagroupClient(rc *rest.Config) (client.Client, error) {
	s := runtime.NewScheme()
	if err := v1alpha1.AddToScheme(s); err != nil {
		return nil, err
	}
	return client.New(rc, client.Options{Scheme: s})
}

// haGroups installs the HAGroup CRD and gives each group an HAGroup, as an
// operator would, before the controller starts.
func (r *run) haGroups(ctx context.Context) error {
	if err := crdinstall.Apply(ctx, r.rc, r.o.CRDFile, FieldManager); err != nil {
		return err
	}
	// Made only now: a client's RESTMapper made before the CRD was served
	// would not know the kind.
	var err error
	if r.hg, err = hagroupClient(r.rc); err != nil {
		return err
	}
	for _, g := range r.groups() {
		hg := &v1alpha1.HAGroup{ObjectMeta: metav1.ObjectMeta{Name: g.plan.group, Namespace: r.o.Namespace}}
		if err := r.hg.Create(ctx, hg, client.FieldOwner(FieldManager)); err != nil {
			return fmt.Errorf("create HAGroup %s: %w", hg.Name, err)
		}
	}
	r.say("HAGroup CRD installed; HAGroups %s and %s created (kubectl get hagroups -n %s)", r.example.plan.group, r.file.plan.group, r.o.Namespace)
	return nil
}

// switchover asks for a planned switchover of the group, as `kubectl
// hapod switchover` does (a new spec.switchover.id), and follows it: the
// old active's app told standby first, then the new one active, then the
// labels; the gap is between the two apps' own records. The old pod stays,
// as the standby.
func (r on) switchover(ctx context.Context, s *Scene) error {
	old, standby, err := r.steady(ctx)
	if err != nil {
		return fmt.Errorf("before the trigger: %w", err)
	}
	id := fmt.Sprintf("tour-%d", time.Now().UnixNano())
	patch, err := json.Marshal(map[string]any{"spec": map[string]any{"switchover": map[string]any{"id": id}}})
	if err != nil {
		return err
	}
	hg := &v1alpha1.HAGroup{ObjectMeta: metav1.ObjectMeta{Name: r.plan.group, Namespace: r.o.Namespace}}
	t0 := time.Now()
	if err := r.hg.Patch(ctx, hg, client.RawPatch(types.MergePatchType, patch), client.FieldOwner(FieldManager)); err != nil {
		return fmt.Errorf("request the switchover: %w", err)
	}
	s.Timeline.Trigger = t0
	s.Timeline.Add(t0, "HAGroup %s: spec.switchover.id=%s (what kubectl hapod switchover %s writes)", r.plan.group, id, r.plan.group)
	err = r.obs.WaitFor(ctx, r.o.SceneTimeout, "switchover", func() (bool, string) {
		p := r.obs.PodByNameLocked(standby.Name)
		if p == nil || p.LabelledAfter(r.cfg.ActiveValue, t0).IsZero() {
			return false, "the standby is not labelled active yet"
		}
		return r.obs.LastSliceLocked().ListsOnly(p.IP), "the EndpointSlice does not list the new active alone yet"
	})
	if err != nil {
		return err
	}
	s.Failover = true
	if err := r.waitAnswer(ctx, standby.Name, t0); err != nil {
		return err
	}
	recs := realpod.Records(r.records)
	down, okDown := firstRecord(recs[old.Name], r.cfg.StandbyValue, t0)
	up, okUp := firstRecord(recs[standby.Name], r.cfg.ActiveValue, t0)
	if okDown {
		s.Timeline.Add(down.At, "app in %s gives the role up: standby at epoch %d (its own record)", old.Name, down.Epoch)
	}
	r.failoverStages(s, t0, standby.Name, old.Name)
	if !okDown || !okUp {
		s.problem("the apps' records lack the switch (old standby %v, new active %v)", okDown, okUp)
	} else {
		// Negative would be two apps active at once (checkSingleActive
		// reports that too).
		s.GapMs = tour.MsSince(down.At, up.At)
		if up.At.Before(down.At) {
			s.problem("%s was active before %s gave the role up", standby.Name, old.Name)
		}
	}
	var st v1alpha1.HAGroupStatus
	err = poll.Until(ctx, r.o.SceneTimeout, func() (bool, error) {
		var cur v1alpha1.HAGroup
		if err := r.hg.Get(ctx, client.ObjectKeyFromObject(hg), &cur); err != nil {
			return false, err
		}
		st = cur.Status
		return st.Switchover != nil && st.Switchover.ID == id && st.Switchover.Phase == v1alpha1.SwitchoverSucceeded && st.Active == standby.Name, nil
	})
	if err != nil {
		return fmt.Errorf("HAGroup %s status does not report the switchover done: %w (%+v)", r.plan.group, err, st.Switchover)
	}
	gap := "-"
	if st.Switchover.GapMs != nil {
		gap = fmt.Sprintf("%d ms", *st.Switchover.GapMs)
	}
	s.Timeline.Note("HAGroup %s status: switchover %s %s (%s -> %s, gap %s as the controller saw it); active %s at epoch %d, standbys %s",
		r.plan.group, id, st.Switchover.Phase, st.Switchover.From, st.Switchover.To, gap, st.Active, st.Epoch, st.StandbySummary)
	s.Timeline.Note("no app held the role for %s ms (from the old app's record of standby to the new one's of active); %d of %d requests through the ClusterIP failed",
		tour.FormatMs(s.GapMs), s.Failed, s.Requests)
	// The old active stays, as the standby: nothing is deleted.
	back, err := r.waitSteadyStandby(ctx, old.Name)
	if err != nil {
		return err
	}
	s.Timeline.Add(back, "%s is the standby, labelled and told so", old.Name)
	return nil
}

// waitSteadyStandby waits for the steady state with name as the standby.
func (r on) waitSteadyStandby(ctx context.Context, name string) (time.Time, error) {
	var why string
	err := poll.Until(ctx, r.o.SceneTimeout, func() (bool, error) {
		var ok bool
		var standby pod
		r.obs.Read(func() { _, standby, ok, why = r.steadyLocked() })
		return ok && standby.Name == name, nil
	})
	if err != nil {
		return time.Time{}, fmt.Errorf("%s is not the steady standby: %w (%s)", name, err, why)
	}
	return time.Now(), nil
}
