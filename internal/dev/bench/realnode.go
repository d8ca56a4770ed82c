package bench

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/hapod/hapod/internal/dev/clusterip"
	"github.com/hapod/hapod/internal/dev/ctrlproc"
	"github.com/hapod/hapod/internal/dev/netplan"
	"github.com/hapod/hapod/internal/dev/nftwatch"
	"github.com/hapod/hapod/internal/dev/observe"
	"github.com/hapod/hapod/internal/dev/poll"
	"github.com/hapod/hapod/internal/dev/realpod"
)

// Rows of the real-node scenario: real containers on a real kubelet,
// containerd and kube-proxy; each row's clock starts at its trigger.
const (
	// RealKill: SIGKILL of the active's critical process; hapod with its
	// default flags, so its role lease and the kubelet's report race.
	RealKill = "hapod: critical process SIGKILLed"
	// RealKillAPI: the same with a role lease too long to matter (renew
	// 10 s): hapod learns of the death from the kubelet's report only.
	RealKillAPI = "hapod, API detection only: critical process SIGKILLed"
	// RealDelete: the active pod deleted (default grace: the app gets
	// SIGTERM and runs on during its termination).
	RealDelete = "hapod: active pod deleted"
	// RealRestart: no hapod, one pod behind the Service: SIGKILL of its
	// process and the kubelet's restart in place, what "Kubernetes will
	// restart it" gives.
	RealRestart = "baseline, no hapod: the kubelet restarts the container in place"
	// RealNoStandby: no hapod, one pod deleted, its ReplicaSet's
	// replacement started and initialised.
	RealNoStandby = "baseline, no standby: pod deleted, the ReplicaSet's replacement"
	// RealLEDefault and RealLEAggressive: no hapod, two replicas of an app
	// that elect their leader with client-go leader election
	// (cmd/hapod-le-app), the leader labelling its own pod active: SIGKILL
	// of the leader's process, the kubelet restarting it in place (the
	// pod's default policy) as a candidate.
	RealLEDefault    = "baseline, client-go leader election 15s/10s/2s: leader's process SIGKILLed"
	RealLEAggressive = "baseline, client-go leader election 2s/1s/200ms: leader's process SIGKILLed"
)

// leTimings are the leader-election rows' timings.
var leTimings = map[string]Timings{RealLEDefault: DefaultTimings, RealLEAggressive: AggressiveTimings}

// Stages of a real-node failover.
const (
	StageTerminated = "terminated in the API"                // the kubelet's report of the death
	StageAppActive  = "new active's app has the role"        // its own record, from inside its container
	StageLabelSeen  = "label seen on a watch"                // the bench's watch
	StageSlice      = "EndpointSlice = new pod"              // ready addresses are exactly its
	StageRule       = "kube-proxy rule to new pod"           // nft monitor: the Service's chain sends to it
	StageClusterIP  = "first answer via ClusterIP, new pod"  // through kube-proxy's rules: the user's view
	StageFailedReqs = "requests failed or refused meanwhile" // a count, not a time
)

// RealNodeResult is the real-node scenario.
type RealNodeResult struct {
	Rows []TriggerResult `json:"rows"`
	// Overlaps are moments two apps held active at once, from their own
	// records: must be 0.
	Overlaps int `json:"overlaps"`
	// Reasons are the controller's failover reasons per row.
	Reasons map[string]map[string]int `json:"reasons"`
}

// realNodeRun is one row's group: namespace, Service, ReplicaSet,
// observer, prober and (for hapod's rows) the controller.
type realNodeRun struct {
	e *Env
	// pair: the row keeps an active and a standby (hapod's rows and
	// leader election's); le: leader election's.
	pair, le bool
	name     string
	ns       string
	records  string
	obs      *observe.Observer[struct{}]
	prober   *clusterip.Prober
	nft      *nftwatch.Watch
	ctl      *ctrlproc.Controller
	samples  map[string][]time.Duration
	reasons  map[string]int
	failed   []float64
	killed   map[string][]time.Time // pod -> when the bench killed its app
	cleanup  []func()
}

// runRealNodes runs the real-node scenario into r.
func (e *Env) runRealNodes(ctx context.Context, o Options, r *Results, fail func(string, error)) {
	e.Log.Info("real nodes: real containers, kubelet, containerd, kube-proxy", "samples per row", o.RealNodeSamples)
	res, err := e.realNodes(ctx, o)
	if err != nil {
		fail("real node", err)
	}
	if res != nil && len(res.Rows) > 0 {
		r.RealNode = res
	}
	if res != nil && res.Overlaps > 0 {
		fail("real node", fmt.Errorf("%d moments two apps held active at once", res.Overlaps))
	}
}

// realNodes runs every row of the real-node scenario, n samples each.
func (e *Env) realNodes(ctx context.Context, o Options) (*RealNodeResult, error) {
	res := &RealNodeResult{Reasons: map[string]map[string]int{}}
	for _, row := range []string{RealKill, RealKillAPI, RealDelete, RealRestart, RealNoStandby, RealLEDefault, RealLEAggressive} {
		if len(o.RealNodeRows) > 0 && !slices.Contains(o.RealNodeRows, row) {
			continue
		}
		e.Log.Info("real node", "row", row, "samples", o.RealNodeSamples)
		r, err := e.realNodeRow(ctx, o, row)
		if r != nil {
			res.Overlaps += r.overlaps()
			r.tearDown()
		}
		if err != nil {
			return res, fmt.Errorf("%s: %w", row, err)
		}
		res.Rows = append(res.Rows, r.result(row))
		res.Reasons[row] = r.reasons
	}
	return res, nil
}

func (e *Env) realNodeRow(ctx context.Context, o Options, row string) (*realNodeRun, error) {
	hapod := row == RealKill || row == RealKillAPI || row == RealDelete
	le, isLE := leTimings[row]
	r := &realNodeRun{e: e, name: "real", pair: hapod || isLE, le: isLE,
		samples: map[string][]time.Duration{}, reasons: map[string]int{}, killed: map[string][]time.Time{}}
	ns, del, err := e.namespace(ctx, "bench-real")
	if err != nil {
		return nil, err
	}
	r.ns = ns
	r.cleanup = append(r.cleanup, del)
	if r.records, err = realpod.RecordsDir(ns); err != nil {
		return r, err
	}
	labels := map[string]string{"app": r.name}
	svcSel := map[string]string{"app": r.name}
	replicas := int32(1)
	if r.pair {
		labels[roleLabel] = standbyRole
		svcSel[roleLabel] = activeRole
		replicas = 2
	}
	if hapod {
		labels[benchLabel] = "true"
	}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: r.name},
		Spec:       corev1.ServiceSpec{Selector: svcSel, Ports: []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(8080)}}},
	}
	created, err := e.cs.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{FieldManager: fieldManager})
	if err != nil {
		return r, err
	}
	r.obs, err = observe.Start[struct{}](ctx, e.cs, observe.Config{
		Namespace: ns, PodSelector: "app=" + r.name, Service: r.name, RoleLabel: roleLabel, ActiveValue: activeRole,
	})
	if err != nil {
		return r, err
	}
	r.cleanup = append(r.cleanup, r.obs.Stop)
	r.prober = clusterip.Start(ctx, "http://"+created.Spec.ClusterIP+"/", 2*time.Millisecond)
	r.cleanup = append(r.cleanup, r.prober.Stop)
	if r.nft, err = nftwatch.Start(ctx); err != nil {
		return r, err
	}
	r.cleanup = append(r.cleanup, r.nft.Stop)
	if hapod {
		args := []string{
			"-selector", benchLabel + "=true", "-group-label", "app",
			"-notify-cidrs", netplan.RealNodePodsAll.String(), "-notify-bind-address", "0.0.0.0:0",
		}
		if row == RealKillAPI {
			args = append(args, "-lease-renew", "10s", "-lease-ttl", "40s")
		}
		r.ctl, err = ctrlproc.Start(ctx, ctrlproc.Options{
			Bin: e.ControllerBin, Kubeconfig: e.Kubeconfig, Namespaces: ns, Args: args,
			LogPath: filepath.Join(e.WorkDir, "controller-real-"+strconv.Itoa(len(row))+".log"),
		})
		if err != nil {
			return r, err
		}
		r.cleanup = append(r.cleanup, r.ctl.Stop)
	}
	po := realpod.Options{
		Labels: labels, Records: r.records, InitDelay: o.InitDelay,
		// hapod's rows as deploy/example ships; the baselines need the
		// kubelet's restart.
		CriticalNever: hapod,
		AlwaysActive:  !r.pair,
		Spread:        map[string]string{"app": r.name},
	}
	if isLE {
		// The app reaches the API server from its container with a
		// kubeconfig in its records directory.
		if err := e.copyPodKubeconfig(filepath.Join(r.records, realpod.KubeconfigFile)); err != nil {
			return r, err
		}
		po.LeaderElection = &realpod.LeaderElection{Lease: r.name, Peers: "app=" + r.name,
			LeaseDuration: le.LeaseDuration, RenewDeadline: le.RenewDeadline, RetryPeriod: le.RetryPeriod}
	}
	rs := &appsv1.ReplicaSet{
		ObjectMeta: metav1.ObjectMeta{Name: r.name},
		Spec: appsv1.ReplicaSetSpec{
			Replicas: ptr.To(replicas),
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": r.name}},
			Template: realpod.Template(po),
		},
	}
	if _, err := e.cs.AppsV1().ReplicaSets(ns).Create(ctx, rs, metav1.CreateOptions{FieldManager: fieldManager}); err != nil {
		return r, err
	}
	for i := range o.RealNodeSamples {
		if err := r.sample(ctx, row); err != nil {
			return r, fmt.Errorf("sample %d: %w", i+1, err)
		}
	}
	return r, nil
}

func (r *realNodeRun) tearDown() {
	for i := len(r.cleanup) - 1; i >= 0; i-- {
		r.cleanup[i]()
	}
}

// steady waits for the row's steady state and returns the pod serving the
// Service (and, for hapod, the standby): for hapod one active whose app is
// active at the label's epoch and one Ready standby whose app is standby; for
// a baseline its one pod Ready. Either way the ClusterIP answers from it.
func (r *realNodeRun) steady(ctx context.Context) (*observe.Pod[struct{}], *observe.Pod[struct{}], error) {
	// Polled, not waited for on the observer: the apps' records are files,
	// whose changes the observer does not see. The pods are copied inside
	// the observer's lock: its watch goroutines update them.
	why := ""
	var serving, standby *observe.Pod[struct{}]
	err := poll.Until(ctx, 2*time.Minute, func() (ok bool, _ error) {
		r.obs.Read(func() {
			var sv, sb *observe.Pod[struct{}]
			if ok, why = r.steadyLocked(&sv, &sb); ok {
				c := sv.Clone()
				serving = &c
				if sb != nil {
					d := sb.Clone()
					standby = &d
				}
			}
		})
		return ok, nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("steady state: %w (%s)", err, why)
	}
	// And kube-proxy routes to it alone: every answer of the last 200 ms
	// (about 100 requests) came from that pod. (A fresh answer is not
	// enough: kube-proxy may still send some requests to the pod before.)
	since := time.Now()
	err = poll.Until(ctx, time.Minute, func() (bool, error) {
		now := time.Now()
		if now.Sub(since) < 200*time.Millisecond {
			return false, nil
		}
		hits := r.prober.Between(now.Add(-200*time.Millisecond), now)
		for _, h := range hits {
			if h.Pod != serving.Name {
				return false, nil
			}
		}
		return len(hits) > 0, nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("the ClusterIP does not answer from %s: %w; the last second's answers: %s",
			serving.Name, err, r.prober.Timeline(time.Now().Add(-time.Second), time.Now()))
	}
	return serving, standby, nil
}

// steadyLocked is steady's condition, inside the observer's lock.
func (r *realNodeRun) steadyLocked(serving, standby **observe.Pod[struct{}]) (bool, string) {
	*serving, *standby = nil, nil
	apps := realpod.Latest(r.records)
	for _, p := range r.obs.LiveLocked() {
		// A pod the bench killed may still look Ready until the kubelet
		// reports it (and hapod's rows never restart it): not a candidate.
		if !p.Ready || p.IP == "" || (r.ctl != nil && len(r.killed[p.Name]) > 0) || realpod.ContainerID(p.Object, realpod.Critical) == "" {
			continue
		}
		app := apps[p.Name]
		switch {
		case !r.pair:
			*serving = p
		// hapod's epoch is on the pod too; leader election's only in the
		// app's records (the Lease's transitions).
		case p.Role == activeRole && app.Role == activeRole && (r.le || app.Epoch == p.Epoch):
			*serving = p
		case p.Role == standbyRole && app.Role == standbyRole:
			*standby = p
		}
	}
	if *serving == nil || (r.pair && *standby == nil) {
		why := "no steady pair yet:"
		for _, p := range r.obs.LiveLocked() {
			why += fmt.Sprintf(" %s(label %s@%d ready=%v app %s@%d)", p.Name, p.Role, p.Epoch, p.Ready, apps[p.Name].Role, apps[p.Name].Epoch)
		}
		return false, why
	}
	return r.obs.LastSliceLocked().ListsOnly((*serving).IP), "EndpointSlice not on the serving pod yet"
}

// sample takes one failover (or restart) of row and records its stages.
func (r *realNodeRun) sample(ctx context.Context, row string) error {
	old, standby, err := r.steady(ctx)
	if err != nil {
		return err
	}
	// Settle: the last replacement's probes and writes quiet down (a pace,
	// the steady state was reached).
	if err := poll.Pause(ctx, 500*time.Millisecond); err != nil {
		return err
	}
	var t0 time.Time
	kill := row != RealDelete && row != RealNoStandby
	if kill {
		if t0, _, err = realpod.Kill(old.Object, realpod.Critical); err != nil {
			return err
		}
		r.killed[old.Name] = append(r.killed[old.Name], t0)
	} else {
		t0 = time.Now()
		if err := r.e.cs.CoreV1().Pods(r.ns).Delete(ctx, old.Name, metav1.DeleteOptions{}); err != nil {
			return err
		}
	}
	next, terminated, err := r.waitNext(ctx, row, kill, t0, old, standby)
	if err != nil {
		return err
	}
	answered := poll.Until(ctx, time.Minute, func() (bool, error) {
		_, ok := r.prober.FirstFrom(next, t0)
		return ok, nil
	})
	if answered != nil {
		return fmt.Errorf("no answer via the ClusterIP from %s: %w", next, answered)
	}
	at, _ := r.prober.FirstFrom(next, t0)
	r.add(StageClusterIP, at.Sub(t0))
	r.e.Log.Info("real node sample", "row", row, "killed", old.Name, "next", next, "requests", r.prober.Timeline(t0.Add(-10*time.Millisecond), at.Add(10*time.Millisecond)))
	r.failed = append(r.failed, float64(r.prober.FailedBetween(t0, at)))
	if kill && !terminated.IsZero() {
		r.add(StageTerminated, terminated.Sub(t0))
	}
	r.recordStages(next, t0)
	return nil
}

// waitNext waits until the pod that serves next (hapod's standby, or for a
// baseline the restarted pod or its replacement) is in the EndpointSlice
// alone, and returns it with when the kubelet's report of the death was
// seen (zero if none was).
func (r *realNodeRun) waitNext(ctx context.Context, row string, kill bool, t0 time.Time, old, standby *observe.Pod[struct{}]) (next string, terminated time.Time, err error) {
	restarts := realpod.RestartCount(old.Object, realpod.Critical)
	// Polled as well as woken by the watches: leader election's condition
	// reads the apps' records, files the observer does not see. When the
	// killed process, restarted in place, takes the Lease, its record is the
	// last thing to change: its pod is already Ready, labelled active and
	// alone in the EndpointSlice, and no watch event follows.
	err = r.obs.WaitForEvery(ctx, time.Minute, poll.Interval, "failover", func() (bool, string) {
		if kill && terminated.IsZero() {
			if p := r.obs.PodLocked(old.UID); p != nil && realpod.DeathReported(p.Object, realpod.Critical, restarts) {
				terminated = p.Updated
			}
		}
		switch {
		case r.le:
			// Whichever candidate takes the Lease: the standby, or the
			// killed process restarted in place (a new identity).
			for _, c := range realpod.Records(r.records) {
				for _, ch := range c {
					if ch.Role == activeRole && ch.At.After(t0) {
						if p := r.obs.PodByNameLocked(ch.Pod); p != nil && p.Ready && r.obs.LastSliceLocked().ListsOnly(p.IP) {
							next = p.Name
							return true, ""
						}
					}
				}
			}
			return false, r.leWaitingLocked(t0)
		case r.pair:
			next = standby.Name
			p := r.obs.PodByNameLocked(next)
			if p == nil || p.LabelledAfter(activeRole, t0).IsZero() {
				return false, "standby not labelled active yet"
			}
			return r.obs.LastSliceLocked().ListsOnly(p.IP), "EndpointSlice not on the new active yet"
		case row == RealRestart:
			next = old.Name
			p := r.obs.PodLocked(old.UID)
			if p == nil || terminated.IsZero() || !p.Ready {
				return false, "not restarted and Ready yet"
			}
			return r.obs.LastSliceLocked().ListsOnly(p.IP), "EndpointSlice not on the restarted pod yet"
		default:
			for _, p := range r.obs.LiveLocked() {
				if p.UID != old.UID && p.Ready && r.obs.LastSliceLocked().ListsOnly(p.IP) {
					next = p.Name
					return true, ""
				}
			}
			return false, "no Ready replacement in the EndpointSlice yet"
		}
	})
	return next, terminated, err
}

// leWaitingLocked says, inside the observer's lock, what leader election's
// failover since t0 is waiting for: every app's records since t0, every
// pod's label, readiness and restarts, and the EndpointSlice's endpoints.
func (r *realNodeRun) leWaitingLocked(t0 time.Time) string {
	var b strings.Builder
	b.WriteString("no new leader in the EndpointSlice alone yet; records since the kill:")
	recs := realpod.Records(r.records)
	for _, pod := range slices.Sorted(maps.Keys(recs)) {
		for _, c := range recs[pod] {
			if c.At.After(t0) {
				fmt.Fprintf(&b, " %s %s@%d +%s", pod, c.Role, c.Epoch, c.At.Sub(t0).Round(time.Millisecond))
			}
		}
	}
	b.WriteString("; pods:")
	for _, p := range r.obs.LiveLocked() {
		fmt.Fprintf(&b, " %s(ip %s label %s ready=%v restarts %d)", p.Name, p.IP, p.Role, p.Ready, realpod.RestartCount(p.Object, realpod.Critical))
	}
	b.WriteString("; EndpointSlice:")
	for _, e := range r.obs.LastSliceLocked().Endpoints {
		fmt.Fprintf(&b, " %s(ready=%v)", e.IP, e.Ready)
	}
	return b.String()
}

// recordStages adds the EndpointSlice, label and app stages of the
// failover that began at t0 and ended with next serving.
func (r *realNodeRun) recordStages(next string, t0 time.Time) {
	var slice time.Time
	r.obs.Read(func() {
		for _, s := range r.obs.SlicesSinceLocked(t0) {
			if s.At.After(t0) && slice.IsZero() {
				if p := r.obs.PodByNameLocked(next); p != nil && s.ListsOnly(p.IP) {
					slice = s.At
				}
			}
		}
	})
	if !slice.IsZero() {
		r.add(StageSlice, slice.Sub(t0))
	}
	if p, ok := r.obs.PodByName(next); ok {
		if l, ok := r.nft.FirstFunc(t0, func(text string) bool { return nftwatch.SendsServiceTo(text, r.ns, r.name, p.IP) }); ok {
			r.add(StageRule, l.At.Sub(t0))
		}
	}
	if r.pair {
		// A leader restarted in place keeps its label: no new label to time.
		if p, ok := r.obs.PodByName(next); ok && !p.LabelledAfter(activeRole, t0).IsZero() {
			r.add(StageLabelSeen, p.LabelledAfter(activeRole, t0).Sub(t0))
		}
		for _, c := range realpod.Records(r.records)[next] {
			if c.Role == activeRole && c.At.After(t0) {
				r.add(StageAppActive, c.At.Sub(t0))
				break
			}
		}
		if r.ctl == nil {
			return
		}
		if rec, ok := r.ctl.Promotion(next); ok {
			r.reasons[rec.Reason]++
		}
	}
}

// copyPodKubeconfig copies the pods' kubeconfig to path, readable by the
// apps' user.
func (e *Env) copyPodKubeconfig(path string) error {
	if e.PodKubeconfig == "" {
		return errors.New("the leader-election rows need Env.PodKubeconfig (a cluster with real nodes)")
	}
	b, err := os.ReadFile(e.PodKubeconfig)
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o644)
}

func (r *realNodeRun) add(stage string, d time.Duration) {
	r.samples[stage] = append(r.samples[stage], d)
}

func (r *realNodeRun) result(row string) TriggerResult {
	tr := TriggerResult{Trigger: row}
	for _, st := range []string{StageTerminated, StageAppActive, StageLabelSeen, StageSlice, StageRule, StageClusterIP} {
		if ds := r.samples[st]; len(ds) > 0 {
			tr.Stages = append(tr.Stages, newSeries(st, durationsMs(ds)))
		}
	}
	tr.Stages = append(tr.Stages, Series{Name: StageFailedReqs, Summary: summarise(r.failed), Ms: r.failed})
	return tr
}

// overlaps counts moments two apps held active at once, and epochs told
// to two apps, from the apps' records and the kills (realpod.Overlaps).
func (r *realNodeRun) overlaps() int {
	if r.records == "" {
		return 0
	}
	o, same := realpod.Overlaps(realpod.Records(r.records), r.killed, time.Now())
	for _, x := range o {
		r.e.Log.Error("two apps active at once", "overlap", x.String())
	}
	for _, x := range same {
		r.e.Log.Error("one epoch, two apps", "what", x)
	}
	return len(o) + len(same)
}
