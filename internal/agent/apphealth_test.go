package agent

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hapod/hapod/internal/notify"
	"github.com/hapod/hapod/internal/wire"
)

func TestParseAppCheck(t *testing.T) {
	for _, tc := range []struct {
		spec, http, tcp, err string
	}{
		{spec: ""},
		{spec: "http://127.0.0.1:8080/healthz", http: "http://127.0.0.1:8080/healthz"},
		{spec: "https://localhost:8443/", http: "https://localhost:8443/"},
		{spec: "tcp://127.0.0.1:8080", tcp: "127.0.0.1:8080"},
		{spec: "tcp://127.0.0.1", err: "want tcp://host:port"},
		{spec: "tcp://127.0.0.1:8080/x", err: "want http://"},
		{spec: "127.0.0.1:8080", err: "want http://"},
		{spec: "ftp://x:1", err: "want http://"},
	} {
		c, err := parseAppCheck(tc.spec, time.Second, 3)
		switch {
		case tc.err != "":
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: %v, want an error with %q", tc.spec, err, tc.err)
			}
		case err != nil:
			t.Errorf("%q: %v", tc.spec, err)
		case tc.spec == "" && c != nil:
			t.Errorf("empty spec gave a check")
		case tc.spec != "" && (c.httpURL != tc.http || c.tcpAddr != tc.tcp):
			t.Errorf("%q: http %q tcp %q, want %q %q", tc.spec, c.httpURL, c.tcpAddr, tc.http, tc.tcp)
		}
	}
}

// An app that is down when the agent starts keeps the role listener
// unbound; once it answers the agent serves; when it stops answering the
// agent writes standby, releases its active lease to the controller (a
// standby ack, seq 0, that the real sender's ack handler sees) and Serve
// returns the app's death.
func TestAppHealthGatesTheRole(t *testing.T) {
	var healthy atomic.Bool
	var checks atomic.Int64
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		checks.Add(1)
		if !healthy.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	}))
	defer app.Close()

	o := testOptions(t)
	o.AppHealth, o.AppHealthPeriod, o.AppHealthFailures = app.URL+"/healthz", 10*time.Millisecond, 3
	logs := &syncBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	made := make(chan *Agent, 1)
	go func() {
		a, err := New(ctx, o, slog.New(slog.NewTextHandler(logs, nil)), logs)
		if err != nil {
			t.Errorf("New: %v", err)
		}
		made <- a
	}()
	waitFor(t, "a few failed checks", func() bool { return checks.Load() >= 3 })
	select {
	case <-made:
		t.Fatal("the agent bound its role listener while the app was down")
	default:
	}
	if m := readRoleFile(t, o.RoleFile); m["role"] != "unknown" {
		t.Fatalf("role file while waiting for the app: %v", m)
	}
	healthy.Store(true)
	a := <-made
	if a == nil {
		t.FailNow()
	}
	served := make(chan error, 1)
	go func() { served <- a.Serve(ctx) }()

	n := sender(t)
	released := make(chan notify.Ack, 1)
	n.SetAckHandler(func(ack notify.Ack) notify.AckVerdict {
		if ack.Seq == 0 && ack.Role == wire.RoleStandby {
			select {
			case released <- ack:
			default:
			}
		}
		return notify.AckExpected
	})
	tgt := target(a, wire.RoleActive, 1)
	tgt.TTL = time.Minute // held until the app dies, with no renewals
	send(t, n, tgt)
	waitFile(t, o.RoleFile, "active", "1", "false")

	healthy.Store(false)
	var err error
	select {
	case err = <-served:
	case <-time.After(30 * time.Second):
		t.Fatalf("the agent did not give the role up; logs:\n%s", logs)
	}
	if !errors.Is(err, errAppDied) {
		t.Fatalf("Serve: %v, want the app's death", err)
	}
	if m := readRoleFile(t, o.RoleFile); m["role"] != "standby" || m["epoch"] != "1" {
		t.Fatalf("role file after the app died: %v", m)
	}
	select {
	case ack := <-released:
		if ack.Epoch != 1 || ack.UID != "uid-0" {
			t.Fatalf("release %+v", ack)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no release reached the controller's sender")
	}
}

// A stop (SIGTERM) while the agent waits for the app is a clean exit.
func TestAppHealthStopWhileWaiting(t *testing.T) {
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	defer app.Close()
	o := testOptions(t)
	ctx, cancel := context.WithCancel(context.Background())
	args := []string{"-role-addr", o.RoleAddr, "-http-addr", o.HTTPAddr, "-role-file", o.RoleFile,
		"-app-health", app.URL, "-app-health-period", "10ms"}
	done := make(chan error, 1)
	logs := &syncBuffer{}
	go func() { done <- Run(ctx, args, func(string) string { return "" }, logs, logs) }()
	waitFor(t, "the agent waiting for the app", func() bool { return strings.Contains(logs.String(), "Waiting for the app") })
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v, want a clean stop", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not stop")
	}
}
