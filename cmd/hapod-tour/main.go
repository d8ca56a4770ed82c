// Command hapod-tour shows hapod doing its whole job: it is what `make demo`
// runs.
//
// Where it can (as root, with runc, nft, ip and nsenter), it runs on real
// nodes (internal/dev/realtour): it re-executes itself inside a network
// namespace of its own, starts a local cluster with two real nodes (kubelet,
// containerd, runc, CNI bridge, kube-proxy), runs the controller as its own
// process, applies the seed's example (deploy/example) as real containers,
// sends its load to the Service's ClusterIP and plays eight scenes: the
// initial election, the active's critical process SIGKILLed, the active pod
// deleted, the active's sidecar SIGKILLed (no failover) and the standby's
// critical process SIGKILLed (standby replaced, active untouched); then a
// second group whose app knows hapod only by the role file hapod-agent
// writes (cmd/hapod-file-app): its initial election, and its active app
// SIGKILLed; last, a planned switchover of the example through its
// HAGroup. Each scene prints a timeline in milliseconds from its trigger,
// from the kubelet's report to the first request answered through the
// ClusterIP.
//
// Elsewhere, or with -kwok or -kubeconfig, it plays the first five scenes on
// kwok's simulated node (internal/dev/tour), playing the kubelet and
// kube-proxy itself, and says so.
//
// A summary table ends the run. It exits 0 when every scene behaved as
// expected, 1 otherwise, and 130 when interrupted. Whatever it started is
// stopped, also on Ctrl-C.
//
// Flags:
//
//	-kwok                play on kwok even where real nodes can run
//	-kubeconfig FILE     play on kwok in this cluster instead of a local one
//	-init-delay D        the demo app's slow start (default 1s)
//	-not-ready-grace D   the controller's -not-ready-grace on kwok (default 3s)
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"syscall"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/hapod/hapod/internal/dev/gobuild"
	"github.com/hapod/hapod/internal/dev/localcluster"
	"github.com/hapod/hapod/internal/dev/netns"
	"github.com/hapod/hapod/internal/dev/tour"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	// After the first signal the default behaviour returns: a second one ends the tour
	// at once (its processes die with it).
	context.AfterFunc(ctx, stop)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// Exit codes.
const (
	exitOK          = 0
	exitFailed      = 1
	exitUsage       = 2
	exitInterrupted = 130
)

// flags are the tour's command line.
type flags struct {
	kubeconfig       string
	initDelay, grace time.Duration
	kwok             bool
}

// parseFlags reads args; a usage error is printed and returns exitUsage, -h exitOK.
func parseFlags(args []string, stderr io.Writer) (flags, int, bool) {
	var f flags
	fs := flag.NewFlagSet("hapod-tour", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&f.kubeconfig, "kubeconfig", "", "play on kwok in the cluster of this kubeconfig instead of a local cluster")
	fs.BoolVar(&f.kwok, "kwok", false, "play on kwok's simulated node even where real nodes can run")
	fs.DurationVar(&f.initDelay, "init-delay", time.Second, "the demo app's slow start before it is ready")
	fs.DurationVar(&f.grace, "not-ready-grace", 3*time.Second, "the controller's -not-ready-grace")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return f, exitOK, false
		}
		return f, exitUsage, false
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "hapod-tour: unexpected arguments %q\n", fs.Args())
		return f, exitUsage, false
	}
	if f.initDelay <= 0 || f.grace <= 0 {
		fmt.Fprintln(stderr, "hapod-tour: -init-delay and -not-ready-grace must be positive")
		return f, exitUsage, false
	}
	return f, 0, true
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	f, code, ok := parseFlags(args, stderr)
	if !ok {
		return code
	}
	fail := func(err error) int {
		fmt.Fprintln(stderr, "hapod-tour:", err)
		if ctx.Err() != nil {
			return exitInterrupted
		}
		return exitFailed
	}
	wd, err := os.Getwd()
	if err != nil {
		return fail(err)
	}
	root, err := localcluster.RepoRoot(wd)
	if err != nil {
		return fail(err)
	}
	say := func(format string, a ...any) { fmt.Fprintf(stdout, "• "+format+"\n", a...) }
	if !f.kwok && f.kubeconfig == "" {
		code, played := playReal(ctx, root, f, say, stdout, stderr)
		if played {
			return code
		}
	}
	say("hapod tour: the controller, the seed's example and real demo processes on a local Kubernetes control plane")

	binDir := filepath.Join(root, ".cache", "tour-bin")
	say("building hapod-controller and hapod-demo into %s", rel(root, binDir))
	if err := gobuild.Build(ctx, root, binDir, "./cmd/hapod-controller", "./cmd/hapod-demo"); err != nil {
		return fail(err)
	}

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	kc, own, stopCluster, err := cluster(ctx, cancel, root, f.kubeconfig, say, stderr)
	if err != nil {
		return fail(err)
	}
	defer stopCluster()

	logDir, err := newLogDir(filepath.Join(root, ".cache", "tour"), time.Now())
	if err != nil {
		return fail(err)
	}
	say("logs of this run: %s (controller.log, one file per pod process)", rel(root, logDir))
	res, err := tour.Run(ctx, tour.Options{
		Kubeconfig:      kc,
		ExampleDir:      filepath.Join(root, "deploy", "example"),
		ControllerBin:   filepath.Join(binDir, "hapod-controller"),
		DemoBin:         filepath.Join(binDir, "hapod-demo"),
		LogDir:          logDir,
		InitDelay:       f.initDelay,
		NotReadyGrace:   f.grace,
		SkipCleanupWait: own, // the cluster goes next
		Out:             stdout,
	})
	if res != nil && len(res.Scenes) > 0 {
		fmt.Fprintln(stdout, "\n== summary (ms from each scene's trigger) ==")
		_ = tour.WriteSummary(stdout, res.Scenes)
	}
	if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
		return fail(cause)
	}
	if err != nil {
		return fail(err)
	}
	if !res.OK() {
		fmt.Fprintln(stdout, "\nsome scenes did not behave as expected (see UNEXPECTED above); logs:", rel(root, logDir))
		return exitFailed
	}
	fmt.Fprintln(stdout, "\nevery scene behaved as expected")
	return exitOK
}

// playReal plays the tour on real nodes where it can (played), re-executing
// this command inside a network namespace of its own first; where it cannot
// it says why, for the caller to play on kwok.
func playReal(ctx context.Context, root string, f flags, say func(string, ...any), stdout, stderr io.Writer) (code int, played bool) {
	if why := cannotRunReal(); why != "" {
		say("%s: playing on kwok's simulated node instead (the timelines then stop at the EndpointSlice)", why)
		return 0, false
	}
	if _, inside := netns.Inside(); !inside {
		code, err := netns.Run(os.Args)
		if err != nil {
			fmt.Fprintln(stderr, "hapod-tour:", err)
			return exitFailed, true
		}
		return code, true
	}
	say("hapod tour on real nodes: the controller, the seed's example as real containers, the load through the Service's ClusterIP")
	code, fallback := runReal(ctx, root, f, say, stdout, stderr)
	if fallback {
		say("playing on kwok's simulated node instead (the timelines then stop at the EndpointSlice)")
		return 0, false
	}
	return code, true
}

// cluster returns the kubeconfig of the cluster to play on: the one given, the one
// `make cluster` keeps, or one of its own (own), which the returned function stops
// (and whose failure cancels ctx).
func cluster(ctx context.Context, cancel context.CancelCauseFunc, root, given string, say func(string, ...any), stderr io.Writer) (kubeconfig string, own bool, stop func(), err error) {
	if given != "" {
		return given, false, func() {}, nil
	}
	cacheDir := filepath.Join(root, ".cache", "cluster")
	current := filepath.Join(cacheDir, "current", "kubeconfig")
	if answers(current) {
		say("reusing the running local cluster (make cluster): %s", rel(root, current))
		return current, false, func() {}, nil
	}
	say("starting a local control plane on 127.0.0.1 (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok)")
	if _, err := os.Stat(filepath.Join(cacheDir, "bin")); err != nil {
		say("its first start builds it from the Go module proxy: about 8 minutes on 2 cores, then cached in %s", rel(root, cacheDir))
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	cl, err := localcluster.Start(ctx, localcluster.Options{CacheDir: cacheDir, Logger: log})
	if err != nil {
		if ctx.Err() != nil {
			return "", false, nil, errors.New("interrupted while starting the local cluster")
		}
		return "", false, nil, fmt.Errorf("the local cluster did not start: %w", err)
	}
	go func() {
		select {
		case <-cl.Failed():
			cancel(fmt.Errorf("the local cluster failed: %w", cl.Err()))
		case <-ctx.Done():
		}
	}()
	stop = func() {
		if err := cl.Stop(); err != nil {
			fmt.Fprintln(stderr, "hapod-tour:", err)
		} else {
			say("local control plane stopped")
		}
	}
	return cl.Kubeconfig(), true, stop, nil
}

// keepRuns is how many runs' logs are kept.
const keepRuns = 5

// newLogDir creates a directory for this run's logs under dir, named after the time
// (runs in parallel, on different clusters, each get their own), and removes all but
// the newest keepRuns of the earlier ones.
func newLogDir(dir string, now time.Time) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	logDir, err := os.MkdirTemp(dir, "run-"+now.Format("20060102-150405")+"-")
	if err != nil {
		return "", err
	}
	old, err := filepath.Glob(filepath.Join(dir, "run-*"))
	if err != nil {
		return "", err
	}
	// The names sort by time.
	slices.Sort(old)
	for len(old) > keepRuns {
		if old[0] != logDir {
			_ = os.RemoveAll(old[0])
		}
		old = old[1:]
	}
	return logDir, nil
}

// answers reports whether a kubeconfig exists and its API server answers.
func answers(kubeconfig string) bool {
	if _, err := os.Stat(kubeconfig); err != nil {
		return false
	}
	rc, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return false
	}
	rc.Timeout = 3 * time.Second
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return false
	}
	_, err = cs.Discovery().ServerVersion()
	return err == nil
}

// rel shows paths under the repository relative to it.
func rel(root, path string) string {
	if r, err := filepath.Rel(root, path); err == nil {
		return r
	}
	return path
}
