// Package python_test runs the Python reference listener (hapod_role.py)
// against the protocol's test vectors and against the controller's real
// sender, internal/notify's Notifier. It holds only tests.
package python_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hapod/hapod/internal/dev/bintest"
	"github.com/hapod/hapod/internal/dev/keydir"
	"github.com/hapod/hapod/internal/notify"
	"github.com/hapod/hapod/internal/rolekey"
	"github.com/hapod/hapod/internal/wire"
)

// python3 is the interpreter's path. Python 3 is part of the build
// environment (.ci/run installs it), so a full run without it fails; only
// -short runs skip.
func python3(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("python3")
	if err != nil {
		if testing.Short() {
			t.Skip("python3 not on PATH (-short): the Python listener is not tested")
		}
		t.Fatalf("python3 not on PATH: %v (install python3, or run with -short to skip)", err)
	}
	return p
}

// pyEnv keeps the interpreter from writing __pycache__ into the source tree
// and from buffering what the listener prints.
func pyEnv() []string {
	return append(os.Environ(), "PYTHONDONTWRITEBYTECODE=1", "PYTHONUNBUFFERED=1")
}

// The vectors, run by test_vectors.py: the same cases pkg/role's
// TestVectors runs against the Go listener.
func TestPythonVectors(t *testing.T) {
	py := python3(t)
	cmd := exec.CommandContext(t.Context(), py, "-m", "unittest", "-v", "test_vectors")
	cmd.Env = pyEnv()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("python3 -m unittest test_vectors: %v\n%s", err, out)
	}
	t.Logf("%s", out)
}

const (
	group = "shop/db"
	pod   = "db-0"
	uid   = "0b7c3f6e-5d2a-4c1e-9f3b-2a6d8e1c4b70"
	// wait bounds every wait for the Python process: generous, because a
	// loaded machine may be slow; nothing is asserted about how long
	// anything takes.
	wait = time.Minute
)

// event is one line the listener prints.
type event struct {
	Event  string `json:"event"`
	Addr   string `json:"addr"`
	Role   string `json:"role"`
	Epoch  uint64 `json:"epoch"`
	Group  string `json:"group"`
	Fenced bool   `json:"fenced"`
}

func (e event) String() string {
	return fmt.Sprintf("%s %s epoch %d group %s fenced %v", e.Event, e.Role, e.Epoch, e.Group, e.Fenced)
}

// pyListener is hapod_role.py run as a program: its role changes, one per
// line, arrive on events in the order it printed them.
type pyListener struct {
	addr   netip.AddrPort
	events chan event
	stderr *bintest.Buffer
	cmd    *exec.Cmd
}

func startListener(t *testing.T, keyDir string) *pyListener {
	t.Helper()
	py := python3(t)
	// Port 0: the listener binds a free port and prints it, so no other
	// process can take the port between choosing and binding it.
	cmd := exec.Command(py, "hapod_role.py", "--addr", "127.0.0.1:0",
		"--pod-uid", uid, "--pod-name", pod, "--group", group, "--key-dir", keyDir)
	cmd.Env = pyEnv()
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	l := &pyListener{events: make(chan event, 64), stderr: &bintest.Buffer{}, cmd: cmd}
	cmd.Stderr = l.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	read := make(chan struct{})
	go func() {
		defer close(read)
		defer close(l.events)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			var e event
			if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
				e = event{Event: "unparsable: " + sc.Text()}
			}
			l.events <- e
		}
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-read // stdout is at EOF: the reader is done with the pipe
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("listener's stderr:\n%s", l.stderr)
		}
	})
	e := l.next(t)
	if e.Event != "listening" {
		t.Fatalf("first line %v, want the listening address", e)
	}
	if l.addr, err = netip.ParseAddrPort(e.Addr); err != nil {
		t.Fatal(err)
	}
	return l
}

// next is the next line the listener printed.
func (l *pyListener) next(t *testing.T) event {
	t.Helper()
	select {
	case e, ok := <-l.events:
		if !ok {
			t.Fatalf("the listener exited; stderr:\n%s", l.stderr)
		}
		return e
	case <-time.After(wait):
		t.Fatalf("no line from the listener within %v; stderr:\n%s", wait, l.stderr)
	}
	panic("unreachable")
}

// expect reads the next change and checks it. The listener handles one
// datagram at a time and prints a datagram's changes before it reads the
// next, so a change caused by a datagram refused earlier would come first
// here: expecting the change of a later message also proves the refused
// ones changed nothing.
func (l *pyListener) expect(t *testing.T, role string, epoch uint64, fenced bool) {
	t.Helper()
	want := event{Event: "change", Role: role, Epoch: epoch, Group: group, Fenced: fenced}
	if e := l.next(t); e != want {
		t.Fatalf("listener printed %v, want %v", e, want)
	}
}

// The Python listener under the controller's real sender, authenticated:
// a grant, a renewal, a demotion, stale epochs, forged datagrams, a lapse.
func TestPythonListener(t *testing.T) {
	python3(t)
	master := make([]byte, 32)
	_, _ = rand.Read(master)
	ctlDir, podDir := t.TempDir(), t.TempDir()
	// The controller mounts the master key; the pod only its group's
	// subkey, in a directory laid out as the kubelet mounts a Secret.
	if err := keydir.Write(ctlDir, map[string][]byte{"k1": master}, ""); err != nil {
		t.Fatal(err)
	}
	if err := keydir.Write(podDir, map[string][]byte{"k1": rolekey.GroupKey(master, group)}, ""); err != nil {
		t.Fatal(err)
	}
	keys, err := rolekey.Open(ctlDir, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	// A Send's deadline only ends a wait that failed: generous, for a
	// loaded machine.
	n, err := notify.New(notify.Config{ListenAddr: "127.0.0.1:0", Keys: keys, Deadline: wait})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Close() })
	renewals := make(chan notify.Ack, 16)
	n.SetAckHandler(func(a notify.Ack) notify.AckVerdict {
		select {
		case renewals <- a:
		default:
		}
		return notify.AckExpected
	})

	l := startListener(t, podDir)
	target := func(r string, epoch uint64, ttl time.Duration) notify.Target {
		return notify.Target{Addr: l.addr, Group: group, Pod: pod, UID: uid, Role: r, Epoch: epoch, TTL: ttl}
	}
	send := func(tg notify.Target) notify.Result {
		t.Helper()
		ctx, cancel := context.WithTimeout(t.Context(), wait)
		defer cancel()
		return n.Send(ctx, tg)
	}
	mustAck := func(tg notify.Target) notify.Result {
		t.Helper()
		res := send(tg)
		if !res.Acked || res.Status != wire.StatusOK || res.Err != nil {
			t.Fatalf("%s at %d: %+v", tg.Role, tg.Epoch, res)
		}
		return res
	}
	mustRefuse := func(tg notify.Target, status string) {
		t.Helper()
		if res := send(tg); res.Acked || res.Status != status || res.Err != nil {
			t.Fatalf("%s at %d: %+v, want refused %s", tg.Role, tg.Epoch, res, status)
		}
	}
	// A TTL far longer than the test, so that no lapse interleaves with
	// what is checked, however slow the machine.
	const long = time.Hour

	// A grant (two round trips: retry, then the echo), acked ok and
	// enforced by the listener.
	res := mustAck(target(wire.RoleActive, 1, long))
	if !res.Lease || res.Nonce == 0 {
		t.Fatalf("grant %+v: the ack should carry a nonce and say the listener enforces the lease", res)
	}
	l.expect(t, wire.RoleActive, 1, false)

	// A renewal echoing the grant's nonce: acked ok from the pod's
	// address, nothing printed (a renewal is not a change).
	seq, err := n.Renew(target(wire.RoleActive, 1, long), res.Nonce)
	if err != nil {
		t.Fatal(err)
	}
	for renewed := false; !renewed; {
		select {
		case a := <-renewals:
			if a.Seq != seq {
				continue // a late ack of one of the grant's resends
			}
			if a.Status != wire.StatusOK || a.Epoch != 1 || a.Nonce == 0 || !a.Lease || !notify.SameAddr(a.From, l.addr) {
				t.Fatalf("renewal ack %+v", a)
			}
			renewed = true
		case <-time.After(wait):
			t.Fatalf("no renewal ack within %v; stderr:\n%s", wait, l.stderr)
		}
	}

	// Demoted at a new epoch; its resend a duplicate, acked ok.
	mustAck(target(wire.RoleStandby, 2, 0))
	l.expect(t, wire.RoleStandby, 2, false)
	mustAck(target(wire.RoleStandby, 2, 0))

	// Stale epochs, and active over standby at the held epoch: refused.
	mustRefuse(target(wire.RoleActive, 1, long), wire.StatusStale)
	mustRefuse(target(wire.RoleStandby, 1, 0), wire.StatusStale)
	mustRefuse(target(wire.RoleActive, 2, long), wire.StatusStale)

	// Forged datagrams: dropped without a reply, changing nothing.
	forger, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = forger.Close() }()
	var fctr uint64
	var fboot uint64 = 0x5eed_0000_0000_0001
	datagram := func(r string, epoch uint64, key []byte) []byte {
		t.Helper()
		fctr++
		m := wire.Message{Type: wire.TypeRole, Group: group, Pod: pod, UID: uid, Role: r, Epoch: epoch, Seq: 1000 + fctr,
			Kid: "k1", Boot: fboot, Ctr: fctr, TS: wire.StampMillis(time.Now())}
		b, err := wire.Encode(m)
		if err != nil {
			t.Fatal(err)
		}
		if key == nil {
			return b // unsigned
		}
		d, err := wire.Seal(b, key)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	bogus := bytes.Repeat([]byte{0x90}, 32)
	valid := datagram(wire.RoleStandby, 9, rolekey.GroupKey(master, group))
	for _, d := range [][]byte{
		datagram(wire.RoleStandby, 9, bogus),                              // a MAC under a key the pod does not have
		datagram(wire.RoleStandby, 9, master),                             // the master key, not the group's subkey
		datagram(wire.RoleStandby, 9, rolekey.GroupKey(master, "x/y")),    // another group's subkey
		datagram(wire.RoleStandby, 9, nil),                                // unsigned
		bytes.Replace(valid, []byte(`"epoch":9`), []byte(`"epoch":8`), 1), // altered after signing
	} {
		if _, err := forger.WriteToUDPAddrPort(d, l.addr); err != nil {
			t.Fatal(err)
		}
	}
	// A probe from the same socket, validly signed (the test holds the
	// group's subkey): standby at the held epoch 2, a duplicate acked ok.
	// The listener answers one datagram at a time, in order, so the
	// first reply on this socket must be the probe's: the forged ones got
	// none.
	probe := datagram(wire.RoleStandby, 2, rolekey.GroupKey(master, group))
	if _, err := forger.WriteToUDPAddrPort(probe, l.addr); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, wire.MaxSize+1)
	_ = forger.SetReadDeadline(time.Now().Add(wait))
	k, from, err := forger.ReadFromUDPAddrPort(buf)
	if err != nil {
		t.Fatalf("no reply to the probe: %v; stderr:\n%s", err, l.stderr)
	}
	body, sum := wire.Open(buf[:k])
	a, err := wire.Decode(body)
	if err != nil || sum == nil || !wire.Verify(rolekey.GroupKey(master, group), body, sum) {
		t.Fatalf("reply %q: %v (signed %v)", buf[:k], err, sum != nil)
	}
	if a.Type != wire.TypeAck || a.Seq != 1000+fctr || a.Status != wire.StatusOK || a.Epoch != 2 || !notify.SameAddr(from, l.addr) {
		t.Fatalf("first reply %q, want the probe's ok ack (seq %d) from %v", body, 1000+fctr, l.addr)
	}
	// Had a forged standby at 9 been applied, the controller's active at
	// 3 would be stale now.
	mustAck(target(wire.RoleActive, 3, long))
	l.expect(t, wire.RoleActive, 3, false)

	// A lease that is not renewed lapses: the listener fences itself
	// (standby, fenced, at the same epoch). Only the order of what it
	// prints is checked, never how long it took.
	mustAck(target(wire.RoleActive, 4, 500*time.Millisecond))
	l.expect(t, wire.RoleActive, 4, false)
	l.expect(t, wire.RoleStandby, 4, true)
	// Told standby at that epoch: Fenced clears.
	mustAck(target(wire.RoleStandby, 4, 0))
	l.expect(t, wire.RoleStandby, 4, false)

	// SIGTERM while active releases the lease, as pkg/role's Close does:
	// the app is told standby (not fenced) and the controller gets an
	// unsolicited signed standby ack, seq 0, from the pod's address.
	mustAck(target(wire.RoleActive, 5, long))
	l.expect(t, wire.RoleActive, 5, false)
	if err := l.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	l.expect(t, wire.RoleStandby, 5, false)
	for deadline := time.After(wait); ; {
		select {
		case a := <-renewals:
			if a.Seq != 0 {
				continue // a renewal's ack from before
			}
			if a.Role != wire.RoleStandby || a.Epoch != 5 || a.Status != wire.StatusOK || !notify.SameAddr(a.From, l.addr) {
				t.Fatalf("release %+v, want standby at 5 from %v", a, l.addr)
			}
		case <-deadline:
			t.Fatalf("no release reached the sender; stderr:\n%s", l.stderr)
		}
		break
	}

	if s := l.stderr.String(); strings.TrimSpace(s) != "" {
		t.Fatalf("the listener wrote to stderr:\n%s", s)
	}
}
