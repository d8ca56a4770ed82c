package controller_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/hapod/hapod/internal/dev/child"
	"github.com/hapod/hapod/internal/dev/clustertest"
	"github.com/hapod/hapod/pkg/role"
)

// BenchmarkLeaseFailover measures what the role lease buys: the active's
// app is killed (its listener closed, as SIGKILL would) and the clock runs
// from the kill to the new active's app holding the role (its listener's
// Changed). Two ways of learning of the death:
//
//   - lease: nothing tells the API; the controller sees the renewals go
//     unacked until the lease has certainly lapsed;
//   - api: right after the kill the benchmark writes the critical
//     container terminated, as a kubelet would, at once (a real kubelet
//     takes up to its 1s PLEG relist, plus the status write, or the node
//     controller 40-50s for a lost node).
//
// One group of two pods, the default lease settings (HAPOD_BENCH_LEASE
// sets others, as for BenchmarkLeaseRenewals), one kill per iteration:
//
//	go test -run '^$' -bench LeaseFailover -benchtime 100x ./internal/controller/
func BenchmarkLeaseFailover(b *testing.B) {
	for _, api := range []bool{false, true} {
		name := "lease"
		if api {
			name = "api"
		}
		b.Run(name, func(b *testing.B) { benchKill(b, api) })
	}
}

func benchKill(b *testing.B, api bool) {
	e := newEnv(b)
	// Only the lease, or the critical container's status, may trigger.
	e.cfg.NotReadyGrace = time.Minute
	benchLease(b, e)
	e.replicaSet("hapod", 2)
	// The apps' active intervals are recorded: the benchmark fails if two
	// ever overlap.
	rec := newRecorder(b)
	apps := map[string]*app{}
	settle := func() {
		for _, p := range e.runningPods("hapod", 2) {
			if a := apps[p.Name]; a == nil || a.pod.UID != p.UID {
				apps[p.Name] = e.recordedApp(rec, p)
			}
		}
	}
	settle()
	r := e.startController()
	act := e.active("hapod")
	apps[act.Name].waitActive(epochOf(act), 10*time.Second)

	var took []time.Duration
	for b.Loop() {
		old := apps[act.Name]
		var killed time.Time
		if api {
			killed = old.killReported()
			clustertest.SetContainerTerminated(b, e.ns, act.Name, "app", 137, "Error")
		} else {
			killed = old.kill()
		}
		next := e.active("hapod", act.Name)
		na := apps[next.Name]
		if na == nil {
			b.Fatalf("promoted %s, which has no app", next.Name)
		}
		st := na.waitActive(epochOf(next), 10*time.Second)
		took = append(took, st.Changed.Sub(killed))

		if api {
			// The controller deletes the pod; its replacement (kwok reuses
			// the IP) gets an app.
			old.relay.close()
			delete(apps, act.Name)
			e.gone(act)
		} else {
			// The kubelet would restart the container in place.
			old.restart()
		}
		settle()
		act = next
	}
	b.StopTimer()
	report(b, "kill-to-new-active", took)
	if !api {
		b.ReportMetric(testutil.ToFloat64(r.metrics.LeaseLapses.WithLabelValues("silent"))/float64(len(took)), "lapses/kill")
	}
}

// BenchmarkLeaseRenewals measures what renewing 1,000 leases costs the
// controller (HAPOD_BENCH_STEADY sets the steady period, 10s by default;
// HAPOD_BENCH_CPUPROFILE writes a CPU profile of it; HAPOD_BENCH_LEASE sets
// -lease-renew/-lease-ttl, e.g. 100ms/300ms): 1,000 groups of one pod each, every pod's app in a child
// process (so that the controller's process holds only the controller),
// then a steady period in which only renewals happen. It reports the
// datagrams per second (renewals sent plus their acks), the controller
// process's CPU per second (getrusage around the period), and any renewal
// missed or lease lapsed (a false failover) in that period.
//
//	go test -run '^$' -bench LeaseRenewals -benchtime 1x ./internal/controller/
func BenchmarkLeaseRenewals(b *testing.B) {
	const groups = 1000
	const perNode = 200 // a kwok node's pod CIDR is a /24
	steady := 10 * time.Second
	if s := os.Getenv("HAPOD_BENCH_STEADY"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			b.Fatal(err)
		}
		steady = d
	}
	e := newEnv(b)
	e.cfg.Selector = "hapod.io/test=true"
	e.cfg.Workers = 64
	benchLease(b, e)
	nodes := make([]string, 0, groups/perNode)
	for range groups / perNode {
		nodes = append(nodes, clustertest.Node(b))
	}
	created := time.Now()
	var wg sync.WaitGroup
	sem := make(chan struct{}, 32)
	for i := range groups {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			group := fmt.Sprintf("g%04d", i)
			tmpl := e.podTemplate(group)
			tmpl.Labels["hapod.io/test"] = "true"
			tmpl.Spec.NodeName = nodes[i/perNode]
			// As deploy/example ships it: no CriticalRestartPolicy Event
			// write per pod during the measurement.
			tmpl.Spec.Containers[0].RestartPolicy = ptr.To(corev1.ContainerRestartPolicyNever)
			pod := &corev1.Pod{ObjectMeta: tmpl.ObjectMeta, Spec: tmpl.Spec}
			pod.Name = group + "-0"
			if _, err := e.cs.CoreV1().Pods(e.ns).Create(b.Context(), pod, metav1.CreateOptions{}); err != nil {
				b.Error(err)
			}
		})
	}
	wg.Wait()
	var pods []corev1.Pod
	clustertest.Eventually(b, 5*time.Minute, func() (bool, error) {
		list, err := e.cs.CoreV1().Pods(e.ns).List(b.Context(), metav1.ListOptions{LabelSelector: "hapod.io/test=true"})
		if err != nil {
			return false, err
		}
		pods = pods[:0]
		for _, p := range list.Items {
			if p.Status.Phase == corev1.PodRunning && p.Status.PodIP != "" && ready(&p) {
				pods = append(pods, p)
			}
		}
		return len(pods) == groups, nil
	})
	b.Logf("%d pods running in %v", groups, time.Since(created))

	kids := startListenerChild(b, e, pods)
	r := e.startController()
	kids.waitActive(b, groups, 2*time.Minute)
	// Let the initial elections' Events and writes drain.
	time.Sleep(2 * time.Second)

	sent0 := testutil.ToFloat64(r.metrics.LeaseRenewals.WithLabelValues("sent"))
	acked0 := testutil.ToFloat64(r.metrics.LeaseRenewals.WithLabelValues("acked"))
	missed0 := testutil.ToFloat64(r.metrics.LeaseRenewals.WithLabelValues("missed"))
	lapsed0 := testutil.ToFloat64(r.metrics.LeaseLapses.WithLabelValues("silent"))
	if path := os.Getenv("HAPOD_BENCH_CPUPROFILE"); path != "" {
		f, err := os.Create(path)
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			b.Fatal(err)
		}
		defer pprof.StopCPUProfile()
	}
	cpu0, kid0 := cpuTime(b, 0), cpuTime(b, kids.pid)
	b.ResetTimer()
	start := time.Now()
	for b.Loop() {
		time.Sleep(steady)
	}
	b.StopTimer()
	secs := time.Since(start).Seconds()
	cpu, kid := cpuTime(b, 0)-cpu0, cpuTime(b, kids.pid)-kid0
	sent := testutil.ToFloat64(r.metrics.LeaseRenewals.WithLabelValues("sent")) - sent0
	acked := testutil.ToFloat64(r.metrics.LeaseRenewals.WithLabelValues("acked")) - acked0
	missed := testutil.ToFloat64(r.metrics.LeaseRenewals.WithLabelValues("missed")) - missed0
	lapsed := testutil.ToFloat64(r.metrics.LeaseLapses.WithLabelValues("silent")) - lapsed0
	b.ReportMetric((sent+acked)/secs, "datagrams/s")
	b.ReportMetric(cpu.Seconds()/secs, "controller-cpu-s/s")
	b.ReportMetric(kid.Seconds()/secs, "apps-cpu-s/s")
	b.ReportMetric(missed, "missed")
	b.ReportMetric(testutil.ToFloat64(r.metrics.LeasesRenewed), "leases")
	b.ReportMetric(lapsed, "lapses")
	b.Logf("%d groups, %.1fs steady: %.0f renewals/s sent, %.0f acks/s; controller process %.3f CPU-s/s (%.1f µs per renewal), the 1,000 apps %.3f CPU-s/s; %v missed, %v lapsed",
		groups, secs, sent/secs, acked/secs, cpu.Seconds()/secs, cpu.Seconds()/sent*1e6, kid.Seconds()/secs, missed, lapsed)
}

// benchLease applies HAPOD_BENCH_LEASE, "renew/ttl" (e.g. 100ms/300ms),
// to the benchmark's controller.
func benchLease(b *testing.B, e *env) {
	s := os.Getenv("HAPOD_BENCH_LEASE")
	if s == "" {
		return
	}
	renew, ttl, _ := strings.Cut(s, "/")
	var err1, err2 error
	e.cfg.LeaseRenew, err1 = time.ParseDuration(renew)
	e.cfg.LeaseTTL, err2 = time.ParseDuration(ttl)
	if err := errors.Join(err1, err2, e.cfg.Validate()); err != nil {
		b.Fatalf("HAPOD_BENCH_LEASE=%s: %v", s, err)
	}
}

// cpuTime is the user+system CPU of this process (pid 0) or of a child.
func cpuTime(b *testing.B, pid int) time.Duration {
	b.Helper()
	if pid == 0 {
		var ru syscall.Rusage
		if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
			b.Fatal(err)
		}
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	// /proc/<pid>/stat fields 14 and 15: utime and stime in clock ticks.
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	f := strings.Fields(string(raw[strings.LastIndexByte(string(raw), ')')+2:]))
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	const hz = 100 // USER_HZ on Linux
	return time.Duration(ut+st) * time.Second / hz
}

// The listener child: the test binary run again with envListenerChild
// set starts one listener per line of its stdin ("addr uid"), prints
// "active N" whenever the number of active listeners changes, and exits
// when stdin closes.
const envListenerChild = "HAPOD_LEASE_LISTENER_CHILD"

type listenerChild struct {
	pid    int
	mu     sync.Mutex
	active int
	change chan struct{}
}

func startListenerChild(b *testing.B, e *env, pods []corev1.Pod) *listenerChild {
	b.Helper()
	cmd := exec.Command(os.Args[0], "-test.run", "^$")
	cmd.Env = append(os.Environ(), envListenerChild+"=1")
	in, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := child.Start(cmd); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		_ = in.Close()
		_ = cmd.Wait()
	})
	k := &listenerChild{pid: cmd.Process.Pid, change: make(chan struct{}, 1)}
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			line := sc.Text()
			if line == "ready" {
				close(ready)
				continue
			}
			if n, ok := strings.CutPrefix(line, "active "); ok {
				v, _ := strconv.Atoi(n)
				k.mu.Lock()
				k.active = v
				k.mu.Unlock()
				select {
				case k.change <- struct{}{}:
				default:
				}
			}
		}
	}()
	for _, p := range pods {
		fmt.Fprintf(in, "%s:%d %s\n", p.Status.PodIP, e.port, p.UID)
	}
	fmt.Fprintln(in, "go")
	select {
	case <-ready:
	case <-time.After(time.Minute):
		b.Fatal("the listener child did not start")
	}
	return k
}

func (k *listenerChild) waitActive(b *testing.B, n int, within time.Duration) {
	b.Helper()
	deadline := time.After(within)
	for {
		k.mu.Lock()
		got := k.active
		k.mu.Unlock()
		if got == n {
			return
		}
		select {
		case <-k.change:
		case <-deadline:
			b.Fatalf("%d of %d apps active", got, n)
		}
	}
}

// runListenerChild is the child's main.
func runListenerChild() {
	var mu sync.Mutex
	active := map[int]bool{}
	report := make(chan int, 1)
	sc := bufio.NewScanner(os.Stdin)
	var ls []*role.Listener
	for i := 0; sc.Scan(); i++ {
		line := sc.Text()
		if line == "go" {
			break
		}
		addr, uid, _ := strings.Cut(line, " ")
		l, err := role.Listen(context.Background(), role.Config{Addr: addr, PodUID: uid, OnChange: func(s role.State) {
			mu.Lock()
			defer mu.Unlock()
			if s.Role == role.Active {
				active[i] = true
			} else {
				delete(active, i)
			}
			select {
			case <-report:
			default:
			}
			report <- len(active)
		}})
		if err != nil {
			fmt.Fprintln(os.Stderr, "listener child:", err)
			os.Exit(1)
		}
		ls = append(ls, l)
	}
	fmt.Println("ready")
	go func() {
		for n := range report {
			fmt.Printf("active %d\n", n)
		}
	}()
	_, _ = io.Copy(io.Discard, os.Stdin) // until the parent closes stdin or dies
	for _, l := range ls {
		_ = l.Close()
	}
	os.Exit(0)
}
