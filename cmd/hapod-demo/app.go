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
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hapod/hapod/internal/dev/rolerecord"
	"github.com/hapod/hapod/pkg/role"
)

// shutdownTimeout bounds the wait for requests in flight after a signal; it
// is well inside Kubernetes' default 30s termination grace period.
const shutdownTimeout = 10 * time.Second

// run is main without the process: it parses args, serves until ctx is done
// and returns nil after a clean shutdown.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	o, err := parseOptions(args, getenv)
	if errors.Is(err, flag.ErrHelp) {
		printUsage(stdout)
		return nil
	}
	if err != nil {
		return err
	}
	a, err := newApp(ctx, o, slog.New(slog.NewTextHandler(stderr, nil)))
	if err != nil {
		return err
	}
	return a.serve(ctx)
}

// exitCode maps run's error to the process exit status.
func exitCode(err error) int {
	var ue usageError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ue):
		return 2
	default:
		return 1
	}
}

// app is the demo application: a role listener and an HTTP server.
type app struct {
	opts    options
	log     *slog.Logger
	pod     string    // the name reported in answers
	started time.Time // init-delay counts from here

	roles  *role.Listener
	httpLn net.Listener
	srv    *http.Server
	// records gets each role change when -role-records is set; recordsFile
	// is closed with the listener.
	records     *rolerecord.Writer
	recordsFile *os.File

	ready    atomic.Bool // init-delay has passed
	stopping atomic.Bool // a shutdown has begun
	served   atomic.Uint64
}

// newApp binds both sockets, so that a message or request sent after it
// returns is not lost, and so that an address in use is reported at once.
func newApp(ctx context.Context, o options, log *slog.Logger) (*app, error) {
	a := &app{opts: o, log: log, pod: o.podName, started: time.Now()}
	if a.pod == "" {
		// Only for display: fencing uses -pod-name as given.
		a.pod, _ = os.Hostname()
	}
	if o.roleRecords != "" {
		f, err := os.OpenFile(o.roleRecords, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
		if err != nil {
			return nil, fmt.Errorf("-role-records: %w", err)
		}
		a.recordsFile, a.records = f, rolerecord.NewWriter(f)
	}
	var err error
	// The listener is closed by shutdown, not by ctx: role.Listen assigns
	// the hook that ctx would run only after registering it, so a signal
	// arriving from another goroutine races with that assignment.
	a.roles, err = role.Listen(context.WithoutCancel(ctx), role.Config{
		Addr:     o.roleAddr,
		PodUID:   o.podUID,
		PodName:  o.podName,
		Group:    o.roleGroup,
		KeyDir:   o.roleKeyDir,
		OnChange: a.roleChanged,
	})
	if err != nil {
		a.closeRecords()
		return nil, listenError("role-addr", o.roleAddr, err)
	}
	a.httpLn, err = net.Listen("tcp", o.httpAddr)
	if err != nil {
		a.closeRoles()
		return nil, listenError("http-addr", o.httpAddr, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", a.handleRoot)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { text(w, http.StatusOK, "ok") })
	mux.HandleFunc("GET /readyz", a.handleReadyz)
	a.srv = &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	return a, nil
}

// listenError names the flag, and says plainly when the address is taken.
func listenError(flagName, addr string, err error) error {
	if errors.Is(err, syscall.EADDRINUSE) {
		return fmt.Errorf("-%s %s: address already in use (is another process listening there?)", flagName, addr)
	}
	return fmt.Errorf("-%s %s: %w", flagName, addr, err)
}

func (a *app) httpAddr() string { return a.httpLn.Addr().String() }
func (a *app) roleAddr() string { return a.roles.Addr().String() }

// serve serves until ctx is done, then shuts down gracefully: /readyz fails
// at once, requests in flight finish, the sockets close and the ready file
// is removed.
func (a *app) serve(ctx context.Context) error {
	serveErr := make(chan error, 1)
	go func() { serveErr <- a.srv.Serve(a.httpLn) }()
	a.log.Info("Serving", "pod", a.pod, "http", a.httpAddr(), "role", a.roleAddr(),
		"podUID", a.opts.podUID, "initDelay", a.opts.initDelay.String())

	initDone := time.NewTimer(time.Until(a.started.Add(a.opts.initDelay)))
	defer initDone.Stop()
	for {
		select {
		case <-initDone.C:
			if err := a.becomeReady(); err != nil {
				return errors.Join(err, a.shutdown(ctx))
			}
		case err := <-serveErr:
			a.closeRoles()
			a.removeReadyFile()
			return fmt.Errorf("http server: %w", err)
		case <-ctx.Done():
			return a.shutdown(ctx)
		}
	}
}

func (a *app) becomeReady() error {
	if a.opts.readyFile != "" {
		if err := os.WriteFile(a.opts.readyFile, []byte("ready\n"), 0o644); err != nil {
			return fmt.Errorf("-ready-file: %w", err)
		}
	}
	a.ready.Store(true)
	a.log.Info("Ready", "pod", a.pod, "after", time.Since(a.started).Round(time.Millisecond).String())
	return nil
}

func (a *app) shutdown(ctx context.Context) error {
	a.stopping.Store(true)
	a.log.Info("Shutting down", "pod", a.pod)
	// From now on GET / answers 503 whatever the role: say so to whoever
	// follows the records (a killed app says nothing; its death is the end).
	if a.records != nil {
		if err := a.records.Write(rolerecord.Change{At: time.Now(), Pod: a.pod, Role: rolerecord.Stopped}); err != nil {
			a.log.Warn("Role record not written", "file", a.opts.roleRecords, "err", err)
		}
	}
	// ctx is usually done by now; the wait needs its own bound.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
	defer cancel()
	err := a.srv.Shutdown(ctx)
	a.closeRoles()
	a.removeReadyFile()
	if err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	a.log.Info("Stopped", "pod", a.pod, "served", a.served.Load())
	return nil
}

func (a *app) removeReadyFile() {
	if a.opts.readyFile == "" {
		return
	}
	if err := os.Remove(a.opts.readyFile); err != nil && !errors.Is(err, os.ErrNotExist) {
		a.log.Warn("Cannot remove the ready file", "file", a.opts.readyFile, "err", err)
	}
}

// roleChanged runs on the listener's goroutine for each applied change.
func (a *app) roleChanged(s role.State) {
	a.log.Info("Role changed", "pod", a.pod, "role", string(s.Role), "epoch", s.Epoch, "group", s.Group, "fenced", s.Fenced)
	if a.records == nil {
		return
	}
	c := rolerecord.Change{At: s.Changed, Pod: a.pod, Role: string(s.Role), Epoch: s.Epoch, Group: s.Group}
	if err := a.records.Write(c); err != nil {
		a.log.Warn("Role record not written", "file", a.opts.roleRecords, "err", err)
	}
}

// closeRoles closes the role listener, and then the records it writes to.
func (a *app) closeRoles() {
	_ = a.roles.Close()
	a.closeRecords()
}

func (a *app) closeRecords() {
	if a.recordsFile != nil {
		_ = a.recordsFile.Close()
	}
}

// status is the answer of GET /.
type status struct {
	Pod    string    `json:"pod"`
	Role   string    `json:"role"`   // "active" or "standby"; no message yet counts as standby
	Epoch  uint64    `json:"epoch"`  // 0 until the controller has said anything
	Group  string    `json:"group"`  // namespace/groupname, "" until told
	Served uint64    `json:"served"` // requests answered 200 by this process
	Since  time.Time `json:"since"`  // when the role was received, or process start
	// Fenced: standby because the active role's lease ran out unrenewed.
	Fenced bool `json:"fenced,omitempty"`
}

// handleRoot answers 200 only while active and initialised: a standby (or a
// pod told active before it could serve) answers 503, so that traffic routed
// to the wrong pod is visible as a failure.
func (a *app) handleRoot(w http.ResponseWriter, _ *http.Request) {
	s := a.roles.State()
	st := status{Pod: a.pod, Role: string(s.Role), Epoch: s.Epoch, Group: s.Group, Since: s.Changed, Fenced: s.Fenced}
	if s.Role == role.Unknown {
		st.Role, st.Since = string(role.Standby), a.started
	}
	code := http.StatusServiceUnavailable
	if (s.Role == role.Active || a.opts.alwaysActive) && a.ready.Load() && !a.stopping.Load() {
		code = http.StatusOK
		st.Served = a.served.Add(1)
	} else {
		st.Served = a.served.Load()
	}
	b, err := json.Marshal(st)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_, _ = w.Write(append(b, '\n'))
}

func (a *app) handleReadyz(w http.ResponseWriter, _ *http.Request) {
	switch {
	case a.stopping.Load():
		text(w, http.StatusServiceUnavailable, "shutting down")
	case !a.ready.Load():
		text(w, http.StatusServiceUnavailable, "initialising")
	default:
		text(w, http.StatusOK, "ok")
	}
}

func text(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(code)
	_, _ = io.WriteString(w, msg+"\n")
}
