// Command hapod-bench measures hapod's failover latency and cost on a local
// control plane, next to client-go leader election and to having no standby
// at all, and writes the results (Markdown, JSON and an SVG chart) to
// bench/results. It starts the control plane itself (building it first if
// needed) and stops everything it started.
//
//	go run ./cmd/hapod-bench            # full run, about 3 minutes
//	go run ./cmd/hapod-bench -short     # CI smoke run, under 2 minutes
//
// See internal/dev/bench for what is measured and how.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"k8s.io/client-go/tools/clientcmd"

	"github.com/hapod/hapod/internal/dev/bench"
	"github.com/hapod/hapod/internal/dev/gobuild"
	"github.com/hapod/hapod/internal/dev/localcluster"
	"github.com/hapod/hapod/internal/dev/netns"
	"github.com/hapod/hapod/internal/dev/realpod"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "hapod-bench:", err)
		os.Exit(1)
	}
}

type flags struct {
	short       bool
	out         string
	work        string
	kubeconfig  string
	profile     bool
	failovers   int
	groups      string
	haGroups    string
	mass        string
	workers     int
	qps         float64
	burst       int
	only        string
	keepLogs    bool
	from        string
	soak        time.Duration
	soakGroups  int
	realSamples int
	minSync     time.Duration
}

func parseFlags(args []string) (*flags, bench.Options, error) {
	f := &flags{}
	fs := flag.NewFlagSet("hapod-bench", flag.ContinueOnError)
	fs.BoolVar(&f.short, "short", false, "CI smoke run: fewer failovers, at most 100 groups, one round of the 15 s leader election")
	fs.StringVar(&f.out, "out", "bench/results", "directory for results.md, results.json and cdf.svg (empty: do not write)")
	fs.StringVar(&f.work, "work", ".cache/bench", "directory for the controller's logs and CPU profiles")
	fs.StringVar(&f.kubeconfig, "kubeconfig", "", "run on this cluster instead of starting one")
	fs.BoolVar(&f.profile, "profile", false, "take a CPU profile of the controller during the largest mass failover, into -work")
	fs.IntVar(&f.failovers, "failovers", 0, "failovers per trigger in the one-group scenario (default 100, 20 with -short)")
	fs.StringVar(&f.haGroups, "hagroup-groups", "", "comma-separated group counts of the mass failovers run again with an HAGroup per group, 0 for none (default 1000; 100 with -short)")
	fs.StringVar(&f.groups, "groups", "", "comma-separated group counts of the mass failovers (default 1,100,1000; 1,100 with -short)")
	fs.StringVar(&f.mass, "mass", "", "mass failover trigger: node (the actives' node turns NotReady) or delete (every active deleted); default node")
	fs.IntVar(&f.workers, "workers", 0, "controller -workers (default 1000)")
	fs.Float64Var(&f.qps, "kube-api-qps", 0, "controller -kube-api-qps (default 2000)")
	fs.IntVar(&f.burst, "kube-api-burst", 0, "controller -kube-api-burst (default 4000)")
	fs.BoolVar(&f.keepLogs, "keep-cluster-logs", false, "leave the local cluster's run directory (component logs) in place after the run")
	fs.StringVar(&f.from, "from", "", "measure nothing: render the results.json of an earlier run into -out")
	fs.StringVar(&f.only, "only", "", "comma-separated scenarios to run, of one, election, nostandby, lease, renewals, scale, soak, realnode (default all; soak only with -soak)")
	fs.DurationVar(&f.soak, "soak", 0, "hold healthy groups this long with every core kept busy and count false failovers (make soak: 10m)")
	fs.IntVar(&f.soakGroups, "soak-groups", 0, "groups of two pods in the soak (default 1000)")
	fs.DurationVar(&f.minSync, "kube-proxy-min-sync", 0, "kube-proxy's minSyncPeriod on the real nodes (default its own, 1s)")
	fs.IntVar(&f.realSamples, "real-samples", 0, "failovers per row of the real-node scenario (default 50, 5 with -short)")
	if err := fs.Parse(args); err != nil {
		return nil, bench.Options{}, err
	}
	if fs.NArg() > 0 {
		return nil, bench.Options{}, fmt.Errorf("unexpected arguments %v", fs.Args())
	}
	o := bench.Full()
	if f.short {
		o = bench.Short()
	}
	if f.failovers > 0 {
		o.Failovers = f.failovers
	}
	var err error
	if f.groups != "" {
		if o.Groups, err = counts("-groups", f.groups); err != nil {
			return nil, o, err
		}
	}
	switch f.haGroups {
	case "":
	case "0":
		o.HAGroupScale = nil
	default:
		if o.HAGroupScale, err = counts("-hagroup-groups", f.haGroups); err != nil {
			return nil, o, err
		}
	}
	if len(o.Groups) > 0 {
		o.ProfileGroups = o.Groups[len(o.Groups)-1]
	}
	if f.mass != "" {
		if f.mass != bench.MassNode && f.mass != bench.MassDelete {
			return nil, o, fmt.Errorf("-mass: %q is neither node nor delete", f.mass)
		}
		o.Mass = f.mass
	}
	for _, s := range strings.Split(f.only, ",") {
		switch s = strings.TrimSpace(s); s {
		case "":
		case "one", "election", "nostandby", "lease", "renewals", "scale", "soak", "realnode":
			o.Scenarios = append(o.Scenarios, s)
		default:
			return nil, o, fmt.Errorf("-only: unknown scenario %q", s)
		}
	}
	if f.soak < 0 || f.soakGroups < 0 {
		return nil, o, errors.New("-soak and -soak-groups must not be negative")
	}
	o.Soak = f.soak
	if f.soakGroups > 0 {
		o.SoakGroups = f.soakGroups
	}
	if f.realSamples > 0 {
		o.RealNodeSamples = f.realSamples
	}
	if f.workers > 0 {
		o.Workers = f.workers
	}
	if f.qps > 0 {
		o.QPS = f.qps
	}
	if f.burst > 0 {
		o.Burst = f.burst
	}
	return f, o, nil
}

func run() error {
	f, o, err := parseFlags(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if f.from != "" {
		return render(f.from, f.out)
	}
	// The real-node scenario needs real nodes, which live only in a network
	// namespace of their own: run this same command inside one (it is
	// removed afterwards with everything the nodes left).
	realNodes := f.kubeconfig == "" && o.RealNodeSamples > 0 && (len(o.Scenarios) == 0 || slices.Contains(o.Scenarios, "realnode"))
	if _, inside := netns.Inside(); realNodes && !inside {
		if os.Geteuid() != 0 {
			log.Warn("not root: the real-node scenario is skipped (real nodes need network namespaces, cgroups and mounts)")
		} else {
			code, err := netns.Run(os.Args)
			if err == nil && code != 0 {
				err = fmt.Errorf("the bench in its network namespace exited with status %d", code)
			}
			return err
		}
	}
	_, realNodes = netns.Inside()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	work, err := filepath.Abs(f.work)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(work, 0o755); err != nil {
		return err
	}
	if f.profile {
		o.ProfileDir = work
	}
	// The controller runs as its own process, the binary that ships, built
	// once for the whole run.
	wd, err := os.Getwd()
	if err != nil {
		return err
	}
	root, err := localcluster.RepoRoot(wd)
	if err != nil {
		return err
	}
	binDir := filepath.Join(work, "bin")
	log.Info("building hapod-controller", "dir", binDir)
	if err := gobuild.Build(ctx, root, binDir, "./cmd/hapod-controller", "./cmd/hapod-demo"); err != nil {
		return err
	}
	env := &bench.Env{ControllerBin: filepath.Join(binDir, "hapod-controller"), DemoBin: filepath.Join(binDir, "hapod-demo"), WorkDir: work, Log: log}
	var images []localcluster.Image
	if realNodes {
		// The real nodes' image of the demo app: static, packed by the cluster.
		static := filepath.Join(binDir, "static")
		if err := gobuild.Static(ctx, root, static, "./cmd/hapod-demo", "./cmd/hapod-le-app"); err != nil {
			return err
		}
		images = []localcluster.Image{
			{Ref: realpod.DemoImage, Binary: filepath.Join(static, "hapod-demo")},
			{Ref: realpod.LEAppImage, Binary: filepath.Join(static, "hapod-le-app")},
		}
		env.RealNodes = true
	}
	cluster, stopCluster, err := useCluster(ctx, env, f, images)
	if err != nil {
		return err
	}
	defer stopCluster()

	res, runErr := bench.Run(ctx, env, o)
	if res == nil {
		return runErr
	}
	res.Commit = commit()
	res.Cluster = cluster
	if f.out != "" {
		if err := res.Write(f.out); err != nil {
			return errors.Join(runErr, err)
		}
		log.Info("results written", "dir", f.out)
	}
	res.Markdown(os.Stdout)
	return runErr
}

// useCluster points env at the cluster of -kubeconfig, or at a local control
// plane it starts (with its components' pids, whose CPU time is reported) and
// the returned function stops. It returns the cluster's description for the
// report.
func useCluster(ctx context.Context, env *bench.Env, f *flags, images []localcluster.Image) (string, func(), error) {
	log := env.Log
	if f.kubeconfig != "" {
		rc, err := clientcmd.BuildConfigFromFlags("", f.kubeconfig)
		if err != nil {
			return "", nil, err
		}
		env.REST, env.Kubeconfig = rc, f.kubeconfig
		return "the cluster of " + f.kubeconfig + " (not started by the bench).", func() {}, nil
	}
	v := localcluster.DefaultVersions()
	cluster := fmt.Sprintf("local control plane on 127.0.0.1 started by the bench: etcd %s; kube-apiserver, kube-controller-manager, kube-scheduler %s; kwok %s playing the kubelets.",
		v.Etcd, v.Kubernetes, v.Kwok)
	nodes := 0
	if env.RealNodes {
		nodes = 2
		minSync := "1s, its default"
		if f.minSync > 0 {
			minSync = f.minSync.String()
		}
		cluster += fmt.Sprintf(" Two real nodes in a network namespace of the bench's own: kubelet and kube-proxy (nftables, minSyncPeriod %s) %s, containerd %s, runc (Debian), CNI plugins %s (bridge, host-local).",
			minSync, v.Kubernetes, v.Containerd, v.CNIPlugins)
	}
	began := time.Now()
	c, err := localcluster.Start(ctx, localcluster.Options{Logger: log, NodePodCIDRs: []string{}, KeepRunDir: f.keepLogs, RealNodes: nodes, Images: images, KubeProxyMinSync: f.minSync})
	if err != nil {
		return "", nil, err
	}
	stop := func() {
		if err := c.Stop(); err != nil {
			log.Error("stopping the local cluster", "err", err)
		}
	}
	log.Info("local cluster up", "took", time.Since(began).Round(time.Millisecond).String())
	env.REST, env.Kubeconfig = c.RESTConfig(), c.Kubeconfig()
	if env.RealNodes {
		env.PodKubeconfig = filepath.Join(c.RunDir(), "pod-kubeconfig")
		if err := c.WritePodKubeconfig(env.PodKubeconfig); err != nil {
			stop()
			return "", nil, err
		}
	}
	st, err := localcluster.ReadState(c.RunDir())
	if err != nil {
		stop()
		return "", nil, err
	}
	for _, p := range st.Processes {
		switch p.Name {
		case "kube-apiserver":
			env.APIServerPID = p.PID
		case "etcd":
			env.EtcdPID = p.PID
		case "kube-controller-manager":
			env.KCMPID = p.PID
		}
	}
	return cluster, stop, nil
}

// render writes the report of an earlier run again, e.g. after the
// report's format changed: the numbers are those of the run.
func render(from, out string) error {
	b, err := os.ReadFile(from)
	if err != nil {
		return err
	}
	var r bench.Results
	if err := json.Unmarshal(b, &r); err != nil {
		return fmt.Errorf("%s: %w", from, err)
	}
	if out == "" {
		r.Markdown(os.Stdout)
		return nil
	}
	return r.Write(out)
}

// commit describes the source tree the bench was built from.
func commit() string {
	out, err := exec.Command("git", "describe", "--always", "--dirty").Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}

// counts parses a comma-separated list of positive numbers.
func counts(flag, list string) ([]int, error) {
	var out []int
	for _, s := range strings.Split(list, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("%s: %q is not a positive number", flag, s)
		}
		out = append(out, n)
	}
	return out, nil
}
