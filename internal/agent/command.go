package agent

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// runner runs the on-change command, one run at a time: a change that
// arrives during a run replaces any change still waiting, so the command
// runs once more, with the latest state, after the current run (as
// keepalived's notify and Patroni's on_role_change do). Intermediate states
// are skipped, never reordered.
type runner struct {
	argv    []string
	timeout time.Duration
	out     io.Writer
	log     *slog.Logger
	m       *metrics

	mu      sync.Mutex
	pending *view
	wake    chan struct{} // buffer 1: a pending view may exist
	done    chan struct{} // closed when the loop has exited
	// started, if set, is called as a run starts (the benchmark's probe).
	started func(view)
}

func newRunner(cmd string, timeout time.Duration, out io.Writer, log *slog.Logger, m *metrics) *runner {
	return &runner{
		// Split at spaces and exec'd without a shell: no quoting rules to
		// get wrong, and the state reaches the command only through its
		// environment, never through a command line a shell would parse.
		argv: strings.Fields(cmd), timeout: timeout, out: out, log: log, m: m,
		wake: make(chan struct{}, 1), done: make(chan struct{}),
	}
}

// submit hands the runner a new state without waiting.
func (r *runner) submit(v view) {
	r.mu.Lock()
	r.pending = &v
	r.mu.Unlock()
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// loop runs until stop is closed and nothing is pending.
func (r *runner) loop(stop <-chan struct{}) {
	defer close(r.done)
	for {
		select {
		case <-r.wake:
		case <-stop:
			// Run what is still pending (the final standby) before exiting.
			select {
			case <-r.wake:
			default:
				return
			}
		}
		r.mu.Lock()
		v := r.pending
		r.pending = nil
		r.mu.Unlock()
		if v != nil {
			r.run(*v)
		}
	}
}

func (r *runner) run(v view) {
	ctx, cancel := context.WithTimeout(context.Background(), r.timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, r.argv[0], r.argv[1:]...)
	cmd.Env = append(os.Environ(), v.env()...)
	cmd.Stdout, cmd.Stderr = r.out, r.out
	// Its own process group, so a timeout kills whatever the command started
	// too, not only the command.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	// A grandchild that kept the output pipe open must not hold the runner.
	cmd.WaitDelay = time.Second
	start := time.Now()
	err := cmd.Start()
	if err == nil {
		if r.started != nil {
			r.started(v)
		}
		err = cmd.Wait()
	}
	took := time.Since(start)
	r.m.runSeconds.Observe(took.Seconds())
	switch {
	case ctx.Err() != nil:
		r.m.runs.WithLabelValues("timeout").Inc()
		r.log.Warn("On-change command timed out", "role", v.Role, "epoch", v.Epoch, "timeout", r.timeout.String(), "cmd", r.argv[0])
	case err != nil:
		r.m.runs.WithLabelValues("error").Inc()
		var ee *exec.ExitError
		code := -1
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		}
		r.log.Warn("On-change command failed", "role", v.Role, "epoch", v.Epoch, "exit", code, "err", err, "cmd", r.argv[0])
	default:
		r.m.runs.WithLabelValues("ok").Inc()
		r.log.Info("On-change command done", "role", v.Role, "epoch", v.Epoch, "took", took.String())
	}
}
