package main

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/hapod/hapod/internal/dev/clustertest"
)

// envBeMain makes the test binary run main instead of the tests, so that the
// tests can check what the real process prints and exits with.
const envBeMain = "KUBECTL_HAPOD_TEST_BE_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(envBeMain) == "1" {
		main()
		os.Exit(0)
	}
	clustertest.Main(m)
}

func command(args ...string) *exec.Cmd {
	c := exec.Command(os.Args[0], args...)
	// No kubeconfig of the machine's: the errors below must not depend on it.
	c.Env = append(os.Environ(), envBeMain+"=1", "KUBECONFIG=/nonexistent/kubeconfig")
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

// TestErrorExits1WithOneLine: a wrong invocation or an unreachable cluster
// is one line on stderr, "error: ...", exit 1, and nothing on stdout.
func TestErrorExits1WithOneLine(t *testing.T) {
	for _, args := range [][]string{
		{"pause"},             // no GROUP
		{"bogus"},             // no such command
		{"status", "--bogus"}, // no such flag
		{"status", "--kubeconfig", "/nonexistent/kubeconfig"}, // no cluster
		{"switchover", "web", "--timeout", "0s"},
	} {
		var stdout, stderr bytes.Buffer
		c := command(args...)
		c.Stdout, c.Stderr = &stdout, &stderr
		if code := exitStatus(t, c.Run()); code != 1 {
			t.Errorf("%v: exit %d, want 1", args, code)
		}
		if s := stderr.String(); strings.Count(s, "\n") != 1 || !strings.HasPrefix(s, "error: ") {
			t.Errorf("%v: stderr %q, want one line", args, s)
		}
		if stdout.Len() != 0 {
			t.Errorf("%v: stdout %q", args, stdout.String())
		}
	}
}

func TestHelpExits0(t *testing.T) {
	out, err := command("--help").Output()
	if code := exitStatus(t, err); code != 0 || !strings.Contains(string(out), "kubectl hapod [command]") {
		t.Fatalf("exit %d, stdout %q", code, out)
	}
	for _, sub := range []string{"status", "switchover", "pause", "resume", "history"} {
		if !strings.Contains(string(out), "\n  "+sub+" ") {
			t.Errorf("--help does not list %s", sub)
		}
	}
}

// TestAgainstCluster runs the binary as kubectl runs a plugin, a process
// with --kubeconfig and -n, against a real API server: what it prints and
// exits with, on success and on a missing group. internal/hapodctl tests
// the commands themselves.
func TestAgainstCluster(t *testing.T) {
	clustertest.InstallCRD(t)
	ns := clustertest.Namespace(t)
	flags := []string{"--kubeconfig", clustertest.Kubeconfig(t), "-n", ns}

	var stdout, stderr bytes.Buffer
	c := command(append([]string{"status"}, flags...)...)
	c.Stdout, c.Stderr = &stdout, &stderr
	if code := exitStatus(t, c.Run()); code != 0 || stdout.Len() != 0 || stderr.String() != "No HAGroups found in namespace "+ns+".\n" {
		t.Errorf("status of an empty namespace: exit %d, stdout %q, stderr %q", code, stdout.String(), stderr.String())
	}

	stdout.Reset()
	stderr.Reset()
	c = command(append([]string{"switchover", "web"}, flags...)...)
	c.Stdout, c.Stderr = &stdout, &stderr
	want := "error: hagroup \"web\" not found in namespace \"" + ns + "\"\n"
	if code := exitStatus(t, c.Run()); code != 1 || stdout.Len() != 0 || stderr.String() != want {
		t.Errorf("switchover of a missing group: exit %d, stdout %q, stderr %q, want %q", code, stdout.String(), stderr.String(), want)
	}
}
