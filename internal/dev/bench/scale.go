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
	Groups    int    `json:"groups"`
	Trigger   string `json:"trigger"`
	Completed int    `json:"completed"` // groups whose new active was labelled and acked
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
func (e *Env) scale(ctx context.Context, o Options, n int) (*ScaleResult, error) {
	trigger := o.Mass
	ns, delNS, err := e.namespace(ctx, fmt.Sprintf("bench-scale-%d", n))
	if err != nil {
		return nil, err
	}
	defer delNS()
	laneA, laneB := loopbackLane(), loopbackLane()
	for laneB == laneA {
		laneB = loopbackLane()
	}
	ipsA, ipsB := newAddrs(laneA), newAddrs(laneB)
	nodeA, delA, err := e.node(ctx, "bench-a", laneA.String())
	if err != nil {
		return nil, err
	}
	defer delA()
	nodeB, delB, err := e.node(ctx, "bench-b", laneB.String())
	if err != nil {
		return nil, err
	}
	defer delB()

	pw, err := watchPods(ctx, e.cs, ns, benchLabel+"=true")
	if err != nil {
		return nil, err
	}
	defer pw.stop()
	ap := newApps()
	defer ap.closeAll()
	port := 20000 + rand.IntN(40000)
	ctl, err := o.startController(ctx, e, ns, port, fmt.Sprintf("controller-scale-%d", n))
	if err != nil {
		return nil, err
	}
	defer ctl.Stop()

	names := func(side string) []string {
		out := make([]string, n)
		for i := range out {
			out[i] = fmt.Sprintf("g%d-%s", i, side)
		}
		return out
	}
	actives, standbys := names("a"), names("b")
	create := func(pods []string, node string, ips *addrs) error {
		specs := make([]podSpec, n)
		for i, name := range pods {
			ip := ips.take()
			if err := ap.listen(ctx, name, netip.AddrPortFrom(ip, uint16(port))); err != nil {
				return err
			}
			specs[i] = podSpec{name: name, group: fmt.Sprintf("g%d", i), node: node, ip: ip}
		}
		return parallel(ctx, 32, n, func(i int) error {
			_, err := e.cs.CoreV1().Pods(ns).Create(ctx, newPod(specs[i]), metav1.CreateOptions{FieldManager: fieldManager})
			return err
		})
	}
	told := func(pods []string, want role.Role) func() bool {
		return func() bool {
			for _, p := range pods {
				if s, _, _ := ap.state(p); s.Role != want {
					return false
				}
			}
			return true
		}
	}
	setup := time.Duration(n)*30*time.Millisecond + 30*time.Second
	// Actives first, each alone in its group; then the standbys.
	if err := create(actives, nodeA, ipsA); err != nil {
		return nil, err
	}
	if err := waitUntil(ctx, setup, "every group has its active", told(actives, role.Active), ap.board.wait); err != nil {
		return nil, err
	}
	if err := create(standbys, nodeB, ipsB); err != nil {
		return nil, err
	}
	if err := waitUntil(ctx, setup, "every standby told", told(standbys, role.Standby), ap.board.wait); err != nil {
		return nil, err
	}
	if err := waitUntil(ctx, setup, "every standby labelled", func() bool {
		for _, p := range standbys {
			if pod, ok := pw.get(p); !ok || pod.Labels[roleLabel] != standbyRole || !runningReady(pod) {
				return false
			}
		}
		return true
	}, pw.board.wait); err != nil {
		return nil, err
	}
	// Let the setup's writes (Lease reservations, Events) drain.
	if _, err := quiet(ctx, ctl, time.Second, 30*time.Second); err != nil {
		return nil, err
	}

	res := &ScaleResult{Groups: n, Trigger: trigger}
	before, err := e.snapshot(ctx, ctl)
	if err != nil {
		return nil, err
	}
	res.RSSBeforeMiB = before.rss / (1 << 20)
	if err := resetPeak(ctl.Pid()); err != nil {
		return nil, err
	}
	var profDone chan error
	if o.ProfileDir != "" && n == o.ProfileGroups {
		res.Profile = filepath.Join(o.ProfileDir, fmt.Sprintf("controller-cpu-%d.pprof", n))
		profDone = make(chan error, 1)
		sent := make(chan struct{})
		go func() { profDone <- cpuProfile(ctx, ctl.PprofURL(), o.ProfileSeconds, res.Profile, sent) }()
		<-sent // the profile has been asked for before the trigger
	}

	// The apps on the failed side are gone with it.
	for _, p := range actives {
		ap.close(p)
	}
	starts := make([]time.Time, n)
	switch trigger {
	case MassNode:
		// The clock starts at the write that fails the node.
		t0, err := localcluster.FailNode(ctx, e.cs, nodeA)
		if err != nil {
			return nil, err
		}
		for i := range starts {
			starts[i] = t0
		}
	case MassDelete:
		err := parallel(ctx, 64, n, func(i int) error {
			p, ok := pw.get(actives[i])
			if !ok {
				return fmt.Errorf("pod %s not on the watch", actives[i])
			}
			uid := p.UID
			starts[i] = time.Now()
			return e.cs.CoreV1().Pods(ns).Delete(ctx, p.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}})
		})
		if err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("unknown mass trigger %q", trigger)
	}
	t0 := starts[0]

	done := func() bool {
		for i, p := range standbys {
			if _, at, _ := ap.state(p); at.IsZero() {
				return false
			}
			pod, ok := pw.get(p)
			if !ok {
				return false
			}
			if _, ok := pw.activeSince(pod.UID); !ok {
				return false
			}
			if _, ok := ctl.Promotion(standbys[i]); !ok {
				return false
			}
		}
		return true
	}
	waitErr := waitUntil(ctx, 2*time.Minute, fmt.Sprintf("mass failover of %d groups", n), done, ap.board.wait, pw.board.wait, ctl.Changed)
	window, err := quiet(ctx, ctl, time.Second, 30*time.Second)
	if err != nil {
		return nil, err
	}
	after, err := e.snapshot(ctx, ctl)
	if err != nil {
		return nil, err
	}
	res.WindowSeconds = window.Sub(t0).Seconds()
	res.CPUSeconds = after.cpu - before.cpu
	res.APIServerCPUSeconds = after.apiserverCPU - before.apiserverCPU
	res.EtcdCPUSeconds = after.etcdCPU - before.etcdCPU
	res.KCMCPUSeconds = after.kcmCPU - before.kcmCPU
	res.BenchCPUSeconds = after.benchCPU - before.benchCPU
	res.PeakRSSMiB = after.peak / (1 << 20)
	res.APIRequests = map[string]float64{}
	var total float64
	for m, v := range after.requests {
		if d := v - before.requests[m]; d > 0 {
			res.APIRequests[m] = d
			total += d
		}
	}

	var seen, ack, labelled, watched []time.Duration
	for i, p := range standbys {
		_, at, _ := ap.state(p)
		pod, _ := pw.get(p)
		var lw time.Time
		if pod != nil {
			lw, _ = pw.activeSince(pod.UID)
		}
		pr, havePromo := ctl.Promotion(p)
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
		res.APIPerGroup = total / float64(res.Completed)
	}
	if profDone != nil {
		if err := <-profDone; err != nil {
			e.Log.Warn("cpu profile", "err", err)
			res.Profile = ""
		}
	}
	if waitErr != nil {
		return res, waitErr
	}
	return res, nil
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
// d (at most max), and returns when it last moved.
func quiet(ctx context.Context, ctl *ctrlproc.Controller, d, limit time.Duration) (time.Time, error) {
	deadline := time.Now().Add(limit)
	last, err := apiRequests(ctx, ctl.MetricsURL())
	if err != nil {
		return time.Time{}, err
	}
	lastChange := time.Now()
	for time.Now().Before(deadline) {
		select {
		case <-time.After(100 * time.Millisecond):
		case <-ctx.Done():
			return time.Time{}, ctx.Err()
		}
		cur, err := apiRequests(ctx, ctl.MetricsURL())
		if err != nil {
			return time.Time{}, err
		}
		if sum(cur) != sum(last) {
			last, lastChange = cur, time.Now()
			continue
		}
		if time.Since(lastChange) >= d {
			return lastChange, nil
		}
	}
	return lastChange, nil
}

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
