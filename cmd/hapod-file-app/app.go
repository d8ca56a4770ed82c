package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/hapod/hapod/internal/dev/rolerecord"
	"github.com/hapod/hapod/internal/envflag"
)

type options struct {
	httpAddr, roleFile, roleRecords, podName string
	poll                                     time.Duration
}

// envFallback names the environment variable each flag falls back to.
var envFallback = map[string]string{
	"http-addr":    "HTTP_ADDR",
	"role-file":    "ROLE_FILE",
	"role-records": "ROLE_RECORDS",
	"pod-name":     "POD_NAME",
	"poll":         "ROLE_POLL",
}

func parseOptions(args []string, getenv func(string) string) (options, error) {
	var o options
	fs := flag.NewFlagSet("hapod-file-app", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&o.httpAddr, "http-addr", ":8080", "HTTP listen address")
	fs.StringVar(&o.roleFile, "role-file", "/run/hapod/role", "role file written by hapod-agent")
	fs.StringVar(&o.roleRecords, "role-records", "", "file to append one JSON line to per role change (optional)")
	fs.StringVar(&o.podName, "pod-name", "", "name reported in answers (default: hostname)")
	fs.DurationVar(&o.poll, "poll", 5*time.Millisecond, "how often the role file is read")
	if err := envflag.Parse(fs, args); err != nil {
		return o, err
	}
	errs := envflag.Apply(fs, envFallback, getenv)
	if o.poll <= 0 {
		errs = append(errs, errors.New("-poll must be positive"))
	}
	return o, errors.Join(errs...)
}

type app struct {
	opts    options
	log     *slog.Logger
	pod     string
	started time.Time
	records *rolerecord.Writer

	// lastServed and lastEpoch are what the last record said; only watch's
	// goroutine uses them.
	lastServed string
	lastEpoch  uint64

	mu   sync.Mutex
	cur  fileRole
	stop bool
}

func run(ctx context.Context, args []string, getenv func(string) string, _, stderr io.Writer) error {
	o, err := parseOptions(args, getenv)
	if err != nil {
		return err
	}
	a := &app{opts: o, log: slog.New(slog.NewTextHandler(stderr, nil)), pod: o.podName, started: time.Now()}
	if a.pod == "" {
		a.pod, _ = os.Hostname()
	}
	if o.roleRecords != "" {
		f, err := os.OpenFile(o.roleRecords, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
		if err != nil {
			return fmt.Errorf("-role-records: %w", err)
		}
		defer f.Close()
		a.records = rolerecord.NewWriter(f)
	}
	ln, err := net.Listen("tcp", o.httpAddr)
	if err != nil {
		return fmt.Errorf("-http-addr %s: %w", o.httpAddr, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", a.handleRoot)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { text(w, http.StatusOK, "ok") })
	mux.HandleFunc("GET /readyz", a.handleReadyz)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	a.log.Info("Serving", "pod", a.pod, "http", ln.Addr().String(), "roleFile", o.roleFile)
	a.watch(ctx)
	a.mu.Lock()
	a.stop = true
	a.mu.Unlock()
	a.record(rolerecord.Change{At: time.Now(), Pod: a.pod, Role: rolerecord.Stopped})
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	return srv.Shutdown(sctx)
}

// watch reads the role file every poll until ctx is done.
func (a *app) watch(ctx context.Context) {
	t := time.NewTicker(a.opts.poll)
	defer t.Stop()
	for {
		a.check()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// check applies the file's state; a missing or unreadable file is standby.
// A record is written when the served role or the epoch changes, the first
// check included, so the records say what the app held from the start.
func (a *app) check() {
	r := fileRole{Role: "standby"}
	if b, err := os.ReadFile(a.opts.roleFile); err == nil {
		r = parseRoleFile(b)
	}
	eff := r.served()
	a.mu.Lock()
	a.cur = r
	a.mu.Unlock()
	if eff == a.lastServed && r.Epoch == a.lastEpoch {
		return
	}
	a.lastServed, a.lastEpoch = eff, r.Epoch
	a.log.Info("Role changed", "pod", a.pod, "role", eff, "epoch", r.Epoch, "fenced", r.Fenced)
	a.record(rolerecord.Change{At: time.Now(), Pod: a.pod, Role: eff, Epoch: r.Epoch})
}

func (a *app) record(c rolerecord.Change) {
	if a.records == nil {
		return
	}
	if err := a.records.Write(c); err != nil {
		a.log.Warn("Role record not written", "file", a.opts.roleRecords, "err", err)
	}
}

type status struct {
	Pod    string    `json:"pod"`
	Role   string    `json:"role"`
	Epoch  uint64    `json:"epoch"`
	Since  time.Time `json:"since"`
	Fenced bool      `json:"fenced,omitempty"`
}

// handleRoot answers 200 only while the file says active: traffic routed to
// a standby is visible as a failure.
func (a *app) handleRoot(w http.ResponseWriter, _ *http.Request) {
	a.mu.Lock()
	r, stopping := a.cur, a.stop
	a.mu.Unlock()
	st := status{Pod: a.pod, Role: "standby", Epoch: r.Epoch, Since: r.Changed, Fenced: r.Fenced}
	code := http.StatusServiceUnavailable
	if r.active() && !stopping {
		st.Role, code = "active", http.StatusOK
	}
	if st.Since.IsZero() {
		st.Since = a.started
	}
	b, _ := json.Marshal(st)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_, _ = w.Write(append(b, '\n'))
}

func (a *app) handleReadyz(w http.ResponseWriter, _ *http.Request) {
	a.mu.Lock()
	stopping := a.stop
	a.mu.Unlock()
	if stopping {
		text(w, http.StatusServiceUnavailable, "shutting down")
		return
	}
	text(w, http.StatusOK, "ok")
}

func text(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(code)
	_, _ = io.WriteString(w, msg+"\n")
}
