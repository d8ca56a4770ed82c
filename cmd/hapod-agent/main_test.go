package main

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hapod/hapod/internal/dev/bintest"
)

// envBeMain makes the test binary run main instead of the tests, so that the
// tests can check what the real process prints and exits with.
const envBeMain = "HAPOD_AGENT_TEST_BE_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(envBeMain) == "1" {
		main()
	}
	os.Exit(m.Run())
}

func command(args ...string) *exec.Cmd {
	c := exec.Command(os.Args[0], args...)
	c.Env = append(os.Environ(), envBeMain+"=1")
	return c
}

func exitStatus(t *testing.T, err error) int {
	t.Helper()
	var ee *exec.ExitError
	if err == nil {
		return 0
	}
	if !errors.As(err, &ee) {
		t.Fatal(err)
	}
	return ee.ExitCode()
}

func TestBadFlagExits2WithOneLine(t *testing.T) {
	for _, args := range [][]string{{"-bogus"}, {"-role-addr", "x", "-http-addr", "y"}, {"-on-change-timeout", "-1s"}} {
		var stderr bytes.Buffer
		c := command(args...)
		c.Stderr = &stderr
		if code := exitStatus(t, c.Run()); code != 2 {
			t.Errorf("%v: exit %d, want 2", args, code)
		}
		if s := stderr.String(); strings.Count(s, "\n") != 1 || !strings.HasPrefix(s, "hapod-agent: ") {
			t.Errorf("%v: stderr %q, want one line", args, s)
		}
	}
}

func TestHelpExits0(t *testing.T) {
	out, err := command("-h").Output()
	if code := exitStatus(t, err); code != 0 || !strings.Contains(string(out), "Usage: hapod-agent") {
		t.Fatalf("exit %d, stdout %q", code, out)
	}
}

// SIGTERM: the role file says standby before the process exits 0.
func TestSIGTERMWritesStandby(t *testing.T) {
	file := filepath.Join(t.TempDir(), "role")
	var stderr bintest.Buffer
	c := command("-role-addr", "127.0.0.1:0", "-http-addr", "127.0.0.1:0", "-role-file", file)
	c.Stderr = &stderr
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); !strings.Contains(stderr.String(), "Serving"); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			_ = c.Process.Kill()
			t.Fatalf("agent did not start: %s", stderr.String())
		}
	}
	if b, _ := os.ReadFile(file); !strings.HasPrefix(string(b), "role=unknown\n") {
		t.Fatalf("role file at start %q", b)
	}
	if err := c.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := exitStatus(t, c.Wait()); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	b, _ := os.ReadFile(file)
	if !strings.HasPrefix(string(b), "role=standby\n") || !strings.HasSuffix(string(b), "fenced=false\n") {
		t.Fatalf("role file after SIGTERM %q", b)
	}
}
