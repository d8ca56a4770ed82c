package bench

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/hapod/hapod/internal/dev/ctrlproc"
	"github.com/hapod/hapod/internal/dev/localcluster"
	"github.com/hapod/hapod/internal/dev/poll"
	"github.com/hapod/hapod/pkg/role"
)

// Mass failover triggers.
const (
	// MassNode: the node that runs every active turns NotReady.
	MassNode = "node"
	// MassDelete: every active pod is deleted at once.
	MassDelete = "delete"
)

// ScaleResult is one mass failover of n groups.
type ScaleResult struct {
	Groups  int    `json:"groups"`
	Trigger string `json:"trigger"`
	// HAGroups: every group had an HAGroup, whose status the controller
	// wrote too.
	HAGroups  bool `json:"haGroups,omitempty"`
	Completed int  `json:"completed"` // groups whose new active was labelled and acked
	// FalseBefore are groups whose standby had taken over before the
	// trigger (its active's role lease lapsed while the groups were set
	// up, on a starved machine): not failed over by the trigger, not
	// counted.
	FalseBefore int `json:"falseFailoversBefore,omitempty"`
	// From the trigger to each group's new active: Seen by the controller,
	// app has the role, label committed, label on the bench's watch.
	Seen       Series `json:"seen"`
	Ack        Series `json:"ack"`
	Labelled   Series `json:"labelled"`
	LabelWatch Series `json:"labelWatch"`
	// Controller process, over the window from the trigger until its API
	// requests stopped (WindowSeconds).
	WindowSeconds float64            `json:"windowSeconds"`
	CPUSeconds    float64            `json:"cpuSeconds"`
	PeakRSSMiB    float64            `json:"peakRssMiB"` // VmHWM, reset just before the trigger
	RSSBeforeMiB  float64            `json:"rssBeforeMiB"`
	APIRequests   map[string]float64 `json:"apiRequests"` // by HTTP method
	APIPerGroup   float64            `json:"apiRequestsPerFailover"`
	// CPU seconds of the other processes on the failover path, over the
	// same window, when the bench started the cluster itself.
	APIServerCPUSeconds float64 `json:"apiserverCpuSeconds,omitempty"`
	EtcdCPUSeconds      float64 `json:"etcdCpuSeconds,omitempty"`
	KCMCPUSeconds       float64 `json:"kubeControllerManagerCpuSeconds,omitempty"`
	// BenchCPUSeconds is the bench process's own (watches, 2n listeners).
	BenchCPUSeconds float64 `json:"benchCpuSeconds"`
	Profile         string  `json:"profile,omitempty"` // CPU profile of the controller, if taken
}

// scale runs n groups of two pods on one controller, with every active on
// one node and every standby on another, then fails all of them over at
// once. Pod IPs are on loopback, each pod's listener bound to its IP.
func (e *Env) scale(ctx context.Context, o Options, n int, haGroups bool) (*ScaleResult, error) {
	s := &scaleRun{e: e, o: o, n: n, port: 20000 + rand.IntN(40000), haGroups: haGroups}
	defer s.tearDown()
	if err := s.setUp(ctx); err != nil {
		return nil, err
	}
	if err := s.createGroups(ctx); err != nil {
		return nil, err
	}
	res := &ScaleResult{Groups: n, Trigger: o.Mass, HAGroups: haGroups}
	before, err := s.measureBefore(ctx, res)
	if err != nil {
		return nil, err
	}
	profDone := s.startProfile(ctx, res)
	starts, err := s.trigger(ctx)
	if err != nil {
		return nil, err
	}
	waitErr := waitUntil(ctx, 2*time.Minute, fmt.Sprintf("mass failover of %d groups", n), s.failedOver, s.ap.board.wait, s.pw.changed, s.ctl.Changed)
	if err := s.measureAfter(ctx, res, before, starts[0]); err != nil {
		return nil, err
	}
	s.latencies(res, starts)
	if profDone != nil {
		if err := <-profDone; err != nil {
			e.Log.Warn("cpu profile", "err", err)
			res.Profile = ""
		}
	}
	return res, waitErr
}

// scaleRun is one mass failover: its cluster objects, watches, apps and
// controller.
type scaleRun struct {
	e    *Env
	o    Options
	n    int
	port int // every listener's
	// haGroups: an HAGroup per group (hagroups.go).
	haGroups bool

	ns                string
	nodeA, nodeB      string
	ipsA, ipsB        *addrs
	pw                *podWatch
	ap                *apps
	ctl               *ctrlproc.Controller
	actives, standbys []string
	t0                time.Time // the first group's start
	cleanups          []func()  // undone in reverse by tearDown
}

func (s *scaleRun) tearDown() {
	for i := len(s.cleanups) - 1; i >= 0; i-- {
		s.cleanups[i]()
	}
}

// setUp creates the namespace, a node per side on its own loopback lane, the
// pod watch, the apps and the controller.
func (s *scaleRun) setUp(ctx context.Context) error {
	e := s.e
	ns, delNS, err := e.namespace(ctx, fmt.Sprintf("bench-scale-%d", s.n))
	if err != nil {
		return err
	}
	s.ns, s.cleanups = ns, append(s.cleanups, delNS)
	laneA, laneB := loopbackLane(), loopbackLane()
	for laneB == laneA {
		laneB = loopbackLane()
	}
	s.ipsA, s.ipsB = newAddrs(laneA), newAddrs(laneB)
	nodeA, delA, err := e.node(ctx, "bench-a", laneA.String())
	if err != nil {
		return err
	}
	s.nodeA, s.cleanups = nodeA, append(s.cleanups, delA)
	nodeB, delB, err := e.node(ctx, "bench-b", laneB.String())
	if err != nil {
		return err
	}
	s.nodeB, s.cleanups = nodeB, append(s.cleanups, delB)
	if s.pw, err = watchPods(ctx, e.cs, ns, benchLabel+"=true", ""); err != nil {
		return err
	}
	s.cleanups = append(s.cleanups, s.pw.stop)
	s.ap = newApps()
	s.cleanups = append(s.cleanups, s.ap.closeAll)
	if s.haGroups {
		// Before the controller starts, so that its first reconcile of
		// each group already writes the status.
		if err := s.createHAGroups(ctx); err != nil {
			return err
		}
	}
	if s.ctl, err = s.o.startController(ctx, e, ns, s.port, fmt.Sprintf("controller-scale-%d", s.n)); err != nil {
		return err
	}
	s.cleanups = append(s.cleanups, s.ctl.Stop)
	s.actives, s.standbys = s.names("a"), s.names("b")
	return nil
}

func (s *scaleRun) names(side string) []string {
	out := make([]string, s.n)
	for i := range out {
		out[i] = fmt.Sprintf("g%d-%s", i, side)
	}
	return out
}

// createGroups creates the actives first, each alone in its group, then the
// standbys, and waits until every app knows its role, every standby is
// labelled and the controller's setup writes (Lease reservations, Events)
// have drained.
func (s *scaleRun) createGroups(ctx context.Context) error {
	setup := time.Duration(s.n)*30*time.Millisecond + 30*time.Second
	if err := s.create(ctx, s.actives, s.nodeA, s.ipsA); err != nil {
		return err
	}
	if err := waitUntil(ctx, setup, "every group has its active", s.told(s.actives, role.Active), s.ap.board.wait); err != nil {
		return err
	}
	if err := s.create(ctx, s.standbys, s.nodeB, s.ipsB); err != nil {
		return err
	}
	// Each group settles with one app active and the other standby, both
	// labelled so. Normally the second pod is the standby; a group whose
	// active's lease lapsed meanwhile (the bench process, which holds every
	// app, starved for longer than the lease's slack) may have swapped:
	// it is not failed over by the trigger and is counted apart
	// (ScaleResult.FalseBefore).
	if err := waitUntil(ctx, setup, "every group settled, one app active and one standby, labelled so", s.settled, s.ap.board.wait, s.pw.changed); err != nil {
		return err
	}
	_, err := quiet(ctx, s.ctl, time.Second, s.quietLimit())
	return err
}

// quietLimit bounds the wait for the controller's requests to stop: with
// HAGroups the status writes run on after the failovers, rate-limited.
func (s *scaleRun) quietLimit() time.Duration {
	if s.haGroups {
		return 30*time.Second + time.Duration(s.n)*50*time.Millisecond
	}
	return 30 * time.Second
}

// create binds each pod's listener, then creates the pods.
func (s *scaleRun) create(ctx context.Context, pods []string, node string, ips *addrs) error {
	specs := make([]podSpec, s.n)
	for i, name := range pods {
		ip := ips.take()
		if err := s.ap.listen(ctx, name, netip.AddrPortFrom(ip, uint16(s.port))); err != nil {
			return err
		}
		specs[i] = podSpec{name: name, group: fmt.Sprintf("g%d", i), node: node, ip: ip}
	}
	return parallel(ctx, 32, s.n, func(i int) error {
		_, err := s.e.cs.CoreV1().Pods(s.ns).Create(ctx, newPod(specs[i]), metav1.CreateOptions{FieldManager: fieldManager})
		return err
	})
}

// settled: in every group one app holds active and the other standby, and
// their labels say the same, both pods Running and Ready.
func (s *scaleRun) settled() bool {
	for i := range s.n {
		a, b := s.actives[i], s.standbys[i]
		sa := s.ap.state(a)
		sb := s.ap.state(b)
		if sb.Role == role.Active {
			a, b, sa, sb = b, a, sb, sa
		}
		if sa.Role != role.Active || sb.Role != role.Standby {
			return false
		}
		pa, ok1 := s.pw.get(a)
		pb, ok2 := s.pw.get(b)
		if !ok1 || !ok2 || pa.Labels[roleLabel] != activeRole || pb.Labels[roleLabel] != standbyRole || !runningReady(pa) || !runningReady(pb) {
			return false
		}
	}
	return true
}

// told is the condition that every app of pods holds want.
func (s *scaleRun) told(pods []string, want role.Role) func() bool {
	return func() bool {
		for _, p := range pods {
			if st := s.ap.state(p); st.Role != want {
				return false
			}
		}
		return true
	}
}

// measureBefore takes the counters the failover is measured against and
// resets the controller's peak RSS.
func (s *scaleRun) measureBefore(ctx context.Context, res *ScaleResult) (snapshot, error) {
	before, err := s.e.snapshot(ctx, s.ctl)
	if err != nil {
		return before, err
	}
	res.RSSBeforeMiB = before.rss / (1 << 20)
	return before, resetPeak(s.ctl.Pid())
}

// startProfile asks for a CPU profile of the controller if this is the
// profiled size, and returns once the request is on its way (nil if none).
func (s *scaleRun) startProfile(ctx context.Context, res *ScaleResult) chan error {
	if s.o.ProfileDir == "" || s.n != s.o.ProfileGroups || s.haGroups {
		return nil
	}
	res.Profile = filepath.Join(s.o.ProfileDir, fmt.Sprintf("controller-cpu-%d.pprof", s.n))
	done := make(chan error, 1)
	sent := make(chan struct{})
	go func() { done <- cpuProfile(ctx, s.ctl.PprofURL(), s.o.ProfileSeconds, res.Profile, sent) }()
	<-sent
	return done
}

// trigger fails every active at once and returns when each group's clock
// started. The actives' apps die first (their listeners close, as with the
// node), and the controller's role lease notices that by itself, possibly
// before the API hears of the node or the DELETE: so each clock starts at
// the first of the two, the apps' death or the node's failure / the DELETE.
func (s *scaleRun) trigger(ctx context.Context) ([]time.Time, error) {
	died := time.Now()
	s.t0 = died
	for _, p := range s.actives {
		s.ap.close(p)
	}
	starts := make([]time.Time, s.n)
	switch s.o.Mass {
	case MassNode:
		t0, err := localcluster.FailNode(ctx, s.e.cs, s.nodeA)
		if err != nil {
			return nil, err
		}
		for i := range starts {
			starts[i] = minTime(died, t0)
		}
	case MassDelete:
		err := parallel(ctx, 64, s.n, func(i int) error {
			p, ok := s.pw.get(s.actives[i])
			if !ok {
				return fmt.Errorf("pod %s not on the watch", s.actives[i])
			}
			uid := p.UID
			starts[i] = minTime(died, time.Now())
			return s.e.cs.CoreV1().Pods(s.ns).Delete(ctx, p.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}})
		})
		if err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("unknown mass trigger %q", s.o.Mass)
	}
	return starts, nil
}

// failedOver: every standby's app has the role, its label is on the watch
// and the controller recorded its promotion.
func (s *scaleRun) failedOver() bool {
	for _, p := range s.standbys {
		if s.ap.activeBefore(p, s.t0) {
			continue // took over before the trigger: see FalseBefore
		}
		if s.ap.activeAfter(p, s.t0).IsZero() {
			return false
		}
		pod, ok := s.pw.get(p)
		if !ok {
			return false
		}
		if _, ok := s.pw.activeAfter(pod.UID, s.t0); !ok {
			return false
		}
		if _, ok := s.ctl.Promotion(p); !ok {
			return false
		}
	}
	return true
}

// measureAfter waits until the controller's API requests stop, and fills in
// the cost of the window from t0 until then.
func (s *scaleRun) measureAfter(ctx context.Context, res *ScaleResult, before snapshot, t0 time.Time) error {
	window, err := quiet(ctx, s.ctl, time.Second, s.quietLimit())
	if err != nil {
		return err
	}
	after, err := s.e.snapshot(ctx, s.ctl)
	if err != nil {
		return err
	}
	res.WindowSeconds = window.Sub(t0).Seconds()
	res.CPUSeconds = after.cpu - before.cpu
	res.APIServerCPUSeconds = after.apiserverCPU - before.apiserverCPU
	res.EtcdCPUSeconds = after.etcdCPU - before.etcdCPU
	res.KCMCPUSeconds = after.kcmCPU - before.kcmCPU
	res.BenchCPUSeconds = after.benchCPU - before.benchCPU
	res.PeakRSSMiB = after.peak / (1 << 20)
	res.APIRequests = map[string]float64{}
	for m, v := range after.requests {
		if d := v - before.requests[m]; d > 0 {
			res.APIRequests[m] = d
		}
	}
	return nil
}

// latencies fills in each completed group's stages, from its start.
func (s *scaleRun) latencies(res *ScaleResult, starts []time.Time) {
	var seen, ack, labelled, watched []time.Duration
	for i, p := range s.standbys {
		if s.ap.activeBefore(p, s.t0) {
			res.FalseBefore++
			continue
		}
		at := s.ap.activeAfter(p, starts[i])
		pod, _ := s.pw.get(p)
		var lw time.Time
		if pod != nil {
			lw, _ = s.pw.activeAfter(pod.UID, starts[i])
		}
		pr, havePromo := s.ctl.Promotion(p)
		if at.IsZero() || lw.IsZero() || !havePromo {
			continue
		}
		res.Completed++
		ack = append(ack, at.Sub(starts[i]))
		watched = append(watched, lw.Sub(starts[i]))
		seen = append(seen, pr.Seen.Sub(starts[i]))
		if !pr.Labelled.IsZero() {
			labelled = append(labelled, pr.Labelled.Sub(starts[i]))
		}
	}
	res.Seen = newSeries("seen", durationsMs(seen))
	res.Ack = newSeries("ack", durationsMs(ack))
	res.Labelled = newSeries("labelled", durationsMs(labelled))
	res.LabelWatch = newSeries("label on watch", durationsMs(watched))
	if res.Completed > 0 {
		res.APIPerGroup = sum(res.APIRequests) / float64(res.Completed)
	}
}

// parallel runs f(0..n-1) on at most k goroutines and returns the errors.
func parallel(ctx context.Context, k, n int, f func(i int) error) error {
	var (
		mu   sync.Mutex
		errs []error
		wg   sync.WaitGroup
	)
	next := make(chan int)
	for range min(k, n) {
		wg.Go(func() {
			for i := range next {
				if err := f(i); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			}
		})
	}
	for i := range n {
		if ctx.Err() != nil {
			break
		}
		next <- i
	}
	close(next)
	wg.Wait()
	if len(errs) > 0 {
		return fmt.Errorf("%d of %d failed, first: %w", len(errs), n, errs[0])
	}
	return ctx.Err()
}

// quiet waits until the controller's API request count has not moved for
// d (at most limit), and returns when it last moved. It scrapes /metrics
// every scrapeEvery, not at every poll: a scrape costs the process measured.
func quiet(ctx context.Context, ctl *ctrlproc.Controller, d, limit time.Duration) (time.Time, error) {
	last, err := apiRequests(ctx, ctl.MetricsURL())
	if err != nil {
		return time.Time{}, err
	}
	lastChange, lastScrape := time.Now(), time.Now()
	err = poll.Until(ctx, limit, func() (bool, error) {
		if time.Since(lastScrape) < scrapeEvery {
			return false, nil
		}
		cur, err := apiRequests(ctx, ctl.MetricsURL())
		lastScrape = time.Now()
		if err != nil {
			return false, poll.Stop(err)
		}
		if sum(cur) != sum(last) {
			last, lastChange = cur, time.Now()
			return false, nil
		}
		return time.Since(lastChange) >= d, nil
	})
	if ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded) {
		return lastChange, nil // still busy at limit: the window ends there
	}
	if err != nil {
		return time.Time{}, err
	}
	return lastChange, nil
}

// scrapeEvery is quiet's pace.
const scrapeEvery = 100 * time.Millisecond

func sum(m map[string]float64) float64 {
	var s float64
	for _, v := range m {
		s += v
	}
	return s
}

// snapshot is the controller's (and the control plane's) counters at one
// moment.
type snapshot struct {
	cpu, apiserverCPU, etcdCPU, kcmCPU, benchCPU float64 // seconds
	rss, peak                                    float64 // bytes
	requests                                     map[string]float64
}

func (e *Env) snapshot(ctx context.Context, ctl *ctrlproc.Controller) (snapshot, error) {
	var s snapshot
	var err error
	if s.cpu, err = cpuSeconds(ctl.Pid()); err != nil {
		return s, err
	}
	if s.rss, s.peak, err = memory(ctl.Pid()); err != nil {
		return s, err
	}
	if e.APIServerPID != 0 {
		s.apiserverCPU, _ = cpuSeconds(e.APIServerPID)
	}
	if e.EtcdPID != 0 {
		s.etcdCPU, _ = cpuSeconds(e.EtcdPID)
	}
	if e.KCMPID != 0 {
		s.kcmCPU, _ = cpuSeconds(e.KCMPID)
	}
	s.benchCPU, _ = cpuSeconds(os.Getpid())
	s.requests, err = apiRequests(ctx, ctl.MetricsURL())
	return s, err
}

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat times: 100 on every
// Linux architecture Go supports.
const clockTicks = 100

// cpuSeconds is the process's user+system time.
func cpuSeconds(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name may hold spaces; fields are counted after its ')'.
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: too few fields", pid)
	}
	utime, err1 := strconv.ParseUint(f[11], 10, 64) // field 14
	stime, err2 := strconv.ParseUint(f[12], 10, 64) // field 15
	if err := errors.Join(err1, err2); err != nil {
		return 0, err
	}
	return float64(utime+stime) / clockTicks, nil
}

// memory returns VmRSS and VmHWM (peak RSS) in bytes.
func memory(pid int) (rss, peak float64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok || (k != "VmRSS" && k != "VmHWM") {
			continue
		}
		kb, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
		if err != nil {
			return 0, 0, err
		}
		if k == "VmRSS" {
			rss = kb * 1024
		} else {
			peak = kb * 1024
		}
	}
	return rss, peak, nil
}

// resetPeak resets VmHWM to the current RSS (Linux 4.0+).
func resetPeak(pid int) error {
	return os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0)
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}
