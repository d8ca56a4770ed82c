package child

import (
	"os/exec"
	"runtime"
	"sync"
	"syscall"
	"time"
)

// Start starts cmd in its own process group (so signals reach it and
// anything it starts, and a terminal's Ctrl-C does not) with Pdeathsig, so
// it is killed when its parent dies. Pdeathsig fires when the thread that
// forked the child exits, not the process; Start therefore forks from one
// goroutine locked to an OS thread that never exits.
func Start(cmd *exec.Cmd) error {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	spawnerOnce.Do(func() {
		spawnReqs = make(chan spawnReq)
		go func() {
			runtime.LockOSThread() // never unlocked: this goroutine lives as long as the process
			for r := range spawnReqs {
				r.result <- r.cmd.Start()
			}
		}()
	})
	r := spawnReq{cmd: cmd, result: make(chan error, 1)}
	spawnReqs <- r
	return <-r.result
}

type spawnReq struct {
	cmd    *exec.Cmd
	result chan error
}

var (
	spawnerOnce sync.Once
	spawnReqs   chan spawnReq
)

// Terminate sends SIGTERM to the process group of a process started by
// Start, and SIGKILL if done is not closed within grace. It reports whether
// SIGKILL was needed.
func Terminate(pid int, done <-chan struct{}, grace time.Duration) bool {
	_ = syscall.Kill(-pid, syscall.SIGTERM)
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-done:
		return false
	case <-t.C:
	}
	_ = syscall.Kill(-pid, syscall.SIGKILL)
	t2 := time.NewTimer(10 * time.Second)
	defer t2.Stop()
	select {
	case <-done:
	case <-t2.C:
	}
	return true
}

// Exited reports whether pid has exited: there is no such process, or it is
// a zombie waiting for its parent to reap it (signals do nothing to it).
func Exited(pid int) bool {
	state, _, err := procStat(pid)
	return err != nil || state == "Z" || state == "X"
}
