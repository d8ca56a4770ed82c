package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/hapod/hapod/internal/dev/crdinstall"
	"github.com/hapod/hapod/internal/dev/gobuild"
	"github.com/hapod/hapod/internal/dev/localcluster"
	"github.com/hapod/hapod/internal/dev/netns"
	"github.com/hapod/hapod/internal/dev/realpod"
	"github.com/hapod/hapod/internal/dev/realtour"
)

// realNodes is how many real nodes the tour starts: two, so that the active
// and the standby run on different kubelets.
const realNodes = 2

// cannotRunReal says why this machine cannot run real nodes, "" if it can
// (localcluster.RealNodesUsable).
func cannotRunReal() string {
	if err := localcluster.RealNodesUsable(); err != nil {
		return err.Error()
	}
	return ""
}

// runReal plays the tour on real nodes of a local cluster it starts, inside
// the network namespace this process was re-executed in. fallback reports
// that the real nodes did not start, so that the caller plays on kwok
// instead (after saying so).
func runReal(ctx context.Context, root string, f flags, say func(string, ...any), stdout, stderr io.Writer) (code int, fallback bool) {
	fail := func(err error) (int, bool) {
		fmt.Fprintln(stderr, "hapod-tour:", err)
		if ctx.Err() != nil {
			return exitInterrupted, false
		}
		return exitFailed, false
	}
	binDir := filepath.Join(root, ".cache", "tour-bin")
	static := filepath.Join(binDir, "static")
	say("building hapod-controller, and hapod-demo, hapod-agent and hapod-file-app as static binaries for the real nodes' images, into %s", rel(root, binDir))
	if err := gobuild.Build(ctx, root, binDir, "./cmd/hapod-controller"); err != nil {
		return fail(err)
	}
	if err := gobuild.Static(ctx, root, static, "./cmd/hapod-demo", "./cmd/hapod-agent", "./cmd/hapod-file-app"); err != nil {
		return fail(err)
	}
	cacheDir := filepath.Join(root, ".cache", "cluster")
	if _, err := os.Stat(filepath.Join(cacheDir, "bin")); err != nil {
		say("its first start builds the cluster from the Go module proxy: about 10 minutes on 2 cores, then cached in %s", rel(root, cacheDir))
	}
	say("starting a local cluster with %d real nodes (kubelet, containerd, runc, CNI bridge, kube-proxy) in network namespace %s, which holds every address and rule it makes and is removed at the end", realNodes, os.Getenv(netns.EnvName))
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	began := time.Now()
	cl, err := localcluster.Start(ctx, localcluster.Options{
		CacheDir: cacheDir, Logger: log,
		NodePodCIDRs: []string{}, // real nodes only
		RealNodes:    realNodes,
		Images: []localcluster.Image{
			{Ref: realpod.DemoImage, Binary: filepath.Join(static, "hapod-demo")},
			{Ref: realpod.AgentImage, Binary: filepath.Join(static, "hapod-agent")},
			{Ref: realpod.FileAppImage, Binary: filepath.Join(static, "hapod-file-app")},
		},
	})
	if err != nil {
		if ctx.Err() != nil {
			return fail(errors.New("interrupted while starting the local cluster"))
		}
		say("the real nodes did not start: %v", err)
		return 0, true
	}
	defer func() {
		if err := cl.Stop(); err != nil {
			fmt.Fprintln(stderr, "hapod-tour:", err)
		} else {
			say("local cluster stopped")
		}
	}()
	say("cluster up in %s: real-node-1 and real-node-2 Ready", time.Since(began).Round(100*time.Millisecond))
	records, err := realpod.RecordsDir("tour")
	if err != nil {
		return fail(err)
	}
	logDir, err := newLogDir(filepath.Join(root, ".cache", "tour"), time.Now())
	if err != nil {
		return fail(err)
	}
	say("logs of this run: %s (controller.log, nft-monitor.log)", rel(root, logDir))
	res, err := realtour.Run(ctx, realtour.Options{
		Kubeconfig:    cl.Kubeconfig(),
		ExampleDir:    filepath.Join(root, "deploy", "example"),
		CRDFile:       crdinstall.Path(root),
		ControllerBin: filepath.Join(binDir, "hapod-controller"),
		LogDir:        logDir,
		Records:       records,
		InitDelay:     f.initDelay,
		Out:           stdout,
	})
	if res != nil && len(res.Scenes) > 0 {
		fmt.Fprintln(stdout, "\n== summary (ms from each scene's trigger; real containers, the load through the ClusterIP) ==")
		_ = realtour.WriteSummary(stdout, res.Scenes)
	}
	if err != nil {
		return fail(err)
	}
	if !res.OK() {
		fmt.Fprintln(stdout, "\nsome scenes did not behave as expected (see UNEXPECTED above); logs:", rel(root, logDir))
		return exitFailed, false
	}
	fmt.Fprintln(stdout, "\nevery scene behaved as expected")
	return exitOK, false
}
