// Command hapod-chaos is `make chaos`: it starts a local control plane
// (building it first if needed), runs hapod's groups on it with two
// controller replicas and a real app process per pod, injects random faults
// mixed and overlapping, and checks the recorded history for two actives
// (see internal/dev/chaos). Where real nodes can run (root, runc, nft), it
// first runs itself again inside a network namespace of its own, starts the
// cluster with two real nodes, and after the kwok phase runs a real-node
// phase on the same cluster: real containers SIGKILLed, a node's kubelet
// and containerd stopped and started again, a pod's network namespace cut
// off. It prints one table for both and writes it to bench/results/chaos;
// it exits 1 if any invariant was violated.
//
//	go run ./cmd/hapod-chaos                   # 1,000 faults and 60 on real nodes
//	go run ./cmd/hapod-chaos -short            # 60 faults and 8 on real nodes, a few minutes
//	go run ./cmd/hapod-chaos -seed 42          # replay a run's choice of faults
//	go run ./cmd/hapod-chaos -real-faults 0    # the kwok phase only
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hapod/hapod/internal/dev/chaos"
	"github.com/hapod/hapod/internal/dev/gobuild"
	"github.com/hapod/hapod/internal/dev/localcluster"
	"github.com/hapod/hapod/internal/dev/netns"
	"github.com/hapod/hapod/internal/dev/realpod"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "hapod-chaos:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("hapod-chaos", flag.ContinueOnError)
	faults := fs.Int("faults", 1000, "faults to inject")
	short := fs.Bool("short", false, "a short run: 60 faults, and 8 on real nodes (make test runs one like it)")
	seed := fs.Uint64("seed", 0, "seed of the faults' choice (default: random, printed)")
	groups := fs.Int("groups", 4, "groups, each of -replicas pods; one worker injects faults into each")
	replicas := fs.Int("replicas", 3, "pods per group")
	kinds := fs.String("kinds", "", "comma-separated fault kinds to mix (default all): "+strings.Join(append(chaos.Kinds(), chaos.RealKinds()...), ", "))
	realFaults := fs.Int("real-faults", 60, "faults of the real-node phase (8 with -short; 0: none)")
	out := fs.String("out", "bench/results/chaos", "directory for results.md and results.json (empty: do not write)")
	work := fs.String("work", ".cache/chaos", "directory for the logs and the history (history.jsonl)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %v", fs.Args())
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	if *short {
		*faults = 60
		if !given["real-faults"] {
			*realFaults = 8
		}
	}
	kwokKinds, realKinds := splitKinds(*kinds)
	if *kinds != "" && len(realKinds) == 0 {
		*realFaults = 0 // -kinds names none of the real phase's
	}
	if *kinds != "" && len(kwokKinds) == 0 {
		*faults = 0
	}
	if *seed == 0 {
		*seed = rand.Uint64()
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	// The real nodes live only in a network namespace of their own: run
	// this same command inside one (removed afterwards with everything
	// the nodes left). The seed goes along, so both runs name the same.
	if *realFaults > 0 {
		if err := localcluster.RealNodesUsable(); err != nil {
			fmt.Fprintf(os.Stderr, "hapod-chaos: real nodes cannot run here (%v): the real-node phase is skipped\n", err)
			*realFaults = 0
		} else if _, inside := netns.Inside(); !inside {
			code, err := netns.Run(append(os.Args, "-seed", strconv.FormatUint(*seed, 10)))
			if err == nil && code != 0 {
				err = exitCode(code)
			}
			return err
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	wd, err := os.Getwd()
	if err != nil {
		return err
	}
	root, err := localcluster.RepoRoot(wd)
	if err != nil {
		return err
	}
	workDir, err := filepath.Abs(filepath.Join(*work, time.Now().UTC().Format("20060102-150405")))
	if err != nil {
		return err
	}
	binDir := filepath.Join(workDir, "bin")
	if err := gobuild.Build(ctx, root, binDir, "./cmd/hapod-controller", "./cmd/hapod-demo"); err != nil {
		return err
	}
	co := localcluster.Options{Logger: log, NodePodCIDRs: []string{}}
	if *realFaults > 0 {
		// The real nodes' image of the demo app: static, packed by the cluster.
		static := filepath.Join(binDir, "static")
		if err := gobuild.Static(ctx, root, static, "./cmd/hapod-demo"); err != nil {
			return err
		}
		co.RealNodes = 2
		co.Images = []localcluster.Image{{Ref: realpod.DemoImage, Binary: filepath.Join(static, "hapod-demo")}}
		// The node monitor grace stays the default 50 s, which the kwok
		// phase was made for: at 10 s (the real-node tests') an API server
		// restart of more than 10 s (seen under load) marks the kwok nodes
		// and their pods NotReady, which the kwok phase does not undo. A
		// stopped kubelet then costs the real phase a minute.
	}
	c, err := localcluster.Start(ctx, co)
	if err != nil {
		return err
	}
	defer func() {
		if err := c.Stop(); err != nil {
			log.Error("stopping the local cluster", "err", err)
		}
	}()
	o := chaos.Options{
		Kubeconfig: c.Kubeconfig(), APIServer: c,
		ControllerBin: filepath.Join(binDir, "hapod-controller"), DemoBin: filepath.Join(binDir, "hapod-demo"),
		WorkDir: workDir, Seed: *seed, Faults: *faults, Groups: *groups, Replicas: *replicas, Log: log,
	}
	o.Kinds = kwokKinds
	log.Info("chaos run", "seed", *seed, "faults", *faults, "realFaults", *realFaults, "work", workDir)
	res, s, err := phases(ctx, c, o, *realFaults, realKinds)
	if err != nil {
		return err
	}
	s.Markdown(os.Stdout)
	if *out != "" {
		if err := s.Write(*out); err != nil {
			return err
		}
	}
	if n := res.Report.Violations() + len(res.Left); n > 0 {
		return errors.New(fmt.Sprint(n, " violations; the histories are in ", filepath.Join(workDir, "history.jsonl"), " and ", filepath.Join(workDir, "real", "history.jsonl")))
	}
	return nil
}

// phases runs the kwok phase, then the real-node phase on the same cluster
// (if realFaults > 0; its fault IDs follow the kwok phase's), and returns
// their combined result and its summary.
func phases(ctx context.Context, c *localcluster.Cluster, o chaos.Options, realFaults int, realKinds []string) (*chaos.Result, chaos.Summary, error) {
	res := &chaos.Result{}
	if o.Faults > 0 {
		var err error
		if res, err = chaos.Run(ctx, o); err != nil {
			return nil, chaos.Summary{}, err
		}
	}
	if realFaults == 0 {
		return res, chaos.Summarize(res, o, commit()), nil
	}
	ro := chaos.RealOptions{
		Kubeconfig: c.Kubeconfig(), Nodes: c, ControllerBin: o.ControllerBin,
		WorkDir: filepath.Join(o.WorkDir, "real"), Seed: o.Seed, Faults: realFaults, FirstID: o.Faults + 1,
		Kinds: realKinds, Log: o.Log,
	}
	real, err := chaos.RunReal(ctx, ro)
	if err != nil {
		return nil, chaos.Summary{}, fmt.Errorf("the real-node phase: %w", err)
	}
	if res, err = chaos.Combine(res, real); err != nil {
		return nil, chaos.Summary{}, err
	}
	s := chaos.Summarize(res, o, commit())
	s.Setup += "; " + ro.Describe()
	return res, s, nil
}

// splitKinds sorts -kinds into the kwok phase's and the real phase's.
func splitKinds(list string) (kwok, real []string) {
	if list == "" {
		return nil, nil
	}
	for _, k := range strings.Split(list, ",") {
		if slices.Contains(chaos.RealKinds(), k) {
			real = append(real, k)
		} else {
			kwok = append(kwok, k)
		}
	}
	return kwok, real
}

// exitCode is the status the run inside the network namespace exited with.
type exitCode int

func (e exitCode) Error() string {
	return fmt.Sprintf("exited with status %d inside its network namespace", int(e))
}

// commit describes the source tree the run was built from.
func commit() string {
	out, err := exec.Command("git", "describe", "--always", "--dirty").Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}
