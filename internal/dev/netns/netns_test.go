package netns

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/hapod/hapod/internal/dev/child"
)

// Run gives the command a namespace with only lo, passes its exit status
// through, and afterwards leaves nothing: not the namespace, not its state
// directory, not a process the command left running in it.
func TestRunCleansUp(t *testing.T) {
	if testing.Short() {
		t.Skip("creates a network namespace")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	out := filepath.Join(t.TempDir(), "out")
	script := `set -e
echo "$` + EnvName + `" > ` + out + `
ip -o link show | wc -l >> ` + out + `
ip link add hptest0 type bridge
ip addr add 10.250.0.9/32 dev hptest0
mkdir -p /tmp/$` + EnvName + `/x && echo > /tmp/$` + EnvName + `/x/f
sleep 300 &
echo $! >> ` + out + `
exit 3`
	code, err := Run([]string{"sh", "-c", script})
	if err != nil {
		t.Fatal(err)
	}
	if code != 3 {
		t.Fatalf("exit code %d, want the command's 3", code)
	}
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(data))
	if len(f) != 3 {
		t.Fatalf("the command wrote %q, want name, link count, pid", data)
	}
	name, links, pid := f[0], f[1], f[2]
	if !strings.HasPrefix(name, prefix) {
		t.Fatalf("$%s = %q", EnvName, name)
	}
	if links != "1" {
		t.Errorf("the namespace had %s links at the start, want only lo", links)
	}
	if _, err := os.Stat(filepath.Join(runDir, name)); !os.IsNotExist(err) {
		t.Errorf("namespace %s still exists (%v)", name, err)
	}
	if _, err := os.Stat(StateDir(name)); !os.IsNotExist(err) {
		t.Errorf("state directory %s still exists (%v)", StateDir(name), err)
	}
	p, _ := strconv.Atoi(pid)
	if err := syscall.Kill(p, 0); err == nil && !child.Exited(p) {
		t.Errorf("the command's background process %d outlived the namespace", p)
	}
	// The host's own interfaces never saw the address.
	host, err := exec.Command("ip", "-o", "addr").CombinedOutput()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(host), "10.250.0.9") || strings.Contains(string(host), "hptest0") {
		t.Errorf("the namespace's address or bridge is on the host:\n%s", host)
	}
}

// A process that is not in a namespace Run made is not Inside, whatever its
// environment says.
func TestInsideChecksTheNamespace(t *testing.T) {
	t.Setenv(EnvName, prefix+"000000")
	if name, ok := Inside(); ok {
		t.Fatalf("Inside() = %q, true in the host's namespace", name)
	}
}

func TestCleanupRefusesOtherNames(t *testing.T) {
	for _, name := range []string{"default", "hapod-../x", "hapod-a/b", ""} {
		if err := Cleanup(name); err == nil {
			t.Errorf("Cleanup(%q) = nil, want a refusal", name)
		}
	}
}

func TestUnescapeMount(t *testing.T) {
	for in, want := range map[string]string{`/a\040b`: "/a b", `/plain`: "/plain", `/t\011x`: "/t\tx"} {
		if got := unescapeMount(in); got != want {
			t.Errorf("unescapeMount(%q) = %q, want %q", in, got, want)
		}
	}
}
