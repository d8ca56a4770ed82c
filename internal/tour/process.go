package tour

import (
	"bytes"
	"os"
	"os/exec"
	"runtime"
	"sync"
	"syscall"
	"time"
)

// spawn starts cmd in its own process group, to be killed when the tour dies
// (Pdeathsig), from a goroutine locked to an OS thread that never exits: Pdeathsig
// fires when the thread that forked the child exits, not the process.
func spawn(cmd *exec.Cmd) error {
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

// terminate sends SIGTERM to the process group of a process started by spawn, and
// SIGKILL if done is not closed within grace. It reports whether SIGKILL was needed.
func terminate(pid int, done <-chan struct{}, grace time.Duration) bool {
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

// tail returns the last n lines of a file, for error messages.
func tail(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	lines := bytes.Split(bytes.TrimRight(data, "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return "    " + string(bytes.Join(lines, []byte("\n    ")))
}
