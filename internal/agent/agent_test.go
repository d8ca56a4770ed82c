package agent

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hapod/hapod/internal/dev/keydir"
	"github.com/hapod/hapod/internal/notify"
	"github.com/hapod/hapod/internal/rolekey"
	"github.com/hapod/hapod/internal/wire"
)

var master = bytes.Repeat([]byte{7}, 32)

const group = "ns/g"

// syncBuffer is a log sink safe for the agent's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// sender is the real controller-side sender, with the master key whose
// group subkey the agent's key directory holds.
func sender(t testing.TB) *notify.Notifier {
	t.Helper()
	dir := t.TempDir()
	if err := keydir.Write(dir, map[string][]byte{"k1": master}, ""); err != nil {
		t.Fatal(err)
	}
	keys, err := rolekey.Open(dir, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	n, err := notify.New(notify.Config{ListenAddr: "127.0.0.1:0", Registerer: prometheus.NewRegistry(), Keys: keys})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Close() })
	return n
}

// podKeyDir is what the agent's pod mounts: its group's subkey.
func podKeyDir(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	if err := keydir.Write(dir, map[string][]byte{"k1": rolekey.GroupKey(master, group)}, ""); err != nil {
		t.Fatal(err)
	}
	return dir
}

func testOptions(t testing.TB) Options {
	return Options{
		RoleAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0",
		PodName: "p-0", PodUID: "uid-0", RoleGroup: group, RoleKeyDir: podKeyDir(t),
		RoleFile: filepath.Join(t.TempDir(), "role"), OnChangeTimeout: 10 * time.Second,
	}
}

// startAgent runs an agent until the test ends; stop shuts it down earlier.
func startAgent(t testing.TB, o Options) (a *Agent, logs *syncBuffer, stop func() error) {
	t.Helper()
	logs = &syncBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	a, err := New(ctx, o, slog.New(slog.NewTextHandler(logs, nil)), logs)
	if err != nil {
		cancel()
		t.Fatalf("New: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- a.Serve(ctx) }()
	var once sync.Once
	var serveErr error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case serveErr = <-done:
			case <-time.After(30 * time.Second):
				serveErr = fmt.Errorf("agent did not stop")
			}
		})
		return serveErr
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("agent stopped with %v; logs:\n%s", err, logs)
		}
	})
	return a, logs, stop
}

func target(a *Agent, r string, epoch uint64) notify.Target {
	return notify.Target{
		Addr:  netip.MustParseAddrPort(a.RoleAddr()),
		Group: group, Pod: "p-0", UID: "uid-0", Role: r, Epoch: epoch,
	}
}

func send(t testing.TB, n *notify.Notifier, tgt notify.Target) notify.Result {
	t.Helper()
	res := n.Send(context.Background(), tgt)
	if !res.Acked {
		t.Fatalf("send %+v: %+v", tgt, res)
	}
	return res
}

// waitFor polls cond until it holds, failing after a generous deadline.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
	}
}

// readRoleFile parses the role file into its four keys, checking the format.
func readRoleFile(t testing.TB, path string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
	want := []string{"role", "epoch", "changed", "fenced"}
	if len(lines) != len(want) || !strings.HasSuffix(string(b), "\n") {
		t.Fatalf("role file %q: want exactly the lines %v", b, want)
	}
	m := map[string]string{}
	for i, l := range lines {
		k, v, ok := strings.Cut(l, "=")
		if !ok || k != want[i] {
			t.Fatalf("role file line %d %q: want %s=...", i+1, l, want[i])
		}
		m[k] = v
	}
	if _, err := time.Parse(time.RFC3339Nano, m["changed"]); err != nil || !strings.HasSuffix(m["changed"], "Z") {
		t.Fatalf("changed=%q: want RFC3339Nano UTC (%v)", m["changed"], err)
	}
	return m
}

func waitFile(t testing.TB, path, role, epoch, fenced string) map[string]string {
	t.Helper()
	var m map[string]string
	waitFor(t, fmt.Sprintf("role file says %s epoch %s fenced %s", role, epoch, fenced), func() bool {
		m = readRoleFile(t, path)
		return m["role"] == role && m["epoch"] == epoch && m["fenced"] == fenced
	})
	return m
}

func TestRoleFileFollowsTheController(t *testing.T) {
	o := testOptions(t)
	a, _, stop := startAgent(t, o)
	// Written before the listener is bound: the agent is up, role unknown.
	if m := readRoleFile(t, o.RoleFile); m["role"] != "unknown" || m["epoch"] != "0" || m["fenced"] != "false" {
		t.Fatalf("initial role file %v", m)
	}
	n := sender(t)
	send(t, n, target(a, wire.RoleStandby, 1))
	waitFile(t, o.RoleFile, "standby", "1", "false")

	// Promote, and keep the lease renewed until the file says active.
	res := send(t, n, target(a, wire.RoleActive, 2))
	if res.Status != wire.StatusOK {
		t.Fatalf("grant %+v", res)
	}
	waitFile(t, o.RoleFile, "active", "2", "false")

	// Demote at the same epoch.
	send(t, n, target(a, wire.RoleStandby, 2))
	waitFile(t, o.RoleFile, "standby", "2", "false")

	// A stale message is refused and changes nothing.
	before, err := os.ReadFile(o.RoleFile)
	if err != nil {
		t.Fatal(err)
	}
	if res := n.Send(context.Background(), target(a, wire.RoleActive, 1)); res.Status != wire.StatusStale {
		t.Fatalf("stale message: %+v", res)
	}
	// The stale refusal is counted before the ack; nothing was delivered.
	if after, _ := os.ReadFile(o.RoleFile); !bytes.Equal(before, after) {
		t.Fatalf("stale message changed the file: %q -> %q", before, after)
	}
	if v, _ := a.current(); v.Role != "standby" || v.Epoch != 2 {
		t.Fatalf("after a stale message: %+v", v)
	}

	// A promotion whose lease is never renewed lapses: standby, fenced.
	send(t, n, target(a, wire.RoleActive, 3))
	waitFile(t, o.RoleFile, "standby", "3", "true")

	// SIGTERM's path: standby, not fenced, written before Serve returns.
	send(t, n, target(a, wire.RoleActive, 4))
	waitFor(t, "active at epoch 4", func() bool { return readRoleFile(t, o.RoleFile)["role"] == "active" || a.roles.State().Fenced })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if m := readRoleFile(t, o.RoleFile); m["role"] != "standby" || m["fenced"] != "false" {
		t.Fatalf("role file after shutdown %v", m)
	}
}

func getJSON(t testing.TB, url string) (view, int) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var v view
	if resp.StatusCode == http.StatusOK {
		if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
			t.Fatal(err)
		}
	}
	return v, resp.StatusCode
}

func status(t testing.TB, url string) int {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	return resp.StatusCode
}

func TestHTTP(t *testing.T) {
	a, _, _ := startAgent(t, testOptions(t))
	base := "http://" + a.HTTPAddr()
	v, code := getJSON(t, base+"/role")
	if code != 200 || v.Role != "unknown" || v.Seq != 0 {
		t.Fatalf("GET /role: %d %+v", code, v)
	}
	if c := status(t, base+"/healthz"); c != 200 {
		t.Fatalf("/healthz %d", c)
	}
	if c := status(t, base+"/readyz"); c != 200 {
		t.Fatalf("/readyz %d", c)
	}
	if c := status(t, base+"/readyz?role=active"); c != 503 {
		t.Fatalf("/readyz?role=active while unknown: %d", c)
	}

	// Event stream: the first event is the current state.
	resp, err := http.Get(base + "/role/events")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("content type %q", ct)
	}
	events := make(chan view, 16)
	go func() {
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			if d, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
				var v view
				if json.Unmarshal([]byte(d), &v) == nil {
					events <- v
				}
			}
		}
		close(events)
	}()
	next := func() view {
		select {
		case v := <-events:
			return v
		case <-time.After(30 * time.Second):
			t.Fatal("no event")
		}
		return view{}
	}
	if e := next(); e.Role != "unknown" {
		t.Fatalf("first event %+v", e)
	}

	// A long poll past the current seq waits for the change.
	polled := make(chan view, 1)
	go func() {
		v, _ := getJSON(t, base+"/role?wait=30s&since=0")
		polled <- v
	}()
	n := sender(t)
	send(t, n, target(a, wire.RoleActive, 1))
	if v := <-polled; v.Seq < 1 || v.Role == "unknown" {
		t.Fatalf("long poll %+v", v)
	}
	if e := next(); e.Role != "active" || e.Epoch != 1 || e.Seq != 1 {
		t.Fatalf("event %+v", e)
	}
	// readyz?role=active follows the lease: the grant is never renewed, so
	// it lapses and the probe fails again.
	if e := next(); e.Role != "standby" || !e.Fenced {
		t.Fatalf("event after lapse %+v", e)
	}
	if c := status(t, base+"/readyz?role=active"); c != 503 {
		t.Fatalf("/readyz?role=active after lapse: %d", c)
	}
	// A long poll already behind returns at once; one that is current
	// returns at the end of its (short) wait.
	if v, _ := getJSON(t, base+"/role?wait=30s&since=0"); v.Seq != 2 {
		t.Fatalf("behind long poll %+v", v)
	}
	if v, _ := getJSON(t, base+"/role?wait=10ms&since=2"); v.Seq != 2 {
		t.Fatalf("timed-out long poll %+v", v)
	}
	if c := status(t, base+"/role?wait=bogus"); c != 400 {
		t.Fatalf("bad wait: %d", c)
	}
	body := get(t, base+"/metrics")
	for _, want := range []string{"hapod_agent_changes_total 2", `hapod_agent_role{role="standby"} 1`, `hapod_agent_role{role="fenced"} 1`} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

func get(t testing.TB, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// readyz?role=active says 200 while the lease is held: renew it from a
// goroutine until the probe has answered.
func TestReadyzActive(t *testing.T) {
	a, _, _ := startAgent(t, testOptions(t))
	n := sender(t)
	tgt := target(a, wire.RoleActive, 1)
	tgt.TTL = time.Minute // a long lease, so the probe sees it held
	send(t, n, tgt)
	if c := status(t, "http://"+a.HTTPAddr()+"/readyz?role=active"); c != 200 {
		t.Fatalf("/readyz?role=active while active: %d", c)
	}
	send(t, n, target(a, wire.RoleStandby, 1))
	waitFor(t, "readyz?role=active fails", func() bool { return status(t, "http://"+a.HTTPAddr()+"/readyz?role=active") == 503 })
}

func script(t testing.TB, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "on-change.sh")
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestOnChangeEnv(t *testing.T) {
	out := filepath.Join(t.TempDir(), "out")
	o := testOptions(t)
	o.OnChange = script(t, `echo "$ROLE $EPOCH $FENCED $CHANGED" >> `+out+"\n")
	a, _, _ := startAgent(t, o)
	send(t, sender(t), target(a, wire.RoleStandby, 5))
	waitFor(t, "on-change ran", func() bool { b, _ := os.ReadFile(out); return len(b) > 0 })
	b, _ := os.ReadFile(out)
	f := strings.Fields(string(b))
	if len(f) != 4 || f[0] != "standby" || f[1] != "5" || f[2] != "false" {
		t.Fatalf("on-change saw %q", b)
	}
	if _, err := time.Parse(time.RFC3339Nano, f[3]); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "run counted ok", func() bool {
		return strings.Contains(get(t, "http://"+a.HTTPAddr()+"/metrics"), `hapod_agent_on_change_runs_total{result="ok"} 1`)
	})
}

// processGone reports whether pid has exited (a zombie counts: nothing
// may reap it in a container without an init).
func processGone(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	_, rest, _ := strings.Cut(string(b), ") ")
	return strings.HasPrefix(rest, "Z")
}

func TestOnChangeTimeoutKillsGroup(t *testing.T) {
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "pid")
	o := testOptions(t)
	o.OnChangeTimeout = 200 * time.Millisecond
	o.OnChange = script(t, "sleep 1000 &\necho $! > "+pidFile+".tmp && mv "+pidFile+".tmp "+pidFile+"\nwait\n")
	a, logs, _ := startAgent(t, o)
	send(t, sender(t), target(a, wire.RoleStandby, 1))
	var pid int
	waitFor(t, "the command started its child", func() bool {
		b, err := os.ReadFile(pidFile)
		if err != nil {
			return false
		}
		pid, err = strconv.Atoi(strings.TrimSpace(string(b)))
		return err == nil
	})
	waitFor(t, "the timeout killed the child too", func() bool { return processGone(pid) })
	waitFor(t, "the timeout is counted", func() bool {
		return strings.Contains(get(t, "http://"+a.HTTPAddr()+"/metrics"), `hapod_agent_on_change_runs_total{result="timeout"} 1`)
	})
	if !strings.Contains(logs.String(), "On-change command timed out") {
		t.Fatalf("logs lack the timeout:\n%s", logs)
	}
}

func TestOnChangeFailureCounted(t *testing.T) {
	o := testOptions(t)
	o.OnChange = script(t, "exit 3\n")
	a, logs, _ := startAgent(t, o)
	send(t, sender(t), target(a, wire.RoleStandby, 1))
	waitFor(t, "the failure is counted", func() bool {
		return strings.Contains(get(t, "http://"+a.HTTPAddr()+"/metrics"), `hapod_agent_on_change_runs_total{result="error"} 1`)
	})
	if !strings.Contains(logs.String(), "exit=3") {
		t.Fatalf("logs lack the exit status:\n%s", logs)
	}
}

// Runs never overlap; changes during a run coalesce into one run with the
// latest state.
func TestOnChangeCoalesces(t *testing.T) {
	dir := t.TempDir()
	out, gate := filepath.Join(dir, "out"), filepath.Join(dir, "gate")
	o := testOptions(t)
	o.OnChange = script(t, `echo "start $EPOCH" >> `+out+"\nwhile [ ! -e "+gate+" ]; do sleep 0.01; done\necho \"end $EPOCH\" >> "+out+"\n")
	a, _, stop := startAgent(t, o)
	n := sender(t)
	send(t, n, target(a, wire.RoleStandby, 1))
	waitFor(t, "the first run started", func() bool { b, _ := os.ReadFile(out); return string(b) == "start 1\n" })
	for e := uint64(2); e <= 4; e++ {
		send(t, n, target(a, wire.RoleStandby, e))
	}
	waitFor(t, "epoch 4 is pending", func() bool {
		a.run.mu.Lock()
		defer a.run.mu.Unlock()
		return a.run.pending != nil && a.run.pending.Epoch == 4
	})
	if err := os.WriteFile(gate, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	want := "start 1\nend 1\nstart 4\nend 4\n"
	waitFor(t, "the coalesced run ended", func() bool { b, _ := os.ReadFile(out); return len(b) >= len(want) })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	// The shutdown's standby runs once more, after the others.
	b, _ := os.ReadFile(out)
	if !strings.HasPrefix(string(b), want) || strings.Count(string(b), "start") != 3 {
		t.Fatalf("runs:\n%s\nwant %q then the shutdown's run", b, want)
	}
}

func TestRunUsageErrors(t *testing.T) {
	for _, c := range []struct {
		args []string
		env  map[string]string
	}{
		{args: []string{"-bogus"}},
		{args: []string{"-role-addr", "nope"}},
		{args: []string{"extra"}},
		{env: map[string]string{"ON_CHANGE_TIMEOUT": "soon"}},
		{env: map[string]string{"HTTP_ADDR": "x", "ROLE_ADDR": "y"}},
		{args: []string{"-on-change-timeout", "0s"}},
		{args: []string{"-app-health", "127.0.0.1:8080"}},
		{args: []string{"-app-health", "tcp://127.0.0.1:1", "-app-health-failures", "0"}},
		{env: map[string]string{"APP_HEALTH_PERIOD": "-1s"}},
	} {
		var stdout, stderr bytes.Buffer
		err := Run(context.Background(), c.args, func(k string) string { return c.env[k] }, &stdout, &stderr)
		if ExitCode(err) != 2 {
			t.Errorf("%v %v: exit %d (%v), want 2", c.args, c.env, ExitCode(err), err)
			continue
		}
		if msg := err.Error(); strings.Contains(msg, "\n") || msg == "" {
			t.Errorf("%v %v: error %q is not one line", c.args, c.env, msg)
		}
	}
	var stdout bytes.Buffer
	if err := Run(context.Background(), []string{"-h"}, func(string) string { return "" }, &stdout, io.Discard); err != nil || ExitCode(err) != 0 {
		t.Fatalf("-h: %v", err)
	}
	if !strings.Contains(stdout.String(), "ROLE_FILE") || !strings.Contains(stdout.String(), "-on-change-timeout") {
		t.Fatalf("usage:\n%s", stdout.String())
	}
}

func TestEnvFallbacksMatchTheDemo(t *testing.T) {
	env := map[string]string{
		"ROLE_ADDR": "127.0.0.1:1", "POD_NAME": "n", "POD_UID": "u", "ROLE_GROUP": "a/b", "ROLE_KEY_DIR": "/k",
		"ROLE_FILE": "/f", "ON_CHANGE": "/c", "ON_CHANGE_TIMEOUT": "3s", "HTTP_ADDR": "127.0.0.1:2",
		"APP_HEALTH": "tcp://127.0.0.1:3", "APP_HEALTH_PERIOD": "20ms", "APP_HEALTH_FAILURES": "5",
	}
	o, err := ParseOptions(nil, func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	want := Options{RoleAddr: "127.0.0.1:1", PodName: "n", PodUID: "u", RoleGroup: "a/b", RoleKeyDir: "/k",
		RoleFile: "/f", OnChange: "/c", OnChangeTimeout: 3 * time.Second, HTTPAddr: "127.0.0.1:2",
		AppHealth: "tcp://127.0.0.1:3", AppHealthPeriod: 20 * time.Millisecond, AppHealthFailures: 5}
	if o != want {
		t.Fatalf("got %+v, want %+v", o, want)
	}
	// The flag wins.
	if o, _ := ParseOptions([]string{"-pod-name", "m"}, func(k string) string { return env[k] }); o.PodName != "m" {
		t.Fatalf("flag lost to env: %+v", o)
	}
	d, _ := ParseOptions(nil, func(string) string { return "" })
	if d.RoleFile != "/run/hapod/role" || d.HTTPAddr != "127.0.0.1:7480" || d.RoleAddr != ":7477" || d.OnChangeTimeout != 10*time.Second {
		t.Fatalf("defaults %+v", d)
	}
}

// The address in use is a runtime error (exit 1), not a usage error.
func TestAddressInUse(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	o := testOptions(t)
	o.HTTPAddr = ln.Addr().String()
	_, err = New(context.Background(), o, slog.New(slog.DiscardHandler), io.Discard)
	if err == nil || ExitCode(err) != 1 || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("got %v", err)
	}
}

func addrOf(t testing.TB, s string) netip.AddrPort {
	t.Helper()
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		t.Fatal(err)
	}
	return ap
}
