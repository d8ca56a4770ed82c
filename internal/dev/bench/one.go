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
	"github.com/hapod/hapod/internal/dev/poll"
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
func (e *Env) oneGroup(ctx context.Context, o Options) ([]TriggerResult, int, error) {
	r := &oneRun{e: e, o: o, port: 20000 + rand.IntN(40000), samples: map[string]map[string][]time.Duration{}}
	defer r.tearDown()
	if err := r.setUp(ctx); err != nil {
		return nil, r.unasked, err
	}
	active, standby, err := r.firstPair(ctx)
	if err != nil {
		return nil, r.unasked, err
	}
	for i := range 2 * o.Failovers {
		if err := r.probe(ctx, i, standby); err != nil {
			return nil, r.unasked, err
		}
		// Let the last failover's aftermath (the replacement's events,
		// Lease and Event writes) settle, so that each failover starts
		// from a quiet controller, as a real one would: the controller's
		// clock starts at the first event since its last reconcile. A
		// pace (poll.Pause), not a wait for anything: the steady state was
		// reached.
		if err := poll.Pause(ctx, settle+rand.N(settle/2)); err != nil {
			return nil, r.unasked, err
		}
		if active, standby, err = r.recheck(ctx, active, standby); err != nil {
			return nil, r.unasked, err
		}
		if active, standby, err = r.failover(ctx, i, oneGroupTriggers[i%2], active, standby); err != nil {
			return nil, r.unasked, err
		}
		if (i+1)%20 == 0 {
			e.Log.Info("one group", "failovers", i+1, "of", 2*o.Failovers)
		}
	}
	return r.results(), r.unasked, nil
}

// recheck makes sure, just before a trigger, that the apps still hold what
// the last steady state found. If the standby took over meanwhile (the
// active's role lease lapsed: a starved machine), that is counted in
// unasked and the next failover starts from the new steady state.
func (r *oneRun) recheck(ctx context.Context, active, standby string) (string, string, error) {
	as := r.ap.state(active)
	ss := r.ap.state(standby)
	if as.Role == role.Active && ss.Role == role.Standby {
		return active, standby, nil
	}
	r.unasked++
	r.e.Log.Warn("a failover the bench did not cause", "active", active, "holds", as.Role, "standby", standby, "holds", ss.Role)
	// Whoever is labelled active now is the active of the new steady state.
	if p, ok := r.pw.get(standby); ok && p.Labels[roleLabel] == activeRole {
		active, standby = standby, active
	}
	return active, standby, r.steady(ctx, active, standby)
}

// oneGroupTriggers alternate.
var oneGroupTriggers = []string{TriggerDelete, TriggerCritical}

// oneGroupName is the group's (and its Service's) name.
const oneGroupName = "one"

// oneRun is the one-group scenario: its cluster objects, watches, apps,
// controller and samples.
type oneRun struct {
	e    *Env
	o    Options
	port int // every listener's

	ns, node          string
	pw                *podWatch // the pods and the Service's EndpointSlices
	ap                *apps
	ctl               *ctrlproc.Controller
	podIPs, roleAddrs *addrs
	seq               int
	cleanups          []func() // undone in reverse by tearDown

	samples                     map[string]map[string][]time.Duration // by trigger, stage
	floorReturned, floorWatched []time.Duration
	unasked                     int // failovers the bench did not cause (recheck)
}

func (r *oneRun) tearDown() {
	for i := len(r.cleanups) - 1; i >= 0; i-- {
		r.cleanups[i]()
	}
}

// setUp creates the namespace, the node, the Service, the watches, the apps
// and the controller.
func (r *oneRun) setUp(ctx context.Context) error {
	e := r.e
	ns, delNS, err := e.namespace(ctx, "bench-one")
	if err != nil {
		return err
	}
	r.ns, r.cleanups = ns, append(r.cleanups, delNS)
	node, delNode, err := e.node(ctx, "bench-one", netplan.BenchOneGroup.String())
	if err != nil {
		return err
	}
	r.node, r.cleanups = node, append(r.cleanups, delNode)
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: oneGroupName},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": oneGroupName, roleLabel: activeRole},
			Ports:    []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)}},
		},
	}
	if _, err := e.cs.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{FieldManager: fieldManager}); err != nil {
		return err
	}
	if r.pw, err = watchPods(ctx, e.cs, ns, benchLabel+"=true", oneGroupName); err != nil {
		return err
	}
	r.cleanups = append(r.cleanups, r.pw.stop)
	r.ap = newApps()
	r.cleanups = append(r.cleanups, r.ap.closeAll)
	if r.ctl, err = r.o.startController(ctx, e, ns, r.port, "controller-one"); err != nil {
		return err
	}
	r.cleanups = append(r.cleanups, r.ctl.Stop)
	r.podIPs, r.roleAddrs = newAddrs(netplan.BenchOneGroup), newAddrs(loopbackLane())
	return nil
}

// create binds the next pod's listener, then creates the pod.
func (r *oneRun) create(ctx context.Context) (string, error) {
	name := fmt.Sprintf("%s-%d", oneGroupName, r.seq)
	r.seq++
	ra := netip.AddrPortFrom(r.roleAddrs.take(), uint16(r.port))
	if err := r.ap.listen(ctx, name, ra); err != nil {
		return "", err
	}
	p := newPod(podSpec{name: name, group: oneGroupName, node: r.node, ip: r.podIPs.take(), roleAddr: ra})
	_, err := r.e.cs.CoreV1().Pods(r.ns).Create(ctx, p, metav1.CreateOptions{FieldManager: fieldManager})
	return name, err
}

// firstPair: the first pod alone becomes active; the second joins as
// standby.
func (r *oneRun) firstPair(ctx context.Context) (active, standby string, err error) {
	if active, err = r.create(ctx); err != nil {
		return "", "", err
	}
	if err := waitUntil(ctx, 20*time.Second, "first active", func() bool {
		s := r.ap.state(active)
		return s.Role == role.Active
	}, r.ap.board.wait); err != nil {
		return "", "", err
	}
	if standby, err = r.create(ctx); err != nil {
		return "", "", err
	}
	return active, standby, r.steady(ctx, active, standby)
}

// steady waits until both pods are Running and Ready with the labels and
// app roles they should have, and the EndpointSlice lists only the active.
func (r *oneRun) steady(ctx context.Context, active, standby string) error {
	return waitUntil(ctx, 20*time.Second, fmt.Sprintf("steady state (active %s, standby %s)", active, standby), func() bool {
		a, ok1 := r.pw.get(active)
		s, ok2 := r.pw.get(standby)
		if !ok1 || !ok2 || len(r.pw.group(oneGroupName)) != 2 || !runningReady(a) || !runningReady(s) ||
			a.Labels[roleLabel] != activeRole || s.Labels[roleLabel] != standbyRole {
			return false
		}
		as := r.ap.state(active)
		ss := r.ap.state(standby)
		if as.Role != role.Active || ss.Role != role.Standby {
			return false
		}
		_, ok := r.pw.onlySince(a.Status.PodIP)
		return ok
	}, r.pw.changed, r.ap.board.wait, r.ctl.Changed)
}

// probe times the floor any controller pays: a label PATCH of the bench's
// own (on the standby, which the controller then ignores), to its response
// and to its event on the bench's watch.
func (r *oneRun) probe(ctx context.Context, i int, standby string) error {
	probe := strconv.Itoa(i)
	patch := fmt.Appendf(nil, `{"metadata":{"labels":{%q:%q}}}`, probeLabel, probe)
	p0 := time.Now()
	if _, err := r.e.cs.CoreV1().Pods(r.ns).Patch(ctx, standby, types.MergePatchType, patch, metav1.PatchOptions{FieldManager: fieldManager}); err != nil {
		return fmt.Errorf("probe patch: %w", err)
	}
	r.floorReturned = append(r.floorReturned, time.Since(p0))
	if err := waitUntil(ctx, 10*time.Second, "probe patch on the watch", func() bool {
		p, ok := r.pw.get(standby)
		return ok && p.Labels[probeLabel] == probe
	}, r.pw.changed); err != nil {
		return err
	}
	r.floorWatched = append(r.floorWatched, r.pw.updated(standby).Sub(p0))
	return nil
}

// failover triggers failover i, collects its stages, then waits for the old
// pod to go (the controller deletes a pod whose critical container died;
// its app goes with it) and a replacement standby to settle. It returns the
// new active and standby.
func (r *oneRun) failover(ctx context.Context, i int, trigger, active, standby string) (string, string, error) {
	old, _ := r.pw.get(active)
	next, _ := r.pw.get(standby)
	var t0 time.Time
	var err error
	switch trigger {
	case TriggerDelete:
		uid := old.UID
		t0 = time.Now()
		err = r.e.cs.CoreV1().Pods(r.ns).Delete(ctx, old.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}})
	case TriggerCritical:
		t0, err = terminateContainer(ctx, r.e.cs, old, appContainer, 137, "OOMKilled")
	}
	if err != nil {
		return "", "", fmt.Errorf("failover %d (%s): trigger: %w", i, trigger, err)
	}
	var st stageTimes
	if err := waitUntil(ctx, 15*time.Second, fmt.Sprintf("failover %d (%s) to %s", i, trigger, next.Name), func() bool {
		return st.collect(r.pw, r.ap, r.ctl, next, t0)
	}, r.pw.changed, r.ap.board.wait, r.ctl.Changed); err != nil {
		return "", "", fmt.Errorf("%w (got %+v)", err, st)
	}
	if r.samples[trigger] == nil {
		r.samples[trigger] = map[string][]time.Duration{}
	}
	for stage, at := range st.stages() {
		r.samples[trigger][stage] = append(r.samples[trigger][stage], at.Sub(t0))
	}

	if err := waitUntil(ctx, 15*time.Second, "old active gone", func() bool {
		_, ok := r.pw.get(old.Name)
		return !ok
	}, r.pw.changed); err != nil {
		return "", "", err
	}
	r.ap.close(old.Name)
	if standby, err = r.create(ctx); err != nil {
		return "", "", err
	}
	return next.Name, standby, r.steady(ctx, next.Name, standby)
}

// results are the samples as series, the reference row last.
func (r *oneRun) results() []TriggerResult {
	var out []TriggerResult
	for _, t := range oneGroupTriggers {
		tr := TriggerResult{Trigger: t}
		for _, stage := range OneGroupStages {
			tr.Stages = append(tr.Stages, newSeries(stage, durationsMs(r.samples[t][stage])))
		}
		out = append(out, tr)
	}
	return append(out, TriggerResult{Trigger: TriggerNone, Stages: []Series{
		newSeries(StagePatchReturned, durationsMs(r.floorReturned)),
		newSeries(StagePatchWatched, durationsMs(r.floorWatched)),
	}})
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
func (st *stageTimes) collect(pw *podWatch, ap *apps, ctl *ctrlproc.Controller, next *corev1.Pod, t0 time.Time) bool {
	if t, ok := pw.activeAfter(next.UID, t0); ok {
		st.labelWatch = t
	}
	if at := ap.activeAfter(next.Name, t0); !at.IsZero() {
		st.ack = at
	}
	if t, ok := pw.onlySince(next.Status.PodIP); ok && st.endpoints.IsZero() {
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
