package localcluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hapod/hapod/internal/dev/child"
	"github.com/hapod/hapod/internal/dev/poll"
)

// process is one component the cluster started.
type process struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{} // closed once the process has exited and been reaped
	waitErr error         // valid after done is closed
	// expectExit is set before a test stops the process on purpose (a real
	// node lost, an API server restarted): its exit then does not fail the
	// cluster.
	expectExit atomic.Bool
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// exitError describes an unexpected exit with the tail of the component's log.
func (p *process) exitError() error {
	return fmt.Errorf("%s exited (%w); tail of %s:\n%s", p.name, p.waitErr, p.logPath, child.Tail(p.logPath, 25))
}

// stop sends SIGTERM to the process group, then SIGKILL if it has not exited within
// grace (child.Terminate). It reports whether SIGKILL was needed.
func (p *process) stop(grace time.Duration) (killed bool, err error) {
	if p.exited() {
		return false, nil
	}
	killed = child.Terminate(p.cmd.Process.Pid, p.done, grace)
	if !p.exited() {
		return killed, fmt.Errorf("%s (pid %d) has not exited 10s after SIGKILL", p.name, p.cmd.Process.Pid)
	}
	return killed, nil
}

// State is the content of the state file in a run directory: enough for another
// process to find and stop the cluster.
type State struct {
	// OwnerPID is the process that started the cluster, OwnerStartTime its start time
	// (field 22 of /proc/<pid>/stat) to tell it from a later process with the same pid.
	OwnerPID       int    `json:"ownerPID"`
	OwnerStartTime uint64 `json:"ownerStartTime"`
	Kubeconfig     string `json:"kubeconfig"`
	// Processes in start order.
	Processes []StateProcess `json:"processes"`
}

// StateProcess is one started component.
type StateProcess struct {
	Name string `json:"name"`
	PID  int    `json:"pid"`
	Exe  string `json:"exe"` // absolute path of the binary, checked against /proc/<pid>/exe
}

const stateFile = "state.json"

func writeState(runDir string, s *State) error {
	data, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(runDir, stateFile+".tmp")
	if err := os.WriteFile(tmp, append(data, '\n'), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(runDir, stateFile))
}

// ReadState reads the state file of a run directory.
func ReadState(runDir string) (*State, error) {
	data, err := os.ReadFile(filepath.Join(runDir, stateFile))
	if err != nil {
		return nil, err
	}
	var s State
	if err := json.Unmarshal(data, &s); err != nil {
		return nil, fmt.Errorf("state file of %s: %w", runDir, err)
	}
	return &s, nil
}

// StopRunDir stops a cluster from its run directory's state file, as another process
// (hapod-cluster down) does: each recorded process that still runs its recorded binary
// gets SIGTERM, then SIGKILL after grace, in reverse start order; then the run directory
// is removed. It is safe to call for a cluster that is already gone.
func StopRunDir(runDir string, grace time.Duration) error {
	s, err := ReadState(runDir)
	if errors.Is(err, os.ErrNotExist) {
		return os.RemoveAll(runDir)
	}
	if err != nil {
		return err
	}
	var errs []error
	for i := len(s.Processes) - 1; i >= 0; i-- {
		if err := stopPID(s.Processes[i], grace); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	return os.RemoveAll(runDir)
}

func stopPID(p StateProcess, grace time.Duration) error {
	if !runs(p.PID, p.Exe) {
		return nil
	}
	_ = syscall.Kill(p.PID, syscall.SIGTERM)
	if waitGone(p, grace) {
		return nil
	}
	_ = syscall.Kill(p.PID, syscall.SIGKILL)
	if waitGone(p, 10*time.Second) {
		return nil
	}
	return fmt.Errorf("%s (pid %d) still runs after SIGKILL", p.Name, p.PID)
}

// waitGone waits up to d for the process to end. Stopping must finish also when the
// caller's context is done (an interrupted tour still stops its cluster), so it has
// none of its own.
func waitGone(p StateProcess, d time.Duration) bool {
	return poll.Until(context.Background(), d, func() (bool, error) { return !runs(p.PID, p.Exe), nil }) == nil
}

// runs reports whether pid is a live process executing exe. A zombie has no exe link,
// so it does not count; a reused pid runs another binary, so it does not either.
func runs(pid int, exe string) bool {
	got, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/exe")
	if err != nil {
		return false
	}
	return got == exe || got == exe+" (deleted)"
}

// ownerAlive reports whether the process that wrote s still runs.
func ownerAlive(s *State) bool { return child.Alive(s.OwnerPID, s.OwnerStartTime) }

// removeStaleRunDirs stops and removes run directories under root whose owner process
// has died (a test binary that crashed or was killed). Pdeathsig has already killed
// their components; this removes what is left, checking pids first all the same.
func removeStaleRunDirs(root string, grace time.Duration) {
	entries, err := os.ReadDir(root)
	if err != nil {
		return
	}
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		dir := filepath.Join(root, e.Name())
		s, err := ReadState(dir)
		if err != nil {
			// No state yet: a cluster being set up right now, or one that died before
			// writing it. Only the latter is old.
			if info, ierr := e.Info(); ierr == nil && time.Since(info.ModTime()) > 10*time.Minute {
				_ = os.RemoveAll(dir)
			}
			continue
		}
		if !ownerAlive(s) {
			_ = StopRunDir(dir, grace)
		}
	}
}
