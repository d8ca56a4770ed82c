package localcluster

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"slices"
	"time"
)

// apiserverRestartTimeout bounds the wait for a restarted API server's /readyz
// when the caller's context has no earlier deadline. A restart takes seconds
// (most of it the API server's post-start hooks); this is for one that hangs.
const apiserverRestartTimeout = 2 * time.Minute

// RestartAPIServer kills kube-apiserver with SIGKILL, as a crash would, starts it
// again with the same arguments (so on the same port and bind address, in either
// mode) and returns once its /readyz answers. down is how long it was away: from
// the kill until ready.
//
// etcd and the other components keep running and reconnect by themselves; clients
// see refused connections meanwhile, and client-go's informers resume (list and
// watch again) once it is back. The kill does not fail the cluster (Failed stays
// open); the new process takes the old one's place in what Stop stops and in the
// state file, so StopRunDir (hapod-cluster down) stops it too. Its output is
// appended to the same log. If the new process exits instead of becoming ready,
// the cluster has failed and the error says why.
//
// Restarts run one at a time; one that comes after Stop (or after the cluster
// failed) returns an error and changes nothing.
func (c *Cluster) RestartAPIServer(ctx context.Context) (down time.Duration, err error) {
	c.restartMu.Lock()
	defer c.restartMu.Unlock()
	hc, err := adminClient(c.restConfig)
	if err != nil {
		return 0, err
	}
	p, killed, err := c.replaceAPIServer()
	if err != nil {
		return 0, err
	}
	ctx, cancel := context.WithTimeout(ctx, apiserverRestartTimeout)
	defer cancel()
	if err := c.waitHealthy(ctx, p, c.restConfig.Host+"/readyz", hc, ""); err != nil {
		return time.Since(killed), fmt.Errorf("restart %s: %w", apiserverBin, err)
	}
	down = time.Since(killed)
	c.log.Info("component restarted", "component", apiserverBin, "down", down.Round(time.Millisecond).String())
	return down, nil
}

// replaceAPIServer kills the API server, starts its successor and puts it in the
// old one's place in c.procs and the state file, all under c.mu: Stop sets
// stopping before it takes its copy of c.procs under c.mu, so it either stops
// the successor or this sees stopping and does nothing. It returns the
// successor and when the old one was killed.
func (c *Cluster) replaceAPIServer() (*process, time.Time, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopping.Load() {
		return nil, time.Time{}, errors.New("localcluster: restart the API server: the cluster is stopping")
	}
	if err := c.Err(); err != nil {
		return nil, time.Time{}, fmt.Errorf("localcluster: restart the API server: the cluster has failed: %w", err)
	}
	i := slices.IndexFunc(c.procs, func(p *process) bool { return p.name == apiserverBin })
	if i < 0 {
		return nil, time.Time{}, errors.New("localcluster: restart the API server: it was never started")
	}
	old := c.procs[i]
	old.expectExit.Store(true) // before the kill: the exit watcher must see it
	killed := time.Now()
	// Only the process, not its group: the API server starts no children, and
	// a crash takes only the process.
	if err := old.cmd.Process.Kill(); err != nil && !old.exited() {
		return nil, time.Time{}, fmt.Errorf("localcluster: kill %s: %w", apiserverBin, err)
	}
	// Reaped, so its listening socket is closed and the port free to bind again.
	<-old.done

	cmd := exec.Command(old.cmd.Path, old.cmd.Args[1:]...)
	cmd.Dir, cmd.Env = old.cmd.Dir, old.cmd.Env
	p, err := c.spawn(old.name, cmd, true)
	if err != nil {
		// No API server now and none coming: the cluster is broken.
		c.fail(err)
		return nil, time.Time{}, err
	}
	c.procs[i] = p
	for j := range c.state.Processes {
		if sp := &c.state.Processes[j]; sp.Name == old.name && sp.PID == old.cmd.Process.Pid {
			sp.PID = cmd.Process.Pid
		}
	}
	return p, killed, writeState(c.runDir, &c.state)
}
