package tour

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/hapod/hapod/internal/dev/child"
	"github.com/hapod/hapod/internal/dev/localcluster"
)

// controllerProc is hapod-controller running as its own process, as it would in a pod.
type controllerProc struct {
	cmd     *exec.Cmd
	logPath string
	done    chan struct{}
	waitErr error // valid once done is closed
	stopped atomic.Bool
}

// controllerArgs are the flags the tour runs the controller with. -notify-cidrs is the
// guard: role messages can only go to loopback addresses (the pods' processes), never to
// the pods' TEST-NET-2 IPs.
func controllerArgs(kubeconfig, ns string, notReadyGrace time.Duration, metricsPort, probePort int) []string {
	return []string{
		"-kubeconfig", kubeconfig,
		"-namespaces", ns,
		"-notify-cidrs", "127.0.0.0/8",
		"-notify-bind-address", "127.0.0.1:0",
		"-metrics-bind-address", "127.0.0.1:" + strconv.Itoa(metricsPort),
		"-health-probe-bind-address", "127.0.0.1:" + strconv.Itoa(probePort),
		"-not-ready-grace", notReadyGrace.String(),
	}
}

// startController starts the controller and returns once its /readyz answers 200 (its
// caches are synced). A port taken between choosing it and the controller binding it
// costs another attempt.
func startController(ctx context.Context, bin, kubeconfig, ns string, notReadyGrace time.Duration, logPath string) (*controllerProc, error) {
	for attempt := 1; ; attempt++ {
		c, err := tryStartController(ctx, bin, kubeconfig, ns, notReadyGrace, logPath)
		if err == nil || attempt == 3 || !strings.Contains(err.Error(), "address already in use") {
			return c, err
		}
	}
}

func tryStartController(ctx context.Context, bin, kubeconfig, ns string, notReadyGrace time.Duration, logPath string) (*controllerProc, error) {
	ports, err := localcluster.FreePorts(2)
	if err != nil {
		return nil, err
	}
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer func() { _ = logFile.Close() }() // the child has its own descriptor
	cmd := exec.Command(bin, controllerArgs(kubeconfig, ns, notReadyGrace, ports[0], ports[1])...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := child.Start(cmd); err != nil {
		return nil, fmt.Errorf("start hapod-controller: %w", err)
	}
	c := &controllerProc{cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() {
		c.waitErr = cmd.Wait()
		close(c.done)
	}()

	url := "http://127.0.0.1:" + strconv.Itoa(ports[1]) + "/readyz"
	hc := &http.Client{Timeout: time.Second, Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
	deadline := time.NewTimer(60 * time.Second)
	defer deadline.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		if resp, err := hc.Get(url); err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return c, nil
			}
		}
		select {
		case <-c.done:
			return nil, fmt.Errorf("hapod-controller exited (%v); tail of %s:\n%s", c.waitErr, logPath, tail(logPath, 15))
		case <-ctx.Done():
			c.stop()
			return nil, ctx.Err()
		case <-deadline.C:
			c.stop()
			return nil, fmt.Errorf("hapod-controller not ready within 60s; tail of %s:\n%s", logPath, tail(logPath, 15))
		case <-tick.C:
		}
	}
}

// exited is closed if the controller exits.
func (c *controllerProc) exited() <-chan struct{} { return c.done }

// err says why the controller exited.
func (c *controllerProc) err() error {
	return fmt.Errorf("hapod-controller exited (%v); tail of %s:\n%s", c.waitErr, c.logPath, tail(c.logPath, 15))
}

// stop ends the controller: SIGTERM (it releases what it holds), SIGKILL after 10s.
func (c *controllerProc) stop() {
	if c.stopped.Swap(true) {
		<-c.done
		return
	}
	child.Terminate(c.cmd.Process.Pid, c.done, 10*time.Second)
}
