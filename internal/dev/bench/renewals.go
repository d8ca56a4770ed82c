package bench

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"syscall"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/hapod/hapod/internal/dev/child"
	"github.com/hapod/hapod/internal/dev/ctrlproc"
	"github.com/hapod/hapod/internal/dev/poll"
	"github.com/hapod/hapod/pkg/role"
)

// RenewalResult is what keeping n role leases alive costs, over a steady
// period in which nothing but renewals happens.
type RenewalResult struct {
	Groups  int     `json:"groups"`
	Seconds float64 `json:"seconds"`
	// Renewals sent and acked per second, and in the whole period the
	// renewals missed (no ack before the next one), retried (the app had
	// lost its lease) and the leases lapsed (failovers).
	SentPerSec  float64 `json:"sentPerSecond"`
	AckedPerSec float64 `json:"ackedPerSecond"`
	Missed      float64 `json:"missed"`
	Retry       float64 `json:"retry"`
	Lapses      float64 `json:"lapses"`
	// CPU seconds per second: the controller's process, the bench's (the
	// n apps' listeners), the API server's (renewals cost it nothing).
	ControllerCPU float64 `json:"controllerCpuPerSecond"`
	BenchCPU      float64 `json:"benchCpuPerSecond"`
	APIServerCPU  float64 `json:"apiserverCpuPerSecond,omitempty"`
	// APIRequests are the controller's requests in the period.
	APIRequests float64 `json:"apiRequests"`
}

// SoakResult is a long steady period of healthy groups with every core kept
// busy: no group may fail over.
type SoakResult struct {
	Groups    int     `json:"groups"`
	Seconds   float64 `json:"seconds"`
	BusyLoops int     `json:"busyLoops"`
	// Load1 is the 1-minute load average, sampled every few seconds.
	Load1 Summary `json:"load1"`
	RenewalResult
	// Failovers are promotions the controller recorded in the period
	// (with Lapses, must be 0). Fenced are the times an app's lease ran
	// out before a renewal reached it (the controller starved past the
	// TTL's slack): the app was standby until the controller's next
	// renewal granted it the role again, a round trip later, without a
	// failover. Changes are every role change any app reported.
	Failovers int `json:"failovers"`
	Fenced    int `json:"fenced"`
	Changes   int `json:"changes"`
}

// FalseFailovers is what a healthy group should never see: a lease
// declared lapsed, or a promotion.
func (s *SoakResult) FalseFailovers() int {
	return s.Failovers + int(s.Lapses)
}

// leaseRun is n groups whose actives hold role leases, on one controller:
// the renewal cost and the soak share it.
type leaseRun struct {
	e    *Env
	o    Options
	ctl  *ctrlproc.Controller
	ap   *apps
	pods []string
	// standbys, if not empty, are a second pod per group.
	standbys []string
	cleanups []func()
}

func (l *leaseRun) tearDown() {
	for i := len(l.cleanups) - 1; i >= 0; i-- {
		l.cleanups[i]()
	}
}

// setUp creates n groups (two pods each if pairs, else one), every app a
// pkg/role listener in the bench process on the pod's loopback IP, and
// waits until every active holds its lease and the setup's API writes
// have drained.
func (e *Env) leaseGroups(ctx context.Context, o Options, n int, pairs bool, name string) (*leaseRun, error) {
	l := &leaseRun{e: e, o: o, ap: newApps()}
	ok := false
	defer func() {
		if !ok {
			l.tearDown()
		}
	}()
	ns, delNS, err := e.namespace(ctx, name)
	if err != nil {
		return nil, err
	}
	l.cleanups = append(l.cleanups, delNS)
	port := 20000 + rand.IntN(40000)
	l.cleanups = append(l.cleanups, l.ap.closeAll)
	if l.ctl, err = o.startController(ctx, e, ns, port, "controller-"+name); err != nil {
		return nil, err
	}
	l.cleanups = append(l.cleanups, l.ctl.Stop)
	sides := []*[]string{&l.pods}
	if pairs {
		sides = append(sides, &l.standbys)
	}
	setup := time.Duration(n)*30*time.Millisecond + 30*time.Second
	for side, names := range sides {
		lane := loopbackLane()
		node, delNode, err := e.node(ctx, fmt.Sprintf("%s-%d", name, side), lane.String())
		if err != nil {
			return nil, err
		}
		l.cleanups = append(l.cleanups, delNode)
		ips := newAddrs(lane)
		specs := make([]podSpec, n)
		for i := range n {
			ip := ips.take()
			specs[i] = podSpec{name: fmt.Sprintf("g%d-%d", i, side), group: fmt.Sprintf("g%d", i), node: node, ip: ip}
			if err := l.ap.listen(ctx, specs[i].name, netip.AddrPortFrom(ip, uint16(port))); err != nil {
				return nil, err
			}
			*names = append(*names, specs[i].name)
		}
		if err := parallel(ctx, 32, n, func(i int) error {
			_, err := e.cs.CoreV1().Pods(ns).Create(ctx, newPod(specs[i]), metav1.CreateOptions{FieldManager: fieldManager})
			return err
		}); err != nil {
			return nil, err
		}
		want := role.Active
		if side > 0 {
			want = role.Standby
		}
		if err := waitUntil(ctx, setup, fmt.Sprintf("%d apps told %s", n, want), l.allHold(*names, want), l.ap.board.wait); err != nil {
			return nil, err
		}
	}
	if _, err := quiet(ctx, l.ctl, 2*time.Second, time.Minute); err != nil {
		return nil, err
	}
	ok = true
	return l, nil
}

func (l *leaseRun) allHold(pods []string, want role.Role) func() bool {
	return func() bool {
		for _, p := range pods {
			if st := l.ap.state(p); st.Role != want {
				return false
			}
		}
		return true
	}
}

// leaseCounters are the controller's lease counters and CPU times at one
// moment.
type leaseCounters struct {
	at                time.Time
	renewals, lapses  map[string]float64
	requests          float64
	ctl, bench, apisv float64
	records           int
	fenced, changes   int
}

func (l *leaseRun) counters(ctx context.Context) (leaseCounters, error) {
	c := leaseCounters{at: time.Now()}
	var err error
	url := l.ctl.MetricsURL()
	if c.renewals, err = scrapeCounter(ctx, url, "hapod_lease_renewals_total", "result"); err != nil {
		return c, err
	}
	if c.lapses, err = scrapeCounter(ctx, url, "hapod_lease_lapses_total", "cause"); err != nil {
		return c, err
	}
	req, err := apiRequests(ctx, url)
	if err != nil {
		return c, err
	}
	c.requests = sum(req)
	if c.ctl, err = cpuSeconds(l.ctl.Pid()); err != nil {
		return c, err
	}
	c.bench, _ = cpuSeconds(os.Getpid())
	if l.e.APIServerPID != 0 {
		c.apisv, _ = cpuSeconds(l.e.APIServerPID)
	}
	c.records = len(l.ctl.Records())
	c.fenced, c.changes = l.ap.counts()
	return c, nil
}

// result is the cost between two counter readings.
func (l *leaseRun) result(a, b leaseCounters) RenewalResult {
	secs := b.at.Sub(a.at).Seconds()
	d := func(m, n map[string]float64, k string) float64 { return n[k] - m[k] }
	return RenewalResult{
		Groups: len(l.pods), Seconds: secs,
		SentPerSec:    d(a.renewals, b.renewals, "sent") / secs,
		AckedPerSec:   d(a.renewals, b.renewals, "acked") / secs,
		Missed:        d(a.renewals, b.renewals, "missed"),
		Retry:         d(a.renewals, b.renewals, "retry"),
		Lapses:        sum(b.lapses) - sum(a.lapses),
		ControllerCPU: (b.ctl - a.ctl) / secs,
		BenchCPU:      (b.bench - a.bench) / secs,
		APIServerCPU:  (b.apisv - a.apisv) / secs,
		APIRequests:   b.requests - a.requests,
	}
}

// renewals measures the cost of o.RenewalGroups leases (one pod per group)
// over o.RenewalSteady.
func (e *Env) renewals(ctx context.Context, o Options) (*RenewalResult, error) {
	l, err := e.leaseGroups(ctx, o, o.RenewalGroups, false, "bench-renew")
	if err != nil {
		return nil, err
	}
	defer l.tearDown()
	a, err := l.counters(ctx)
	if err != nil {
		return nil, err
	}
	if err := poll.Pause(ctx, o.RenewalSteady); err != nil {
		return nil, err
	}
	b, err := l.counters(ctx)
	if err != nil {
		return nil, err
	}
	r := l.result(a, b)
	return &r, nil
}

// soak holds o.SoakGroups healthy groups of two pods for o.Soak with one
// busy loop per core running beside everything else, and counts what
// should never happen: a lease lapsed, an app fenced, a failover.
func (e *Env) soak(ctx context.Context, o Options) (*SoakResult, error) {
	l, err := e.leaseGroups(ctx, o, o.SoakGroups, true, "bench-soak")
	if err != nil {
		return nil, err
	}
	defer l.tearDown()
	busy := runtime.NumCPU()
	stop, err := busyLoops(busy)
	if err != nil {
		return nil, err
	}
	defer stop()
	a, err := l.counters(ctx)
	if err != nil {
		return nil, err
	}
	var load []float64
	end := time.Now().Add(o.Soak)
	for time.Now().Before(end) {
		if err := poll.Pause(ctx, min(5*time.Second, time.Until(end))); err != nil {
			return nil, err
		}
		if v, ok := load1(); ok {
			load = append(load, v)
		}
		if c, err := l.counters(ctx); err == nil && len(load)%12 == 0 {
			e.Log.Info("soak", "left", time.Until(end).Round(time.Second).String(), "load1", load[len(load)-1],
				"lapses", sum(c.lapses)-sum(a.lapses), "failovers", c.records-a.records, "fenced", c.fenced-a.fenced)
		}
	}
	b, err := l.counters(ctx)
	if err != nil {
		return nil, err
	}
	return &SoakResult{
		Groups: o.SoakGroups, Seconds: b.at.Sub(a.at).Seconds(), BusyLoops: busy,
		Load1: summarise(load), RenewalResult: l.result(a, b),
		Failovers: b.records - a.records, Fenced: b.fenced - a.fenced, Changes: b.changes - a.changes,
	}, nil
}

// busyLoops starts n shell busy loops at the default priority, each its own
// process as another tenant's work would be, and returns what stops them.
func busyLoops(n int) (func(), error) {
	var cmds []*exec.Cmd
	stop := func() {
		for _, c := range cmds {
			_ = syscall.Kill(-c.Process.Pid, syscall.SIGKILL)
			_ = c.Wait()
		}
	}
	for range n {
		c := exec.Command("/bin/sh", "-c", "while :; do :; done")
		if err := child.Start(c); err != nil {
			stop()
			return nil, fmt.Errorf("busy loop: %w", err)
		}
		cmds = append(cmds, c)
	}
	return stop, nil
}
