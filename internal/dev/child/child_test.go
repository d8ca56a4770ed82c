package child

import (
	"bufio"
	"os/exec"
	"testing"
	"time"
)

// A child that ignores SIGTERM is killed after the grace period.
func TestTerminate(t *testing.T) {
	tests := []struct {
		name     string
		script   string
		wantKill bool
	}{
		{"exits on SIGTERM", "echo ready; sleep 30 & wait", false},
		{"ignores SIGTERM", "trap '' TERM; echo ready; while :; do sleep 0.05; done", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command("sh", "-c", tc.script)
			out, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := Start(cmd); err != nil {
				t.Fatal(err)
			}
			// The signal must not arrive before the shell set its trap.
			if line, err := bufio.NewReader(out).ReadString('\n'); err != nil || line != "ready\n" {
				t.Fatalf("child said %q, %v", line, err)
			}
			done := make(chan struct{})
			go func() { _ = cmd.Wait(); close(done) }()
			if got := Terminate(cmd.Process.Pid, done, 300*time.Millisecond); got != tc.wantKill {
				t.Errorf("Terminate needed SIGKILL = %v, want %v", got, tc.wantKill)
			}
			select {
			case <-done:
			default:
				t.Error("child still running after Terminate")
			}
		})
	}
}
