// Command hapod-cluster builds, starts and stops the local Kubernetes control plane
// (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok on 127.0.0.1) that
// hapod's demo and tests run against.
//
//	hapod-cluster build          build the binaries into .cache/cluster/bin (cold: ~8 min)
//	hapod-cluster up             start a cluster; stay in the foreground until Ctrl-C
//	hapod-cluster up -detach     start a cluster in the background and return
//	hapod-cluster down           stop the cluster that up started
//	hapod-cluster env            print export KUBECONFIG=... for that cluster
//
// The cluster that up starts is recorded in .cache/cluster/current/: kubeconfig (a copy
// with the certificates embedded), up.pid (the process that owns the cluster), rundir
// (its run directory) and up.log (the output of a detached up).
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
	"syscall"
	"time"

	"github.com/hapod/hapod/internal/dev/localcluster"
	"github.com/hapod/hapod/internal/dev/netns"
)

const usage = `usage: hapod-cluster <command> [flags]

commands:
  build            build etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok
                   into .cache/cluster/bin (cold: about 8 minutes; cached: under a second)
  up [-detach] [-real-nodes N]
                   build if needed and start a local cluster; without -detach it stays in the
                   foreground until SIGINT/SIGTERM, with -detach it runs in the background;
                   -real-nodes N adds N real nodes inside a network namespace of their own
                   (reach the API server there: nsenter --net=/run/netns/$(cat
                   .cache/cluster/current/netns) kubectl ...)
  down             stop the cluster started by up
  env              print 'export KUBECONFIG=...' for the running cluster

Run 'hapod-cluster <command> -h' for the flags of a command.
`

// errUsage makes main print the usage and exit 2.
var errUsage = errors.New("usage")

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	switch {
	case errors.Is(err, errUsage), errors.Is(err, flag.ErrHelp):
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	case err != nil:
		fmt.Fprintln(os.Stderr, "hapod-cluster:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return errUsage
	}
	cmd, args := args[0], args[1:]
	fs := flag.NewFlagSet("hapod-cluster "+cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	cacheDir := fs.String("cache", "", "cluster cache directory (default .cache/cluster under the repository root)")
	verbose := fs.Bool("v", false, "log debug detail")
	var realNode *bool
	var detach *bool
	realNodes := new(int)
	var timeout *time.Duration
	switch cmd {
	case "up":
		detach = fs.Bool("detach", false, "start the cluster in the background and return once it is up")
		realNodes = fs.Int("real-nodes", 0, "also start this many real nodes (kubelet, containerd, runc, CNI, kube-proxy) inside a network namespace of their own; needs root")
		timeout = fs.Duration("timeout", 2*time.Minute, "how long the control plane may take to become healthy (the build is not counted)")
	case "down":
		timeout = fs.Duration("timeout", time.Minute, "how long to wait for the cluster to stop before killing it")
	case "build":
		realNode = fs.Bool("real-node", true, "also build a real node's kubelet, kube-proxy, containerd and CNI plugins")
	case "env":
	case "help", "-h", "-help", "--help":
		return errUsage
	default:
		return fmt.Errorf("unknown command %q (want build, up, down or env)", cmd)
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%s: unexpected arguments %q", cmd, fs.Args())
	}
	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))

	dir := *cacheDir
	if dir == "" {
		var err error
		if dir, err = localcluster.DefaultCacheDir(); err != nil {
			return err
		}
	}
	cur := current{dir: dir}

	switch cmd {
	case "build":
		bins, err := localcluster.Build(ctx, localcluster.BuildOptions{CacheDir: dir, Logger: log, RealNode: *realNode})
		if err != nil {
			return err
		}
		for _, b := range append([]string{bins.Etcd, bins.KubeAPIServer, bins.KubeControllerManager, bins.KubeScheduler, bins.Kwok,
			bins.Kubelet, bins.KubeProxy, bins.Containerd, bins.ContainerdShim, bins.Ctr}, bins.CNIBinDirs...) {
			if b != "" {
				fmt.Fprintln(stdout, b)
			}
		}
		return nil
	case "up":
		o := upOptions{timeout: *timeout, verbose: *verbose, realNodes: *realNodes}
		if *detach {
			return upDetached(ctx, cur, o, log, stdout)
		}
		if _, inside := netns.Inside(); o.realNodes > 0 && !inside {
			// Real nodes live in a network namespace of their own: run
			// this same command inside one, which is removed afterwards
			// with everything the nodes left.
			code, err := netns.Run(os.Args)
			if err == nil && code != 0 {
				err = fmt.Errorf("the cluster in its network namespace exited with status %d", code)
			}
			return err
		}
		return up(ctx, cur, o, log, stdout)
	case "down":
		return down(cur, *timeout, log, stdout)
	case "env":
		kc, err := cur.runningKubeconfig()
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "export KUBECONFIG=%s\n", kc)
		return nil
	}
	return errUsage
}
