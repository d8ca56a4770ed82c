package localcluster

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"slices"
	"time"

	"github.com/hapod/hapod/internal/dev/child"
	"github.com/hapod/hapod/internal/dev/poll"
)

// realNodeStartTimeout bounds StartRealNode when the caller's context has no
// earlier deadline: containerd answers in well under a second and the
// kubelet reports Ready in about 2 s; this is for one that hangs.
const realNodeStartTimeout = 2 * time.Minute

// StartRealNode starts a real node that StopRealNode stopped: containerd
// first, with the same configuration (it finds its shims, and so the
// containers that ran on meanwhile, by its state directory), then the
// kubelet, and returns once the node is Ready again. What the kubelet finds
// on its return it handles as a kubelet back from a crash does: containers
// of pods deleted meanwhile are stopped, pods still there carry on.
//
// The new processes take the old ones' places in what Stop stops and in the
// state file; their output is appended to the same logs. A node whose
// processes still run, or a cluster that is stopping or has failed, is an
// error and nothing is started.
func (c *Cluster) StartRealNode(ctx context.Context, node *RealNode) error {
	ctx, cancel := context.WithTimeout(ctx, realNodeStartTimeout)
	defer cancel()
	ctrd, err := c.respawn(node, func(n *RealNode) **process { return &n.containerd })
	if err != nil {
		return err
	}
	if err := poll.Until(ctx, time.Hour, func() (bool, error) { // bounded by ctx
		if ctrd.exited() {
			return false, poll.Stop(ctrd.exitError())
		}
		return c.ctr(ctx, node, "version") == nil, nil
	}); err != nil {
		return fmt.Errorf("start %s again: containerd: %w", node.Name, err)
	}
	kubelet, err := c.respawn(node, func(n *RealNode) **process { return &n.kubelet })
	if err != nil {
		return err
	}
	// A kubelet that exits at once fails the wait at once, not at its end.
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	go func() {
		select {
		case <-kubelet.done:
			wcancel()
		case <-wctx.Done():
		}
	}()
	if _, err := WaitNodeReady(wctx, c.client, node.Name); err != nil {
		if kubelet.exited() {
			return fmt.Errorf("start %s again: %w", node.Name, kubelet.exitError())
		}
		return fmt.Errorf("start %s again: %w; tail of %s:\n%s", node.Name, err, kubelet.logPath, child.Tail(kubelet.logPath, 25))
	}
	c.log.Info("real node started again", "node", node.Name)
	return nil
}

// respawn starts the process field points to again, with the same command
// line, in its place in c.procs and the state file, all under c.mu (as
// replaceAPIServer: Stop then either stops the new process or this sees
// stopping and starts nothing).
func (c *Cluster) respawn(node *RealNode, field func(*RealNode) **process) (*process, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopping.Load() {
		return nil, errors.New("localcluster: start a real node: the cluster is stopping")
	}
	if err := c.Err(); err != nil {
		return nil, fmt.Errorf("localcluster: start a real node: the cluster has failed: %w", err)
	}
	slot := field(node)
	old := *slot
	if old == nil {
		return nil, fmt.Errorf("localcluster: start %s: it was never started", node.Name)
	}
	if !old.exited() {
		return nil, fmt.Errorf("localcluster: start %s again: %s still runs (StopRealNode first)", node.Name, old.name)
	}
	i := slices.Index(c.procs, old)
	if i < 0 {
		return nil, fmt.Errorf("localcluster: start %s again: %s is not one of the cluster's processes", node.Name, old.name)
	}
	cmd := exec.Command(old.cmd.Path, old.cmd.Args[1:]...)
	cmd.Dir, cmd.Env = old.cmd.Dir, old.cmd.Env
	p, err := c.spawn(old.name, cmd, true)
	if err != nil {
		return nil, err
	}
	c.procs[i], *slot = p, p
	for j := range c.state.Processes {
		if sp := &c.state.Processes[j]; sp.Name == old.name && sp.PID == old.cmd.Process.Pid {
			sp.PID = cmd.Process.Pid
		}
	}
	return p, writeState(c.runDir, &c.state)
}
