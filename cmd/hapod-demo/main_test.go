package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hapod/hapod/internal/dev/bintest"
	"github.com/hapod/hapod/internal/wire"
)

// envBeMain makes the test binary run main instead of the tests, so that the
// tests can check what the real process prints and exits with.
const envBeMain = "HAPOD_DEMO_TEST_BE_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(envBeMain) == "1" {
		main()
	}
	os.Exit(m.Run())
}

// testOptions listen on loopback ports chosen by the kernel.
func testOptions() options {
	return options{httpAddr: "127.0.0.1:0", roleAddr: "127.0.0.1:0", podName: "demo-0", podUID: "uid-0"}
}

// startApp runs an app until the test ends and checks that it then stops
// cleanly. stop shuts it down earlier and returns serve's result.
func startApp(t *testing.T, o options) (a *app, logs *bintest.Buffer, stop func() error) {
	t.Helper()
	logs = &bintest.Buffer{}
	ctx, cancel := context.WithCancel(t.Context())
	a, err := newApp(ctx, o, slog.New(slog.NewTextHandler(logs, nil)))
	if err != nil {
		cancel()
		t.Fatalf("newApp: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- a.serve(ctx) }()
	var once sync.Once
	var serveErr error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case serveErr = <-done:
			case <-time.After(shutdownTimeout + 5*time.Second):
				serveErr = errors.New("serve did not return after cancel")
			}
		})
		return serveErr
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return a, logs, stop
}

// sendRole sends one role message over UDP, as the controller does, and
// returns the ack. The listener records the role before it acks, so the
// HTTP answers reflect it as soon as this returns. An active role is a
// lease grant, as from the controller: a TTL (a minute unless m has one)
// and, when the app answers "retry", the same message again echoing its
// nonce.
func sendRole(t *testing.T, addr string, m wire.Message) wire.Message {
	t.Helper()
	m.Type = wire.TypeRole
	if m.Role == wire.RoleActive && m.TTLMillis == 0 {
		m.TTLMillis = wire.TTLMillisOf(time.Minute)
	}
	c, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for {
		b, err := wire.Encode(m)
		if err != nil {
			t.Fatalf("encode: %v", err)
		}
		if _, err := c.Write(b); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, wire.MaxSize+1)
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, err := c.Read(buf)
		if err != nil {
			t.Fatalf("no ack for %s: %v", b, err)
		}
		ack, err := wire.Decode(buf[:n])
		if err != nil {
			t.Fatalf("decode ack %q: %v", buf[:n], err)
		}
		if ack.Status != wire.StatusRetry || m.Echo == ack.Nonce {
			return ack
		}
		m.Echo = ack.Nonce
	}
}

func get(t *testing.T, url string) (int, []byte) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return resp.StatusCode, body
}

func getStatus(t *testing.T, a *app) (int, status) {
	t.Helper()
	code, body := get(t, "http://"+a.httpAddr()+"/")
	var st status
	if err := json.Unmarshal(body, &st); err != nil {
		t.Fatalf("GET /: %v in %q", err, body)
	}
	return code, st
}

// eventually polls cond every 5ms until it returns nil or timeout passes.
func eventually(t *testing.T, timeout time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not within %v: %v", timeout, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func waitReady(t *testing.T, a *app) {
	t.Helper()
	eventually(t, 10*time.Second, func() error {
		if code, body := get(t, "http://"+a.httpAddr()+"/readyz"); code != http.StatusOK {
			return errors.New(string(body))
		}
		return nil
	})
}

func TestRoleMessagesSwitchAnswers(t *testing.T) {
	a, logs, _ := startApp(t, testOptions())
	waitReady(t, a)
	msg := func(r string, epoch uint64) wire.Message {
		return wire.Message{Group: "shop/hapod", Pod: "demo-0", UID: "uid-0", Role: r, Epoch: epoch, Seq: epoch}
	}

	// Before any message the role is unknown, which the app treats as standby.
	if code, st := getStatus(t, a); code != http.StatusServiceUnavailable || st.Role != "standby" || st.Epoch != 0 || st.Pod != "demo-0" {
		t.Fatalf("before any message: %d %+v, want 503 standby epoch 0 pod demo-0", code, st)
	}

	steps := []struct {
		name      string
		msg       wire.Message
		ackStatus string
		code      int
		role      string
		epoch     uint64
		served    uint64
	}{
		// The controller tells a new pod it is standby.
		{"standby", msg("standby", 1), wire.StatusOK, 503, "standby", 1, 0},
		// Promotion: the same process now serves.
		{"promoted", msg("active", 2), wire.StatusOK, 200, "active", 2, 1},
		// A retried duplicate changes nothing (served counts the request).
		{"duplicate", msg("active", 2), wire.StatusOK, 200, "active", 2, 2},
		// A delayed message from an older epoch must not undo the promotion.
		{"stale", msg("standby", 1), wire.StatusStale, 200, "active", 2, 3},
		// A message for a previous owner of this IP is refused.
		{"other pod", wire.Message{Group: "shop/hapod", Pod: "demo-9", UID: "uid-9", Role: "standby", Epoch: 5, Seq: 5}, wire.StatusWrongPod, 200, "active", 2, 4},
		// Demotion: a mis-routed request is visibly a failure again.
		{"demoted", msg("standby", 3), wire.StatusOK, 503, "standby", 3, 4},
	}
	for _, s := range steps {
		ack := sendRole(t, a.roleAddr(), s.msg)
		if ack.Status != s.ackStatus || ack.Epoch != s.msg.Epoch || ack.Seq != s.msg.Seq {
			t.Fatalf("%s: ack %+v, want status %q echoing epoch %d seq %d", s.name, ack, s.ackStatus, s.msg.Epoch, s.msg.Seq)
		}
		code, st := getStatus(t, a)
		if code != s.code || st.Role != s.role || st.Epoch != s.epoch || st.Served != s.served || st.Group != "shop/hapod" {
			t.Fatalf("%s: GET / = %d %+v, want %d role %s epoch %d served %d group shop/hapod",
				s.name, code, st, s.code, s.role, s.epoch, s.served)
		}
	}

	// One log line per applied change, with the epoch. The app logs after
	// the ack (the listener acks first), so the last line may trail it.
	var changes []string
	want := []string{"role=standby epoch=1", "role=active epoch=2", "role=standby epoch=3"}
	eventually(t, 5*time.Second, func() error {
		changes = regexp.MustCompile(`(?m)^.*msg="Role changed".*$`).FindAllString(logs.String(), -1)
		if len(changes) != len(want) {
			return fmt.Errorf("role change log lines:\n%s\nwant %d", strings.Join(changes, "\n"), len(want))
		}
		return nil
	})
	for i, w := range want {
		if !strings.Contains(changes[i], w) || !strings.Contains(changes[i], "group=shop/hapod") {
			t.Errorf("log line %d = %q, want it to contain %q and the group", i, changes[i], w)
		}
	}
}

// A pod told active before its slow start is over cannot serve yet; it says
// so with 503 and its true role.
func TestActiveBeforeReadyAnswers503(t *testing.T) {
	o := testOptions()
	o.initDelay = time.Hour
	a, _, _ := startApp(t, o)
	sendRole(t, a.roleAddr(), wire.Message{Group: "g/hapod", Pod: "demo-0", UID: "uid-0", Role: "active", Epoch: 1, Seq: 1})
	if code, st := getStatus(t, a); code != http.StatusServiceUnavailable || st.Role != "active" || st.Served != 0 {
		t.Fatalf("GET / = %d %+v, want 503 role active served 0", code, st)
	}
}

// An active app whose lease runs out (the controller stopped renewing it)
// stops serving at once and says it is fenced.
func TestLeaseLapseAnswers503(t *testing.T) {
	a, logs, _ := startApp(t, testOptions())
	waitReady(t, a)
	sendRole(t, a.roleAddr(), wire.Message{Group: "g/hapod", Pod: "demo-0", UID: "uid-0", Role: "active", Epoch: 1, Seq: 1, TTLMillis: 100})
	if code, st := getStatus(t, a); code != http.StatusOK || st.Role != "active" || st.Fenced {
		t.Fatalf("GET / = %d %+v, want 200 active", code, st)
	}
	eventually(t, 5*time.Second, func() error {
		if code, st := getStatus(t, a); code != http.StatusServiceUnavailable || st.Role != "standby" || !st.Fenced || st.Epoch != 1 {
			return fmt.Errorf("GET / = %d %+v, want 503 standby fenced at epoch 1", code, st)
		}
		return nil
	})
	eventually(t, 5*time.Second, func() error {
		if !strings.Contains(logs.String(), "fenced=true") {
			return errors.New("no log line of the lapse")
		}
		return nil
	})
}

func TestReadyAfterInitDelay(t *testing.T) {
	const delay = 300 * time.Millisecond
	o := testOptions()
	o.initDelay = delay
	o.readyFile = filepath.Join(t.TempDir(), "ready")
	began := time.Now()
	a, _, stop := startApp(t, o)

	if code, _ := get(t, "http://"+a.httpAddr()+"/healthz"); code != http.StatusOK {
		t.Errorf("/healthz = %d during init, want 200", code)
	}
	code, _ := get(t, "http://"+a.httpAddr()+"/readyz")
	// The delay counts from newApp, which began after began: an answer
	// received less than delay after began was certainly given before it.
	if elapsed := time.Since(began); elapsed < delay {
		if code != http.StatusServiceUnavailable {
			t.Errorf("/readyz = %d after %v, want 503 before %v", code, elapsed, delay)
		}
		if _, err := os.Stat(o.readyFile); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("ready file before init-delay: %v, want it absent", err)
		}
	} else {
		t.Logf("machine too slow to observe the not-ready phase (%v >= %v)", elapsed, delay)
	}

	waitReady(t, a)
	if elapsed := time.Since(began); elapsed < delay {
		t.Errorf("ready after %v, before init-delay %v", elapsed, delay)
	}
	if _, err := os.Stat(o.readyFile); err != nil {
		t.Errorf("ready file once ready: %v", err)
	}

	if err := stop(); err != nil {
		t.Fatalf("serve: %v", err)
	}
	if _, err := os.Stat(o.readyFile); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("ready file after shutdown: %v, want it removed", err)
	}
}

// A request in flight when the shutdown begins is still answered, and serve
// returns only after it.
func TestShutdownIsGraceful(t *testing.T) {
	o := testOptions()
	logs := &bintest.Buffer{}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	a, err := newApp(ctx, o, slog.New(slog.NewTextHandler(logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	entered, release := make(chan struct{}), make(chan struct{})
	app := a.srv.Handler
	a.srv.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			close(entered)
			<-release
			r.URL.Path = "/healthz"
		}
		app.ServeHTTP(w, r)
	})
	served := make(chan error, 1)
	go func() { served <- a.serve(ctx) }()

	answered := make(chan int, 1)
	go func() {
		resp, err := http.Get("http://" + a.httpAddr() + "/slow")
		if err != nil {
			t.Errorf("request in flight during shutdown: %v", err)
			answered <- 0
			return
		}
		resp.Body.Close()
		answered <- resp.StatusCode
	}()
	<-entered
	cancel()
	eventually(t, 5*time.Second, func() error {
		if !strings.Contains(logs.String(), "Shutting down") {
			return errors.New("no shutdown yet")
		}
		return nil
	})
	select {
	case err := <-served:
		t.Fatalf("serve returned (%v) with a request in flight", err)
	default:
	}
	close(release)
	if code := <-answered; code != http.StatusOK {
		t.Errorf("in-flight request = %d, want 200", code)
	}
	if err := <-served; err != nil {
		t.Fatalf("serve: %v", err)
	}
	if c, err := net.Dial("tcp", a.httpAddr()); err == nil {
		c.Close()
		t.Error("HTTP port still accepts connections after shutdown")
	}
}

func noEnv(string) string { return "" }

func TestAddressInUse(t *testing.T) {
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer tcp.Close()
	udp, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()

	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"http", []string{"-http-addr", tcp.Addr().String(), "-role-addr", "127.0.0.1:0"}, "-http-addr " + tcp.Addr().String() + ": address already in use"},
		{"role", []string{"-http-addr", "127.0.0.1:0", "-role-addr", udp.LocalAddr().String()}, "-role-addr " + udp.LocalAddr().String() + ": address already in use"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stderr bytes.Buffer
			err := run(t.Context(), tc.args, noEnv, io.Discard, &stderr)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("run = %v, want an error containing %q", err, tc.want)
			}
			if got := exitCode(err); got != 1 {
				t.Errorf("exit code %d, want 1", got)
			}
		})
	}
}

func TestBadUsage(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
		want string
	}{
		{"unknown flag", []string{"-nope"}, nil, "flag provided but not defined: -nope"},
		{"bad duration", []string{"-init-delay", "soon"}, nil, `invalid value "soon" for flag -init-delay`},
		{"negative delay", []string{"-init-delay=-1s"}, nil, "-init-delay: must not be negative"},
		{"no port", []string{"-http-addr", "localhost"}, nil, `-http-addr "localhost": want host:port`},
		{"bad port", []string{"-role-addr", ":99999"}, nil, `-role-addr ":99999": bad port "99999"`},
		{"extra argument", []string{"serve"}, nil, `unexpected arguments ["serve"]`},
		// Environment values are checked like flags, and named in the error.
		{"bad env", nil, map[string]string{"INIT_DELAY": "soon"}, `INIT_DELAY="soon" (for -init-delay)`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			getenv := func(k string) string { return tc.env[k] }
			err := run(t.Context(), tc.args, getenv, io.Discard, io.Discard)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("run = %v, want an error containing %q", err, tc.want)
			}
			if got := exitCode(err); got != 2 {
				t.Errorf("exit code %d, want 2", got)
			}
		})
	}
}

func TestEnvFallback(t *testing.T) {
	env := map[string]string{"POD_NAME": "from-env", "POD_UID": "uid-env", "INIT_DELAY": "1m", "HTTP_ADDR": "127.0.0.1:1"}
	o, err := parseOptions([]string{"-http-addr", "127.0.0.1:2"}, func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	// The flag wins over the environment; the environment over defaults.
	want := options{httpAddr: "127.0.0.1:2", roleAddr: ":7477", podName: "from-env", podUID: "uid-env", initDelay: time.Minute}
	if o != want {
		t.Errorf("options = %+v, want %+v", o, want)
	}
}

func TestHelp(t *testing.T) {
	var stdout bytes.Buffer
	if err := run(t.Context(), []string{"-h"}, noEnv, &stdout, io.Discard); err != nil {
		t.Fatalf("run -h = %v, want nil", err)
	}
	for _, w := range []string{"Usage: hapod-demo", "-init-delay", "POD_UID"} {
		if !strings.Contains(stdout.String(), w) {
			t.Errorf("usage does not mention %q:\n%s", w, stdout.String())
		}
	}
}

// startProcess runs the test binary as hapod-demo.
func startProcess(t *testing.T, args ...string) (*exec.Cmd, *bintest.Buffer) {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), os.Args[0], args...)
	cmd.Env = append(os.Environ(), envBeMain+"=1")
	stderr := &bintest.Buffer{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return cmd, stderr
}

func exitStatus(t *testing.T, err error) int {
	t.Helper()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("wait: %v", err)
	}
	if ee != nil {
		return ee.ExitCode()
	}
	return 0
}

// The process reports errors in one plain line with the right exit status.
func TestProcessErrors(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	for _, tc := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"port in use", []string{"-http-addr", busy.Addr().String(), "-role-addr", "127.0.0.1:0"}, 1, "hapod-demo: -http-addr " + busy.Addr().String() + ": address already in use"},
		{"bad flag", []string{"-init-delay", "soon"}, 2, `hapod-demo: invalid value "soon" for flag -init-delay`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd, stderr := startProcess(t, tc.args...)
			if got := exitStatus(t, cmd.Wait()); got != tc.code {
				t.Errorf("exit status %d, want %d", got, tc.code)
			}
			out := stderr.String()
			if !strings.HasPrefix(out, tc.want) || strings.Count(out, "\n") != 1 || strings.Contains(out, "goroutine") {
				t.Errorf("stderr = %q, want one line starting %q", out, tc.want)
			}
		})
	}
}

var servingLine = regexp.MustCompile(`msg=Serving .*http=(\S+)`)

// SIGTERM ends the process cleanly with status 0.
func TestProcessSIGTERM(t *testing.T) {
	cmd, stderr := startProcess(t, "-http-addr", "127.0.0.1:0", "-role-addr", "127.0.0.1:0", "-init-delay", "0")
	var addr string
	eventually(t, 10*time.Second, func() error {
		m := servingLine.FindStringSubmatch(stderr.String())
		if m == nil {
			return errors.New("no Serving line yet: " + stderr.String())
		}
		addr = m[1]
		return nil
	})
	if code, _ := get(t, "http://"+addr+"/healthz"); code != http.StatusOK {
		t.Fatalf("/healthz = %d, want 200", code)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if got := exitStatus(t, cmd.Wait()); got != 0 {
		t.Errorf("exit status after SIGTERM %d, want 0; stderr:\n%s", got, stderr.String())
	}
	if out := stderr.String(); !strings.Contains(out, `msg="Shutting down"`) || !strings.Contains(out, "msg=Stopped") {
		t.Errorf("stderr does not show a graceful shutdown:\n%s", out)
	}
}
