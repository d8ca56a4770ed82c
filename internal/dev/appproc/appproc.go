// Package appproc runs one pod's application as a process of its own: the
// cmd/hapod-demo binary, which links pkg/role, so that the tour and the
// bench can kill an app with SIGKILL as a crash would, and read the role
// changes it applied (internal/dev/rolerecord) from a pipe rather than from
// its log.
package appproc

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"sync/atomic"
	"syscall"
	"time"

	"k8s.io/apimachinery/pkg/types"

	"github.com/hapod/hapod/internal/dev/child"
	"github.com/hapod/hapod/internal/dev/rolerecord"
)

// Options say how to run one app.
type Options struct {
	// Bin is the hapod-demo binary.
	Bin string
	// Pod and UID are the pod's: the app refuses role messages for others.
	Pod string
	UID types.UID
	// RoleAddr and HTTPAddr are where it listens (UDP role messages, HTTP).
	RoleAddr, HTTPAddr netip.AddrPort
	// InitDelay is hapod-demo's -init-delay.
	InitDelay time.Duration
	// Args are more hapod-demo flags, after the ones Start sets.
	Args []string
	// LogPath receives its stdout and stderr.
	LogPath string
	// OnRole is called, from one goroutine, with every role change the app
	// reports, in order.
	OnRole func(rolerecord.Change)
	// OnBadRecord is called with a record that did not decode (optional).
	OnBadRecord func(error)
	// OnExit is called with the Proc once the process has exited, before
	// Done closes (optional).
	OnExit func(*Proc)
}

// Proc is a running app.
type Proc struct {
	o    Options
	cmd  *exec.Cmd
	done chan struct{} // closed once it exited, was reaped and its records read
	err  error         // cmd.Wait's, set before done closes
	// stopping is set before the process is signalled, so that its exit
	// is known to be expected.
	stopping atomic.Bool
	// killed is when Kill's SIGKILL had been sent (a time.Time).
	killed atomic.Value
}

// recordsFD is the descriptor on which the app writes its role records: the
// write end of a pipe (cmd.ExtraFiles[0] is descriptor 3).
const recordsFD = "/dev/fd/3"

// Start starts the app. It dies with the caller (internal/dev/child).
func Start(o Options) (*Proc, error) {
	logFile, err := os.Create(o.LogPath)
	if err != nil {
		return nil, err
	}
	defer func() { _ = logFile.Close() }() // the child has its own descriptor
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(o.Bin,
		"-http-addr", o.HTTPAddr.String(),
		"-role-addr", o.RoleAddr.String(),
		"-pod-name", o.Pod, "-pod-uid", string(o.UID),
		"-init-delay", o.InitDelay.String(),
		"-role-records", recordsFD)
	cmd.Args = append(cmd.Args, o.Args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.ExtraFiles = []*os.File{pw}
	err = child.Start(cmd)
	_ = pw.Close() // the child has its own copy
	if err != nil {
		_ = pr.Close()
		return nil, fmt.Errorf("start %s: %w", o.Bin, err)
	}
	p := &Proc{o: o, cmd: cmd, done: make(chan struct{})}
	read := make(chan struct{})
	go func() {
		defer close(read)
		p.readRoles(pr)
	}()
	go func() {
		p.err = cmd.Wait()
		<-read // the pipe's last records are in before done
		if o.OnExit != nil {
			o.OnExit(p)
		}
		close(p.done)
	}()
	return p, nil
}

// readRoles hands over the records the app writes on its pipe, until it
// exits.
func (p *Proc) readRoles(r io.ReadCloser) {
	defer func() { _ = r.Close() }()
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		c, err := rolerecord.Decode(sc.Bytes())
		if err != nil {
			if p.o.OnBadRecord != nil {
				p.o.OnBadRecord(fmt.Errorf("pod %s: %w", p.o.Pod, err))
			}
			continue
		}
		if p.o.OnRole != nil {
			p.o.OnRole(c)
		}
	}
}

// Pod is the pod's name.
func (p *Proc) Pod() string { return p.o.Pod }

// Done is closed once the process has exited and been reaped.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Err is the process's exit error, once Done is closed.
func (p *Proc) Err() error { return p.err }

// Expected reports whether the process was told to go (Kill, Stop): an exit
// otherwise is the app's own failure.
func (p *Proc) Expected() bool { return p.stopping.Load() }

// LogPath is where its output goes.
func (p *Proc) LogPath() string { return p.o.LogPath }

// Kill kills the process at once, as a crash or the OOM killer would, and
// returns when it has been reaped; at is the moment just before the signal.
func (p *Proc) Kill() (at time.Time, err error) {
	p.stopping.Store(true)
	at = time.Now()
	if err := syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return at, fmt.Errorf("kill the process of %s: %w", p.o.Pod, err)
	}
	p.killed.Store(time.Now())
	t := time.NewTimer(10 * time.Second)
	defer t.Stop()
	select {
	case <-p.done:
		return at, nil
	case <-t.C:
		return at, fmt.Errorf("the process of %s was not reaped 10s after SIGKILL", p.o.Pod)
	}
}

// KilledAt is when Kill's SIGKILL had been sent, zero if it was not: the
// app acts no more from then on, though reaping it (and reading its last
// records) can take a few hundred milliseconds on a loaded machine.
func (p *Proc) KilledAt() time.Time {
	t, _ := p.killed.Load().(time.Time)
	return t
}

// Stop stops the process as a kubelet stops a deleted pod's container:
// SIGTERM, then SIGKILL after grace. It returns once the process is reaped (or 10 s after
// the SIGKILL).
func (p *Proc) Stop(grace time.Duration) {
	if p.stopping.Swap(true) {
		<-p.done
		return
	}
	child.Terminate(p.cmd.Process.Pid, p.done, grace)
}

// Signal sends sig to the process's group: SIGSTOP and SIGCONT freeze and
// resume an app as a stalled node or a long GC pause would.
func (p *Proc) Signal(sig syscall.Signal) error {
	if err := syscall.Kill(-p.cmd.Process.Pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("signal %v to the process of %s: %w", sig, p.o.Pod, err)
	}
	return nil
}
