package agent

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hapod/hapod/pkg/role"
)

// Run is main without the process: it parses args, relays the role until
// ctx is done, writes standby and returns nil after a clean shutdown.
func Run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	o, err := ParseOptions(args, getenv)
	if errors.Is(err, flag.ErrHelp) {
		PrintUsage(stdout)
		return nil
	}
	if err != nil {
		return err
	}
	a, err := New(ctx, o, slog.New(slog.NewTextHandler(stderr, nil)), stderr)
	if err != nil {
		if ctx.Err() != nil {
			return nil // stopped while waiting for the app: a clean stop
		}
		return err
	}
	return a.Serve(ctx)
}

// ExitCode maps Run's error to the process exit status.
func ExitCode(err error) int {
	var ue UsageError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ue):
		return 2
	default:
		return 1
	}
}

// Agent relays one role Listener's state.
type Agent struct {
	opts Options
	log  *slog.Logger
	m    *metrics

	roles  *role.Listener
	check  *appCheck // nil without -app-health
	httpLn net.Listener
	srv    *http.Server
	run    *runner // nil without -on-change

	mu      sync.Mutex
	cur     view
	changed chan struct{} // closed and replaced on every change: wakes waiters
	final   bool          // the shutdown's standby is published: nothing after it

	write      chan view // latest-value, buffer 1: the file writer's input
	writerDone chan struct{}
	stopWriter chan struct{}
	stopRunner chan struct{}

	quit      chan struct{} // closed at shutdown: ends long polls and event streams
	listening atomic.Bool   // the listener goroutine runs
	stopping  atomic.Bool
}

// New writes role=unknown, binds both sockets and starts relaying.
func New(ctx context.Context, o Options, log *slog.Logger, cmdOut io.Writer) (*Agent, error) {
	a := &Agent{
		opts: o, log: log, m: newMetrics(),
		changed: make(chan struct{}), write: make(chan view, 1),
		writerDone: make(chan struct{}), stopWriter: make(chan struct{}), stopRunner: make(chan struct{}), quit: make(chan struct{}),
	}
	a.cur = view{Role: "unknown", Changed: time.Now().UTC()}
	a.m.setRole(a.cur)
	// Before the listener binds: the file exists, role=unknown, from the
	// moment the agent is up, so an app tells "agent up" from "no agent".
	if o.RoleFile != "" {
		if err := writeFileAtomic(o.RoleFile, a.cur.fileText()); err != nil {
			return nil, fmt.Errorf("-role-file: %w", err)
		}
	}
	if o.OnChange != "" {
		a.run = newRunner(o.OnChange, o.OnChangeTimeout, cmdOut, log, a.m)
	}
	var err error
	if a.check, err = parseAppCheck(o.AppHealth, o.AppHealthPeriod, o.AppHealthFailures); err != nil {
		return nil, err
	}
	if a.check != nil {
		// Not before the app is up: an agent restarted beside a dead app
		// must not be granted the role again.
		log.Info("Waiting for the app", "check", o.AppHealth)
		if err := a.check.waitHealthy(ctx); err != nil {
			return nil, fmt.Errorf("waiting for the app (%s): %w", o.AppHealth, err)
		}
	}
	// Closed by shutdown, not by ctx, so that the standby file is written
	// before the listener tells the controller it is standby.
	a.roles, err = role.Listen(context.WithoutCancel(ctx), role.Config{
		Addr:     o.RoleAddr,
		PodUID:   o.PodUID,
		PodName:  o.PodName,
		Group:    o.RoleGroup,
		KeyDir:   o.RoleKeyDir,
		OnChange: a.roleChanged,
	})
	if err != nil {
		return nil, listenError("role-addr", o.RoleAddr, err)
	}
	a.listening.Store(true)
	go func() {
		// Changes is closed once the listener goroutine exits: /healthz.
		for range a.roles.Changes() {
		}
		a.listening.Store(false)
	}()
	a.httpLn, err = net.Listen("tcp", o.HTTPAddr)
	if err != nil {
		_ = a.roles.Close()
		return nil, listenError("http-addr", o.HTTPAddr, err)
	}
	a.srv = &http.Server{
		Handler:           a.handler(),
		ReadHeaderTimeout: 5 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	go a.writer()
	if a.run != nil {
		go a.run.loop(a.stopRunner)
	}
	return a, nil
}

func listenError(flagName, addr string, err error) error {
	if errors.Is(err, syscall.EADDRINUSE) {
		return fmt.Errorf("-%s %s: address already in use (is another process listening there?)", flagName, addr)
	}
	return fmt.Errorf("-%s %s: %w", flagName, addr, err)
}

// HTTPAddr is the bound HTTP address, useful with a ":0" -http-addr.
func (a *Agent) HTTPAddr() string { return a.httpLn.Addr().String() }

// RoleAddr is the bound UDP address, useful with a ":0" -role-addr.
func (a *Agent) RoleAddr() string { return a.roles.Addr().String() }

// roleChanged runs on the listener's goroutine, which holds further
// datagrams (renewals among them) while it runs: it only records the state
// and hands it to the writer.
func (a *Agent) roleChanged(s role.State) {
	if a.publish(func(seq uint64) view { return viewOf(s, seq) }, false) {
		a.m.changes.Inc()
	}
}

// publish makes the next view current, wakes the HTTP waiters and queues
// the view for the file and the command. Once the shutdown's standby (final)
// is published nothing else is, not even a change the listener delivered
// concurrently (the release on Close among them): it reports whether v was.
func (a *Agent) publish(next func(seq uint64) view, final bool) bool {
	a.mu.Lock()
	if a.final {
		a.mu.Unlock()
		return false
	}
	a.final = final
	v := next(a.cur.Seq + 1)
	a.cur = v
	close(a.changed)
	a.changed = make(chan struct{})
	a.mu.Unlock()
	a.m.setRole(v)
	// Latest value: replace an unwritten view rather than wait.
	for {
		select {
		case a.write <- v:
			return true
		default:
		}
		select {
		case <-a.write:
		default:
		}
	}
}

// current returns the view and a channel closed at the next change.
func (a *Agent) current() (view, <-chan struct{}) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.cur, a.changed
}

// writer writes the file, then starts the command: the file is the truth,
// the command a notification of it.
func (a *Agent) writer() {
	defer close(a.writerDone)
	for {
		select {
		case v := <-a.write:
			a.apply(v)
		case <-a.stopWriter:
			select {
			case v := <-a.write:
				a.apply(v)
			default:
			}
			return
		}
	}
}

func (a *Agent) apply(v view) {
	if a.opts.RoleFile != "" {
		if err := writeFileAtomic(a.opts.RoleFile, v.fileText()); err != nil {
			a.m.fileErrors.Inc()
			a.log.Error("Role file not written", "file", a.opts.RoleFile, "role", v.Role, "epoch", v.Epoch, "err", err)
		}
	}
	if a.run != nil {
		a.run.submit(v)
	}
	a.log.Info("Role", "role", v.Role, "epoch", v.Epoch, "fenced", v.Fenced, "seq", v.Seq)
}

// Serve serves until ctx is done, then shuts down: standby is written (file
// and command) before the listener releases the role to the controller, so
// an app never holds "active" once its agent is gone.
func (a *Agent) Serve(ctx context.Context) error {
	serveErr := make(chan error, 1)
	go func() { serveErr <- a.srv.Serve(a.httpLn) }()
	appDied := make(chan error, 1)
	if a.check != nil {
		watchCtx, cancel := context.WithCancel(ctx)
		defer cancel()
		go func() {
			if err := a.check.watch(watchCtx); err != nil {
				appDied <- err
			}
		}()
	}
	a.log.Info("Serving", "http", a.HTTPAddr(), "role", a.RoleAddr(), "file", a.opts.RoleFile,
		"pod", a.opts.PodName, "podUID", a.opts.PodUID, "authenticated", a.roles.Authenticated())
	select {
	case <-ctx.Done():
		return a.shutdown(ctx)
	case err := <-serveErr:
		return errors.Join(fmt.Errorf("http server: %w", err), a.shutdown(ctx))
	case err := <-appDied:
		// Standby to the app and a release to the controller, as on
		// SIGTERM; then exit, and the kubelet's restart waits for the app.
		a.log.Error("The app is down: giving the role up", "err", err)
		return errors.Join(fmt.Errorf("%w; the role was released", err), a.shutdown(ctx))
	}
}

func (a *Agent) shutdown(ctx context.Context) error {
	a.log.Info("Shutting down")
	a.stopping.Store(true)
	a.publish(func(seq uint64) view {
		return view{Role: string(role.Standby), Epoch: a.cur.Epoch, Changed: time.Now().UTC(), Seq: seq}
	}, true)
	close(a.stopWriter)
	<-a.writerDone
	if a.run != nil {
		close(a.stopRunner)
		<-a.run.done
	}
	err := a.roles.Close()
	close(a.quit)
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if e := a.srv.Shutdown(sctx); e != nil {
		err = errors.Join(err, fmt.Errorf("http shutdown: %w", e))
	}
	a.log.Info("Stopped")
	return err
}
