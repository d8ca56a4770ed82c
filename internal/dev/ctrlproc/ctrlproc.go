package ctrlproc

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hapod/hapod/internal/dev/child"
	"github.com/hapod/hapod/internal/dev/localcluster"
	"github.com/hapod/hapod/internal/dev/poll"
	"github.com/hapod/hapod/internal/record"
)

// Options configures Start.
type Options struct {
	// Bin is the built hapod-controller (required).
	Bin string
	// Kubeconfig of the cluster (required).
	Kubeconfig string
	// Namespaces the controller watches, comma-separated (required: a dev run
	// must not touch other runs' pods on a shared cluster).
	Namespaces string
	// Args are more flags, after the ones Start sets (a later flag wins).
	Args []string
	// LogPath receives the process's stdout and stderr (required).
	LogPath string
	// RecordsPath is the -failover-records file; empty means LogPath with
	// ".records.jsonl" for its extension. An existing file is removed first,
	// so the records read are this process's.
	RecordsPath string
	// ReadyTimeout bounds the wait for /readyz; 0 means 60 s.
	ReadyTimeout time.Duration
	// OnRecord, if set, is called with each record as it is read, in order,
	// after Records includes it (a caller that keeps its own history).
	OnRecord func(record.Record)
}

// Controller is a running hapod-controller process. Its methods are safe for
// concurrent use.
type Controller struct {
	cmd                            *exec.Cmd
	logPath, recordsPath           string
	metricsAddr, probeAddr, pprofA string

	done    chan struct{} // closed once the process has exited and been reaped
	waitErr error         // valid once done is closed

	stopOnce   sync.Once
	stopping   chan struct{} // closed when Stop begins: an exit is expected from then on
	stopFollow context.CancelFunc
	followDone chan struct{}
	onRecord   func(record.Record)

	mu      sync.Mutex
	records []record.Record
	byPod   map[string]int // index in records of each pod's latest
	changed chan struct{}  // closed and replaced on every record
	failErr error          // why it failed, once failed is closed
	failed  chan struct{}
}

// Start starts the controller and returns once its /readyz answers 200. A port
// taken between choosing it and the controller binding it costs another
// attempt (at most three).
func Start(ctx context.Context, o Options) (*Controller, error) {
	if o.Bin == "" || o.Kubeconfig == "" || o.Namespaces == "" || o.LogPath == "" {
		return nil, errors.New("ctrlproc: Bin, Kubeconfig, Namespaces and LogPath are required")
	}
	if o.RecordsPath == "" {
		o.RecordsPath = strings.TrimSuffix(o.LogPath, ".log") + ".records.jsonl"
	}
	if o.ReadyTimeout == 0 {
		o.ReadyTimeout = 60 * time.Second
	}
	for attempt := 1; ; attempt++ {
		c, err := start(ctx, o)
		if err == nil || attempt == 3 || !strings.Contains(err.Error(), "address already in use") {
			return c, err
		}
	}
}

// args are the flags of one start: every address on 127.0.0.1, role
// messages only to loopback (-notify-cidrs is the guard: the dev runs' pod IPs
// are API data only, never a destination).
func (o Options) args(metrics, probe, pprof string) []string {
	return append([]string{
		"-kubeconfig", o.Kubeconfig,
		"-namespaces", o.Namespaces,
		"-notify-cidrs", "127.0.0.0/8",
		"-notify-bind-address", "127.0.0.1:0",
		"-metrics-bind-address", metrics,
		"-health-probe-bind-address", probe,
		"-pprof-bind-address", pprof,
		"-failover-records", o.RecordsPath,
	}, o.Args...)
}

func start(ctx context.Context, o Options) (*Controller, error) {
	ports, err := localcluster.FreePorts(3)
	if err != nil {
		return nil, err
	}
	addr := func(i int) string { return "127.0.0.1:" + strconv.Itoa(ports[i]) }
	if err := os.Remove(o.RecordsPath); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("ctrlproc: %w", err)
	}
	logFile, err := os.Create(o.LogPath)
	if err != nil {
		return nil, fmt.Errorf("ctrlproc: %w", err)
	}
	defer func() { _ = logFile.Close() }() // the child has its own descriptor
	cmd := exec.Command(o.Bin, o.args(addr(0), addr(1), addr(2))...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := child.Start(cmd); err != nil {
		return nil, fmt.Errorf("start hapod-controller: %w", err)
	}
	c := &Controller{
		cmd: cmd, logPath: o.LogPath, recordsPath: o.RecordsPath,
		metricsAddr: addr(0), probeAddr: addr(1), pprofA: addr(2),
		done: make(chan struct{}), stopping: make(chan struct{}), followDone: make(chan struct{}),
		changed: make(chan struct{}), failed: make(chan struct{}), onRecord: o.OnRecord, byPod: map[string]int{},
	}
	go c.wait()
	followCtx, stopFollow := context.WithCancel(context.WithoutCancel(ctx))
	c.stopFollow = stopFollow
	go c.follow(followCtx)
	if err := c.waitReady(ctx, o.ReadyTimeout); err != nil {
		c.Stop()
		return nil, err
	}
	return c, nil
}

// wait reaps the process and reports an exit that Stop did not ask for.
func (c *Controller) wait() {
	c.waitErr = c.cmd.Wait()
	close(c.done)
	select {
	case <-c.stopping:
	default:
		c.fail(fmt.Errorf("hapod-controller exited (%w); tail of %s:\n%s", c.waitErr, c.logPath, child.Tail(c.logPath, 15)))
	}
}

// follow reads the record file until Stop.
func (c *Controller) follow(ctx context.Context) {
	defer close(c.followDone)
	err := record.Follow(ctx, c.recordsPath, poll.Interval, func(r record.Record) {
		c.mu.Lock()
		c.byPod[r.Pod] = len(c.records)
		c.records = append(c.records, r)
		close(c.changed)
		c.changed = make(chan struct{})
		c.mu.Unlock()
		if c.onRecord != nil {
			c.onRecord(r)
		}
	})
	if err != nil && ctx.Err() == nil {
		c.fail(fmt.Errorf("reading the failover records %s: %w", c.recordsPath, err))
	}
}

func (c *Controller) fail(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.failErr == nil {
		c.failErr = err
		close(c.failed)
	}
}

// waitReady polls /readyz until it answers 200 or the process exits.
func (c *Controller) waitReady(ctx context.Context, timeout time.Duration) error {
	url := "http://" + c.probeAddr + "/readyz"
	hc := &http.Client{Timeout: time.Second, Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
	err := poll.Until(ctx, timeout, func() (bool, error) {
		select {
		case <-c.failed:
			return false, poll.Stop(c.Err())
		default:
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return false, poll.Stop(err)
		}
		resp, err := hc.Do(req)
		if err != nil {
			return false, err
		}
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return false, fmt.Errorf("%s: %s", url, resp.Status)
		}
		return true, nil
	})
	if err != nil && ctx.Err() == nil && !errors.Is(err, c.Err()) {
		return fmt.Errorf("hapod-controller not ready within %s (%w); tail of %s:\n%s", timeout, err, c.logPath, child.Tail(c.logPath, 15))
	}
	return err
}

// Records returns the promotions recorded so far, in the order written.
func (c *Controller) Records() []record.Record {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]record.Record(nil), c.records...)
}

// Promotion returns the latest record about the pod named pod.
func (c *Controller) Promotion(pod string) (record.Record, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	i, ok := c.byPod[pod]
	if !ok {
		return record.Record{}, false
	}
	return c.records[i], true
}

// Changed returns a channel that is closed when the next record arrives.
func (c *Controller) Changed() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.changed
}

// Failed is closed when the process exits without Stop, or its records
// cannot be read; Err says why.
func (c *Controller) Failed() <-chan struct{} { return c.failed }

// Err says why the controller failed; nil if it did not.
func (c *Controller) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.failErr
}

// Pid is the process id.
func (c *Controller) Pid() int { return c.cmd.Process.Pid }

// MetricsURL is the address of its /metrics.
func (c *Controller) MetricsURL() string { return "http://" + c.metricsAddr + "/metrics" }

// PprofURL is the address of its /debug/pprof.
func (c *Controller) PprofURL() string { return "http://" + c.pprofA + "/debug/pprof" }

// Done is closed once the process has exited, for whatever reason.
func (c *Controller) Done() <-chan struct{} { return c.done }

// LogPath is where its output goes.
func (c *Controller) LogPath() string { return c.logPath }

// Kill SIGKILLs the process, as a crash or an OOM kill would, and returns
// once it has been reaped; the exit is expected (it does not fail).
func (c *Controller) Kill() {
	c.stopOnce.Do(func() {
		close(c.stopping)
		_ = syscall.Kill(-c.Pid(), syscall.SIGKILL)
		c.stopFollow()
	})
	<-c.done
	<-c.followDone
}

// Stop ends the controller: SIGTERM (it releases what it holds), SIGKILL after
// 10 s; then it stops following the records. It returns once the process has
// been reaped; calling it again waits for the first call's work.
func (c *Controller) Stop() {
	c.stopOnce.Do(func() {
		close(c.stopping)
		child.Terminate(c.Pid(), c.done, 10*time.Second)
		c.stopFollow()
	})
	<-c.done
	<-c.followDone
}
