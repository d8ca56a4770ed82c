// Command hapod-chaos is `make chaos`: it starts a local control plane
// (building it first if needed), runs hapod's groups on it with two
// controller replicas and a real app process per pod, injects random faults
// mixed and overlapping, and checks the recorded history for two actives
// (see internal/dev/chaos). It prints the table and writes it to
// bench/results/chaos; it exits 1 if any invariant was violated.
//
//	go run ./cmd/hapod-chaos                   # 1,000 faults, about 15 minutes
//	go run ./cmd/hapod-chaos -short            # 60 faults, a few minutes
//	go run ./cmd/hapod-chaos -seed 42          # replay a run's choice of faults
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
	"strings"
	"syscall"
	"time"

	"github.com/hapod/hapod/internal/dev/chaos"
	"github.com/hapod/hapod/internal/dev/gobuild"
	"github.com/hapod/hapod/internal/dev/localcluster"
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
	short := fs.Bool("short", false, "a short run: 60 faults (make test runs one like it)")
	seed := fs.Uint64("seed", 0, "seed of the faults' choice (default: random, printed)")
	groups := fs.Int("groups", 4, "groups, each of -replicas pods; one worker injects faults into each")
	replicas := fs.Int("replicas", 3, "pods per group")
	kinds := fs.String("kinds", "", "comma-separated fault kinds to mix (default all): "+strings.Join(chaos.Kinds(), ", "))
	out := fs.String("out", "bench/results/chaos", "directory for results.md and results.json (empty: do not write)")
	work := fs.String("work", ".cache/chaos", "directory for the logs and the history (history.jsonl)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %v", fs.Args())
	}
	if *short {
		*faults = 60
	}
	if *seed == 0 {
		*seed = rand.Uint64()
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
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
	c, err := localcluster.Start(ctx, localcluster.Options{Logger: log, NodePodCIDRs: []string{}})
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
	if *kinds != "" {
		o.Kinds = strings.Split(*kinds, ",")
	}
	log.Info("chaos run", "seed", *seed, "faults", *faults, "work", workDir)
	res, err := chaos.Run(ctx, o)
	if err != nil {
		return err
	}
	s := chaos.Summarize(res, o, commit())
	s.Markdown(os.Stdout)
	if *out != "" {
		if err := s.Write(*out); err != nil {
			return err
		}
	}
	if n := res.Report.Violations() + len(res.Left); n > 0 {
		return errors.New(fmt.Sprint(n, " violations; the history is in ", filepath.Join(workDir, "history.jsonl")))
	}
	return nil
}

// commit describes the source tree the run was built from.
func commit() string {
	out, err := exec.Command("git", "describe", "--always", "--dirty").Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}
