package bench

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/hapod/hapod/internal/dev/ctrlproc"
	"github.com/hapod/hapod/internal/dev/netplan"
	"github.com/hapod/hapod/internal/record"
	"github.com/hapod/hapod/pkg/role"
)

// Triggers of a one-group failover.
const (
	TriggerDelete   = "active pod deleted"
	TriggerCritical = "critical container terminated"
)

// TriggerNone is the reference row: no failover, the bench's own label
// PATCH, the API round trip every label change costs here.
const TriggerNone = "none (the bench's own label PATCH)"

// Stages of the reference row.
const (
	StagePatchReturned = "PATCH returned"
	StagePatchWatched  = "PATCH seen on a watch"
)

// probeLabel is the label the bench's reference PATCH sets.
const probeLabel = role.BenchProbeLabel

// Stages of a failover, each timed from the start of the trigger's write
// request.
const (
	StageSeen        = "controller saw it"          // record.Record.Seen
	StageLabelled    = "label committed"            // record.Record.Labelled: the PATCH returned
	StageLabelWatch  = "label seen on a watch"      // the bench's own pod watch
	StageAck         = "app has the role"           // the listener accepted the message (it acks at once)
	StageAckReceived = "controller got the ack"     // record.Record.Acked
	StageEndpoints   = "EndpointSlice = new active" // ready addresses are exactly the new active's
)

// OneGroupStages lists the stages in the order they are reported.
var OneGroupStages = []string{StageSeen, StageAck, StageAckReceived, StageLabelled, StageLabelWatch, StageEndpoints}

// TriggerResult is every stage of the failovers of one trigger.
type TriggerResult struct {
	Trigger string   `json:"trigger"`
	Stages  []Series `json:"stages"`
}

// oneGroup fails one group over n times per trigger, alternating the
// triggers, and times every stage of each failover.
//
// Pods have 198.18.x.y IPs (API data only, so that the EndpointSlice
// controller publishes them) and the hapod.io/role-address annotation
// pointing at their listener on loopback.
func (e *Env) oneGroup(ctx context.Context, o Options) ([]TriggerResult, error) {
	ns, delNS, err := e.namespace(ctx, "bench-one")
	if err != nil {
		return nil, err
	}
	defer delNS()
	node, delNode, err := e.node(ctx, "bench-one", netplan.BenchOneGroup.String())
	if err != nil {
		return nil, err
	}
	defer delNode()

	const group = "one"
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: group},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": group, roleLabel: activeRole},
			Ports:    []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)}},
		},
	}
	if _, err := e.cs.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{FieldManager: fieldManager}); err != nil {
		return nil, err
	}
	pw, err := watchPods(ctx, e.cs, ns, benchLabel+"=true")
	if err != nil {
		return nil, err
	}
	defer pw.stop()
	sw, err := watchSlices(ctx, e.cs, ns, group)
	if err != nil {
		return nil, err
	}
	defer sw.stop()
	ap := newApps()
	defer ap.closeAll()

	port := 20000 + rand.IntN(40000)
	ctl, err := o.startController(ctx, e, ns, port, "controller-one")
	if err != nil {
		return nil, err
	}
	defer ctl.Stop()

	podIPs := newAddrs(netplan.BenchOneGroup)
	roleAddrs := newAddrs(loopbackLane())
	seq := 0
	create := func() (string, error) {
		name := fmt.Sprintf("%s-%d", group, seq)
		seq++
		ra := netip.AddrPortFrom(roleAddrs.take(), uint16(port))
		if err := ap.listen(ctx, name, ra); err != nil {
			return "", err
		}
		p := newPod(podSpec{name: name, group: group, node: node, ip: podIPs.take(), roleAddr: ra})
		_, err := e.cs.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{FieldManager: fieldManager})
		return name, err
	}
	steady := func(active, standby string) error {
		return waitUntil(ctx, 20*time.Second, fmt.Sprintf("steady state (active %s, standby %s)", active, standby), func() bool {
			a, ok1 := pw.get(active)
			s, ok2 := pw.get(standby)
			if !ok1 || !ok2 || len(pw.group(group)) != 2 || !runningReady(a) || !runningReady(s) ||
				a.Labels[roleLabel] != activeRole || s.Labels[roleLabel] != standbyRole {
				return false
			}
			as, _, _ := ap.state(active)
			ss, _, _ := ap.state(standby)
			if as.Role != role.Active || ss.Role != role.Standby {
				return false
			}
			_, ok := sw.onlySince(a.Status.PodIP)
			return ok
		}, pw.board.wait, sw.board.wait, ap.board.wait, ctl.Changed)
	}

	// The first pod alone becomes active; the second joins as standby.
	active, err := create()
	if err != nil {
		return nil, err
	}
	if err := waitUntil(ctx, 20*time.Second, "first active", func() bool {
		s, _, _ := ap.state(active)
		return s.Role == role.Active
	}, ap.board.wait); err != nil {
		return nil, err
	}
	standby, err := create()
	if err != nil {
		return nil, err
	}
	if err := steady(active, standby); err != nil {
		return nil, err
	}

	triggers := []string{TriggerDelete, TriggerCritical}
	samples := map[string]map[string][]time.Duration{}
	for _, t := range triggers {
		samples[t] = map[string][]time.Duration{}
	}
	var floorReturned, floorWatched []time.Duration
	for i := range 2 * o.Failovers {
		trigger := triggers[i%2]
		// The floor any controller pays: a label PATCH of the bench's own
		// (on the standby, which the controller then ignores), timed to
		// its response and to its event on the bench's watch.
		probe := strconv.Itoa(i)
		patch := fmt.Appendf(nil, `{"metadata":{"labels":{%q:%q}}}`, probeLabel, probe)
		p0 := time.Now()
		if _, err := e.cs.CoreV1().Pods(ns).Patch(ctx, standby, types.MergePatchType, patch, metav1.PatchOptions{FieldManager: fieldManager}); err != nil {
			return nil, fmt.Errorf("probe patch: %w", err)
		}
		floorReturned = append(floorReturned, time.Since(p0))
		if err := waitUntil(ctx, 10*time.Second, "probe patch on the watch", func() bool {
			p, ok := pw.get(standby)
			return ok && p.Labels[probeLabel] == probe
		}, pw.board.wait); err != nil {
			return nil, err
		}
		floorWatched = append(floorWatched, pw.updated(standby).Sub(p0))
		// Let the last failover's aftermath (the replacement's events,
		// Lease and Event writes) settle, so that each failover starts
		// from a quiet controller, as a real one would: the controller's
		// clock starts at the first event since its last reconcile.
		time.Sleep(settle + rand.N(settle/2))
		old, _ := pw.get(active)
		next, _ := pw.get(standby)
		var t0 time.Time
		switch trigger {
		case TriggerDelete:
			uid := old.UID
			t0 = time.Now()
			err = e.cs.CoreV1().Pods(ns).Delete(ctx, old.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}})
		case TriggerCritical:
			t0, err = terminateContainer(ctx, e.cs, old, appContainer, 137, "OOMKilled")
		}
		if err != nil {
			return nil, fmt.Errorf("failover %d (%s): trigger: %w", i, trigger, err)
		}
		var st stageTimes
		err := waitUntil(ctx, 15*time.Second, fmt.Sprintf("failover %d (%s) to %s", i, trigger, next.Name), func() bool {
			return st.collect(pw, ap, sw, ctl, next)
		}, pw.board.wait, sw.board.wait, ap.board.wait, ctl.Changed)
		if err != nil {
			return nil, fmt.Errorf("%w (got %+v)", err, st)
		}
		for stage, at := range st.stages() {
			samples[trigger][stage] = append(samples[trigger][stage], at.Sub(t0))
		}

		// The old pod goes (the controller deletes a pod whose critical
		// container died); its app goes with it. A replacement joins.
		if err := waitUntil(ctx, 15*time.Second, "old active gone", func() bool {
			_, ok := pw.get(old.Name)
			return !ok
		}, pw.board.wait); err != nil {
			return nil, err
		}
		ap.close(old.Name)
		active = next.Name
		if standby, err = create(); err != nil {
			return nil, err
		}
		if err := steady(active, standby); err != nil {
			return nil, err
		}
		if (i+1)%20 == 0 {
			e.Log.Info("one group", "failovers", i+1, "of", 2*o.Failovers)
		}
	}

	var out []TriggerResult
	for _, t := range triggers {
		tr := TriggerResult{Trigger: t}
		for _, stage := range OneGroupStages {
			tr.Stages = append(tr.Stages, newSeries(stage, durationsMs(samples[t][stage])))
		}
		out = append(out, tr)
	}
	out = append(out, TriggerResult{Trigger: TriggerNone, Stages: []Series{
		newSeries(StagePatchReturned, durationsMs(floorReturned)),
		newSeries(StagePatchWatched, durationsMs(floorWatched)),
	}})
	return out, nil
}

// settle is the pause between failovers.
const settle = 100 * time.Millisecond

// stageTimes are the moments one failover reached each stage.
type stageTimes struct {
	labelWatch, ack, endpoints time.Time
	promo                      record.Record
	havePromo                  bool
}

// collect fills in what has happened so far and reports whether every
// stage has been reached.
func (st *stageTimes) collect(pw *podWatch, ap *apps, sw *sliceWatch, ctl *ctrlproc.Controller, next *corev1.Pod) bool {
	if t, ok := pw.activeSince(next.UID); ok {
		st.labelWatch = t
	}
	if _, at, ok := ap.state(next.Name); ok && !at.IsZero() {
		st.ack = at
	}
	if t, ok := sw.onlySince(next.Status.PodIP); ok && st.endpoints.IsZero() {
		st.endpoints = t
	}
	if p, ok := ctl.Promotion(next.Name); ok {
		st.promo, st.havePromo = p, true
	}
	return !st.labelWatch.IsZero() && !st.ack.IsZero() && !st.endpoints.IsZero() && st.havePromo
}

func (st *stageTimes) stages() map[string]time.Time {
	m := map[string]time.Time{
		StageSeen:       st.promo.Seen,
		StageLabelWatch: st.labelWatch,
		StageAck:        st.ack,
		StageEndpoints:  st.endpoints,
	}
	// Zero when the label write failed or no ack came: not a sample.
	if !st.promo.Labelled.IsZero() {
		m[StageLabelled] = st.promo.Labelled
	}
	if !st.promo.Acked.IsZero() {
		m[StageAckReceived] = st.promo.Acked
	}
	return m
}
