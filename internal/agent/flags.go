package agent

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"strconv"
	"time"

	"github.com/hapod/hapod/pkg/role"
)

// Options is what the command line and environment configure.
type Options struct {
	RoleAddr        string
	PodName         string
	PodUID          string
	RoleGroup       string
	RoleKeyDir      string
	RoleFile        string
	OnChange        string
	OnChangeTimeout time.Duration
	HTTPAddr        string
}

// envFallback names the environment variable each flag falls back to; the
// role flags use the same names as hapod-demo so one pod spec fits both.
var envFallback = map[string]string{
	"role-addr":         "ROLE_ADDR",
	"pod-name":          "POD_NAME",
	"pod-uid":           "POD_UID",
	"role-group":        "ROLE_GROUP",
	"role-key-dir":      "ROLE_KEY_DIR",
	"role-file":         "ROLE_FILE",
	"on-change":         "ON_CHANGE",
	"on-change-timeout": "ON_CHANGE_TIMEOUT",
	"http-addr":         "HTTP_ADDR",
}

// UsageError is a mistake on the command line or in the environment; the
// process exits 2 for it, as the flag package does.
type UsageError struct{ Err error }

func (e UsageError) Error() string { return e.Err.Error() + " (see hapod-agent -h)" }
func (e UsageError) Unwrap() error { return e.Err }

func newFlagSet(o *Options) *flag.FlagSet {
	fs := flag.NewFlagSet("hapod-agent", flag.ContinueOnError)
	// Errors are returned and printed once by main; usage only on -h.
	fs.SetOutput(io.Discard)
	fs.StringVar(&o.RoleAddr, "role-addr", fmt.Sprintf(":%d", role.DefaultPort), "UDP listen address for role messages from the hapod controller")
	fs.StringVar(&o.PodName, "pod-name", "", "this pod's name; role messages addressed to another pod are refused")
	fs.StringVar(&o.PodUID, "pod-uid", "", "this pod's UID (downward API metadata.uid); role messages for another UID are refused")
	fs.StringVar(&o.RoleGroup, "role-group", "", "this pod's group, namespace/name: role messages for another group are refused (optional)")
	fs.StringVar(&o.RoleKeyDir, "role-key-dir", "", "directory of this group's role-message keys (a mounted Secret, from hapod-controller -print-group-keys); empty: unauthenticated")
	fs.StringVar(&o.RoleFile, "role-file", "/run/hapod/role", "file the role is written to, atomically, on start, on every change and on exit (empty: none)")
	fs.StringVar(&o.OnChange, "on-change", "", "command run on each change, split at spaces and executed without a shell, with ROLE, EPOCH, CHANGED and FENCED in its environment (optional)")
	fs.DurationVar(&o.OnChangeTimeout, "on-change-timeout", 10*time.Second, "how long -on-change may run before its process group is killed")
	fs.StringVar(&o.HTTPAddr, "http-addr", "127.0.0.1:7480", "HTTP listen address for /role, /role/events, /healthz, /readyz and /metrics")
	return fs
}

// ParseOptions reads flags, then, for each flag not given, its environment
// variable. It returns flag.ErrHelp for -h.
func ParseOptions(args []string, getenv func(string) string) (Options, error) {
	var o Options
	fs := newFlagSet(&o)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return o, err
		}
		return o, UsageError{err}
	}
	if fs.NArg() > 0 {
		return o, UsageError{fmt.Errorf("unexpected arguments %q", fs.Args())}
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		env := envFallback[f.Name]
		if given[f.Name] || env == "" {
			return
		}
		if v := getenv(env); v != "" {
			if err := fs.Set(f.Name, v); err != nil {
				errs = append(errs, fmt.Errorf("%s=%q (for -%s): %w", env, v, f.Name, err))
			}
		}
	})
	if o.OnChangeTimeout <= 0 {
		errs = append(errs, fmt.Errorf("-on-change-timeout: must be positive, got %v", o.OnChangeTimeout))
	}
	for _, a := range []struct{ flag, addr string }{{"http-addr", o.HTTPAddr}, {"role-addr", o.RoleAddr}} {
		if err := checkAddr(a.addr); err != nil {
			errs = append(errs, fmt.Errorf("-%s %q: %w", a.flag, a.addr, err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		// One line on stderr, whatever the number of mistakes.
		return o, UsageError{errors.New(joinLine(errs))}
	}
	return o, nil
}

func joinLine(errs []error) string {
	s := ""
	for i, e := range errs {
		if i > 0 {
			s += "; "
		}
		s += e.Error()
	}
	return s
}

// checkAddr accepts host:port with a numeric port, host possibly empty.
func checkAddr(addr string) error {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return errors.New("want host:port, such as :7477 or 127.0.0.1:7480")
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return fmt.Errorf("bad port %q", port)
	}
	return nil
}

// PrintUsage writes -h's text.
func PrintUsage(w io.Writer) {
	fs := newFlagSet(&Options{})
	fs.SetOutput(w)
	fmt.Fprintln(w, "Usage: hapod-agent [flags]")
	fmt.Fprintln(w, "\nA role sidecar: relays the hapod controller's role messages to an app in any language")
	fmt.Fprintln(w, "as a file, a command and a local HTTP API. Treat role=unknown, or no agent, as standby.")
	fmt.Fprintln(w, "Each flag falls back to an environment variable (the flag wins):")
	fs.VisitAll(func(f *flag.Flag) { fmt.Fprintf(w, "  -%-17s %s\n", f.Name, envFallback[f.Name]) })
	fmt.Fprintln(w, "\nFlags:")
	fs.PrintDefaults()
}
