package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hapod/hapod/internal/dev/child"
	"github.com/hapod/hapod/internal/dev/localcluster"
	"github.com/hapod/hapod/internal/dev/netns"
	"github.com/hapod/hapod/internal/dev/poll"
)

// current is .cache/cluster/current: the one cluster that up manages.
type current struct{ dir string } // dir is the cluster cache

func (c current) path(name string) string { return filepath.Join(c.dir, "current", name) }

// owner is the up process recorded in up.pid: its pid and start time, so a later process
// that reuses the pid is not mistaken for it.
type owner struct {
	pid   int
	start uint64
}

func (c current) readOwner() (owner, bool) {
	data, err := os.ReadFile(c.path("up.pid"))
	if err != nil {
		return owner{}, false
	}
	f := strings.Fields(string(data))
	if len(f) != 2 {
		return owner{}, false
	}
	pid, err1 := strconv.Atoi(f[0])
	start, err2 := strconv.ParseUint(f[1], 10, 64)
	if err1 != nil || err2 != nil {
		return owner{}, false
	}
	return owner{pid: pid, start: start}, true
}

func (o owner) alive() bool { return child.Alive(o.pid, o.start) }

// running returns the owner of a running cluster, if there is one.
func (c current) running() (owner, bool) {
	o, ok := c.readOwner()
	if ok && o.alive() {
		return o, true
	}
	return owner{}, false
}

func (c current) runningKubeconfig() (string, error) {
	if _, ok := c.running(); !ok {
		return "", errors.New("no cluster is running; start one with 'make cluster' (hapod-cluster up -detach)")
	}
	kc := c.path("kubeconfig")
	if _, err := os.Stat(kc); err != nil {
		return "", errors.New("the cluster is still starting (no kubeconfig yet); try again in a few seconds")
	}
	return kc, nil
}

// clear removes what a dead up left behind: its cluster (if any process of it still
// runs) and the current directory.
func (c current) clear(grace time.Duration) error {
	if rd, err := os.ReadFile(c.path("rundir")); err == nil {
		if err := localcluster.StopRunDir(strings.TrimSpace(string(rd)), grace); err != nil {
			return err
		}
	}
	return os.RemoveAll(filepath.Join(c.dir, "current"))
}

func (c current) refuseIfRunning() error {
	if o, ok := c.running(); ok {
		return fmt.Errorf("a cluster is already running (hapod-cluster up, pid %d; kubeconfig %s); stop it with 'make cluster-down' (hapod-cluster down)",
			o.pid, c.path("kubeconfig"))
	}
	return nil
}

// upOptions are up's flags.
type upOptions struct {
	timeout   time.Duration
	verbose   bool
	realNodes int
}

// up starts a cluster and keeps it until ctx ends (SIGINT/SIGTERM) or a component dies.
func up(ctx context.Context, cur current, o upOptions, log *slog.Logger, stdout io.Writer) (err error) {
	if err := cur.refuseIfRunning(); err != nil {
		return err
	}
	if err := cur.clear(10 * time.Second); err != nil {
		return fmt.Errorf("clean up after an earlier cluster: %w", err)
	}
	if err := os.MkdirAll(filepath.Join(cur.dir, "current"), 0o755); err != nil {
		return err
	}
	me, err := child.StartTime(os.Getpid())
	if err != nil {
		return err
	}
	// Record ourselves first, so down can stop us while we build or start.
	if err := writeFileAtomic(cur.path("up.pid"), fmt.Appendf(nil, "%d %d\n", os.Getpid(), me)); err != nil {
		return err
	}
	defer func() {
		if rerr := os.RemoveAll(filepath.Join(cur.dir, "current")); err == nil && rerr != nil {
			err = rerr
		}
	}()

	var nodes []string // kwok's defaults
	if o.realNodes > 0 {
		nodes = []string{} // real nodes only: the scheduler must not place pods on kwok
		ns, _ := netns.Inside()
		if err := writeFileAtomic(cur.path("netns"), []byte(ns+"\n")); err != nil {
			return err
		}
	}
	cl, err := localcluster.Start(ctx, localcluster.Options{CacheDir: cur.dir, Timeout: o.timeout, Logger: log, RealNodes: o.realNodes, NodePodCIDRs: nodes})
	if err != nil {
		if ctx.Err() != nil {
			return errors.New("interrupted while starting the cluster")
		}
		return err
	}
	stopped := false
	defer func() {
		if !stopped {
			_ = cl.Stop()
		}
	}()
	if err := writeFileAtomic(cur.path("rundir"), []byte(cl.RunDir()+"\n")); err != nil {
		return err
	}
	kc, err := os.ReadFile(cl.Kubeconfig())
	if err != nil {
		return err
	}
	// The kubeconfig is the ready marker: written last, by rename.
	if err := writeFileAtomic(cur.path("kubeconfig"), kc); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "export KUBECONFIG=%s\n", cur.path("kubeconfig"))
	log.Info("cluster running; stop it with Ctrl-C or 'hapod-cluster down'", "pid", os.Getpid())

	select {
	case <-ctx.Done():
		log.Info("stopping the cluster")
	case <-cl.Failed():
		err = fmt.Errorf("the cluster failed: %w", cl.Err())
	}
	stopped = true
	if serr := cl.Stop(); serr != nil && err == nil {
		err = serr
	}
	if err == nil {
		log.Info("cluster stopped")
	}
	return err
}

// upDetached builds in the foreground (so its progress is seen), then starts 'up' again
// as a background process in its own session, with its output in current/up.log, and
// returns when that process has written the kubeconfig or has failed.
func upDetached(ctx context.Context, cur current, o upOptions, log *slog.Logger, stdout io.Writer) error {
	timeout := o.timeout
	if err := cur.refuseIfRunning(); err != nil {
		return err
	}
	if err := cur.clear(10 * time.Second); err != nil {
		return fmt.Errorf("clean up after an earlier cluster: %w", err)
	}
	if _, err := localcluster.Build(ctx, localcluster.BuildOptions{CacheDir: cur.dir, Logger: log, RealNode: o.realNodes > 0}); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(cur.dir, "current"), 0o755); err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	logPath := cur.path("up.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return err
	}
	defer func() { _ = logFile.Close() }()
	args := []string{"up", "-cache", cur.dir, "-timeout", timeout.String(), "-real-nodes", strconv.Itoa(o.realNodes)}
	if o.verbose {
		args = append(args, "-v")
	}
	cmd := exec.Command(self, args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile // not ours: make and go run must not wait on it
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start background cluster: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()

	err = poll.Until(ctx, timeout+30*time.Second, func() (bool, error) {
		select {
		case err := <-exited:
			return false, poll.Stop(fmt.Errorf("the background cluster exited (%w); %s says:\n%s", err, logPath, child.Tail(logPath, 30)))
		default:
		}
		// The owner is the background process, or with real nodes its
		// child inside their network namespace (clear removed any older one).
		if o, ok := cur.readOwner(); !ok || !o.alive() {
			return false, nil
		}
		_, err := os.Stat(cur.path("kubeconfig"))
		return err == nil, nil
	})
	switch {
	case err == nil:
		fmt.Fprintf(stdout, "export KUBECONFIG=%s\n", cur.path("kubeconfig"))
		log.Info("cluster running in the background; stop it with 'make cluster-down'", "pid", cmd.Process.Pid, "log", logPath)
		return cmd.Process.Release()
	case ctx.Err() != nil:
		_ = cmd.Process.Signal(syscall.SIGTERM)
		return errors.New("interrupted; stopping the background cluster")
	case errors.Is(err, context.DeadlineExceeded):
		_ = cmd.Process.Signal(syscall.SIGTERM)
		return fmt.Errorf("the background cluster was not up within %s; %s says:\n%s", timeout+30*time.Second, logPath, child.Tail(logPath, 30))
	default:
		return err // it exited
	}
}

// down stops the cluster that up started: it asks the up process to stop it (SIGTERM),
// kills it if it does not finish in time, then stops whatever the run directory's state
// file still lists.
func down(cur current, timeout time.Duration, log *slog.Logger, stdout io.Writer) error {
	o, alive := cur.running()
	_, recorded := cur.readOwner()
	if !alive && !recorded {
		if _, err := os.Stat(cur.path("rundir")); err != nil {
			fmt.Fprintln(stdout, "no cluster is running")
			return nil
		}
	}
	if alive {
		log.Info("stopping the cluster", "pid", o.pid)
		_ = syscall.Kill(o.pid, syscall.SIGTERM)
		// Not bounded by a context: down is what runs after an interrupt.
		if poll.Until(context.Background(), timeout, func() (bool, error) { return !o.alive(), nil }) != nil {
			log.Info("the cluster did not stop in time, killing it", "pid", o.pid, "timeout", timeout.String())
			_ = syscall.Kill(o.pid, syscall.SIGKILL)
		}
	}
	if err := cur.clear(10 * time.Second); err != nil {
		return err
	}
	fmt.Fprintln(stdout, "cluster stopped")
	return nil
}

func writeFileAtomic(path string, data []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
