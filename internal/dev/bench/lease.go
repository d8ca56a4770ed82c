package bench

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"path/filepath"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/hapod/hapod/internal/dev/ctrlproc"
	"github.com/hapod/hapod/internal/dev/poll"
	"github.com/hapod/hapod/pkg/role"
)

// How a kill of the active app reaches the controller.
const (
	// DetectLease: nothing tells the API; the controller sees the role
	// lease's renewals go unacked until the lease has certainly lapsed.
	DetectLease = "role lease (nothing tells the API)"
	// DetectAPI: right after the kill the bench writes the critical
	// container terminated, as a kubelet would if it noticed at once.
	DetectAPI = "API, told at once (critical container terminated)"
)

var detections = []string{DetectLease, DetectAPI}

// LeaseResult is the kill -9 scenario: the active app's process SIGKILLed,
// the clock from the kill to the new active's app holding the role.
type LeaseResult struct {
	Kills []KillSeries `json:"kills"`
	// Overlaps are moments at which two apps held the active role at
	// once, from the apps' own reports: must be 0.
	Overlaps int `json:"overlaps"`
}

// KillSeries is one way of detecting the kill.
type KillSeries struct {
	Detection string `json:"detection"`
	Series    Series `json:"series"`
	// Reasons are the controller's failover reasons (record.Record.Reason)
	// and how often each was given: the proof of which path acted.
	Reasons map[string]int `json:"reasons"`
}

// leaseGroup is the kill scenario's group (and its pods' name prefix).
const leaseGroup = "lease"

// leaseKills kills the active app o.LeaseKills times per detection path,
// alternating the paths. The apps are hapod-demo processes
// (internal/dev/appproc), so a kill is a real SIGKILL of the process that
// holds the role; the controller runs with its default lease flags.
//
// After each failover the killed pod is reported dead through the API (at
// once on the API path; on the lease path only once the new active has the
// role, as a real kubelet reports it up to a second later), the controller
// deletes it, and the bench creates its replacement, which must settle as
// standby before the next kill.
func (e *Env) leaseKills(ctx context.Context, o Options) (*LeaseResult, int, error) {
	r := &killRun{e: e, o: o, port: 20000 + rand.IntN(40000), samples: map[string][]time.Duration{}, reasons: map[string]map[string]int{}}
	defer r.tearDown()
	if err := r.setUp(ctx); err != nil {
		return nil, r.unasked, err
	}
	active, err := r.create(ctx)
	if err != nil {
		return nil, r.unasked, err
	}
	if err := waitUntil(ctx, 30*time.Second, "first active", func() bool {
		return r.ap.holds(active) == role.Active
	}, r.ap.board.wait); err != nil {
		return nil, r.unasked, err
	}
	standby, err := r.create(ctx)
	if err != nil {
		return nil, r.unasked, err
	}
	if err := r.steady(ctx, active, standby); err != nil {
		return nil, r.unasked, err
	}
	for i := range 2 * o.LeaseKills {
		// A pace, not a wait for anything: the kill lands at a random
		// moment of the renewal cycle.
		if err := poll.Pause(ctx, settle+rand.N(settle)); err != nil {
			return nil, r.unasked, err
		}
		if active, standby, err = r.recheck(ctx, active, standby); err != nil {
			return nil, r.unasked, err
		}
		if active, standby, err = r.kill(ctx, i, detections[i%2], active, standby); err != nil {
			return nil, r.unasked, err
		}
		if (i+1)%20 == 0 {
			e.Log.Info("kill -9", "kills", i+1, "of", 2*o.LeaseKills)
		}
	}
	res := &LeaseResult{Overlaps: overlaps(r.ap.intervals())}
	for _, d := range detections {
		res.Kills = append(res.Kills, KillSeries{Detection: d, Series: newSeries(d, durationsMs(r.samples[d])), Reasons: r.reasons[d]})
	}
	return res, r.unasked, nil
}

// killRun is the kill scenario's cluster objects, watch, apps, controller
// and samples.
type killRun struct {
	e    *Env
	o    Options
	port int // every app's role port; its HTTP port is the next one

	ns, node string
	ips      *addrs
	pw       *podWatch
	ap       *procApps
	ctl      *ctrlproc.Controller
	seq      int
	cleanups []func()

	samples map[string][]time.Duration
	reasons map[string]map[string]int
	unasked int // failovers the bench did not cause (recheck)
}

func (r *killRun) tearDown() {
	for i := len(r.cleanups) - 1; i >= 0; i-- {
		r.cleanups[i]()
	}
}

func (r *killRun) setUp(ctx context.Context) error {
	e := r.e
	ns, delNS, err := e.namespace(ctx, "bench-lease")
	if err != nil {
		return err
	}
	r.ns, r.cleanups = ns, append(r.cleanups, delNS)
	lane := loopbackLane()
	r.ips = newAddrs(lane)
	node, delNode, err := e.node(ctx, "bench-lease", lane.String())
	if err != nil {
		return err
	}
	r.node, r.cleanups = node, append(r.cleanups, delNode)
	if r.pw, err = watchPods(ctx, e.cs, ns, benchLabel+"=true", ""); err != nil {
		return err
	}
	r.cleanups = append(r.cleanups, r.pw.stop)
	r.ap = newProcApps(e.DemoBin, filepath.Join(e.WorkDir, "apps-"+ns))
	r.cleanups = append(r.cleanups, r.ap.stopAll)
	if r.ctl, err = r.o.startController(ctx, e, ns, r.port, "controller-lease"); err != nil {
		return err
	}
	r.cleanups = append(r.cleanups, r.ctl.Stop)
	return nil
}

// create creates the next pod, then starts its app with the pod's UID, as
// a kubelet starts a container once the pod exists.
func (r *killRun) create(ctx context.Context) (string, error) {
	name := fmt.Sprintf("%s-%d", leaseGroup, r.seq)
	r.seq++
	ip := r.ips.take()
	p, err := r.e.cs.CoreV1().Pods(r.ns).Create(ctx, newPod(podSpec{name: name, group: leaseGroup, node: r.node, ip: ip}),
		metav1.CreateOptions{FieldManager: fieldManager})
	if err != nil {
		return "", err
	}
	return name, r.ap.start(name, p.UID, netip.AddrPortFrom(ip, uint16(r.port)), netip.AddrPortFrom(ip, uint16(r.port+1)))
}

// steady waits until both pods are Running and Ready with the labels and
// app roles they should have.
func (r *killRun) steady(ctx context.Context, active, standby string) error {
	return waitUntil(ctx, 30*time.Second, fmt.Sprintf("steady state (active %s, standby %s)", active, standby), func() bool {
		a, ok1 := r.pw.get(active)
		s, ok2 := r.pw.get(standby)
		return ok1 && ok2 && runningReady(a) && runningReady(s) &&
			a.Labels[roleLabel] == activeRole && s.Labels[roleLabel] == standbyRole &&
			r.ap.holds(active) == role.Active && r.ap.holds(standby) == role.Standby
	}, r.pw.changed, r.ap.board.wait, r.ctl.Changed)
}

// recheck makes sure, just before a kill, that the apps still hold what
// the last steady state found (see oneRun.recheck).
func (r *killRun) recheck(ctx context.Context, active, standby string) (string, string, error) {
	if r.ap.holds(active) == role.Active && r.ap.holds(standby) == role.Standby {
		return active, standby, nil
	}
	r.unasked++
	r.e.Log.Warn("a failover the bench did not cause", "active", active, "holds", r.ap.holds(active), "standby", standby, "holds", r.ap.holds(standby))
	if p, ok := r.pw.get(standby); ok && p.Labels[roleLabel] == activeRole {
		active, standby = standby, active
	}
	return active, standby, r.steady(ctx, active, standby)
}

// kill kills the active's app, times the standby's app taking the role,
// then replaces the dead pod. It returns the new active and standby.
func (r *killRun) kill(ctx context.Context, i int, detection, active, standby string) (string, string, error) {
	old, _ := r.pw.get(active)
	killed, err := r.ap.kill(active)
	took := func() time.Time { return r.ap.activeAfter(standby, killed) }
	if err != nil {
		return "", "", err
	}
	report := func() error {
		_, err := terminateContainer(ctx, r.e.cs, old, appContainer, 137, "Error")
		return err
	}
	if detection == DetectAPI {
		if err := report(); err != nil {
			return "", "", fmt.Errorf("kill %d: report the container dead: %w", i, err)
		}
	}
	if err := waitUntil(ctx, 15*time.Second, fmt.Sprintf("kill %d (%s): %s takes over", i, detection, standby), func() bool {
		return !took().IsZero()
	}, r.ap.board.wait); err != nil {
		return "", "", err
	}
	r.samples[detection] = append(r.samples[detection], took().Sub(killed))
	if detection == DetectLease {
		if err := report(); err != nil {
			return "", "", fmt.Errorf("kill %d: report the container dead: %w", i, err)
		}
	}
	if err := waitUntil(ctx, 15*time.Second, "the controller's record of the promotion", func() bool {
		_, ok := r.ctl.Promotion(standby)
		return ok
	}, r.ctl.Changed); err != nil {
		return "", "", err
	}
	rec, _ := r.ctl.Promotion(standby)
	if r.reasons[detection] == nil {
		r.reasons[detection] = map[string]int{}
	}
	r.reasons[detection][rec.Reason]++

	if err := waitUntil(ctx, 15*time.Second, "the killed pod deleted", func() bool {
		_, ok := r.pw.get(old.Name)
		return !ok
	}, r.pw.changed); err != nil {
		return "", "", err
	}
	next, err := r.create(ctx)
	if err != nil {
		return "", "", err
	}
	return standby, next, r.steady(ctx, standby, next)
}
