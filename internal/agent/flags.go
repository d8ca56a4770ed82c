package agent

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/hapod/hapod/internal/envflag"
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

	// AppHealth, AppHealthPeriod and AppHealthFailures are -app-health
	// (apphealth.go); AppHealth "" is no check.
	AppHealth         string
	AppHealthPeriod   time.Duration
	AppHealthFailures int
}

// envFallback names the environment variable each flag falls back to; the
// role flags use the same names as hapod-demo so one pod spec fits both.
var envFallback = map[string]string{
	"role-addr":           "ROLE_ADDR",
	"pod-name":            "POD_NAME",
	"pod-uid":             "POD_UID",
	"role-group":          "ROLE_GROUP",
	"role-key-dir":        "ROLE_KEY_DIR",
	"role-file":           "ROLE_FILE",
	"on-change":           "ON_CHANGE",
	"on-change-timeout":   "ON_CHANGE_TIMEOUT",
	"http-addr":           "HTTP_ADDR",
	"app-health":          "APP_HEALTH",
	"app-health-period":   "APP_HEALTH_PERIOD",
	"app-health-failures": "APP_HEALTH_FAILURES",
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
	fs.StringVar(&o.AppHealth, "app-health", "", "the app's health check, http://127.0.0.1:PORT/PATH (2xx or 3xx) or tcp://127.0.0.1:PORT: the role listener binds once it passes, and when -app-health-failures in a row fail the agent releases the role and exits, so a dead app fails over on its lease, not the kubelet's report (optional)")
	fs.DurationVar(&o.AppHealthPeriod, "app-health-period", 50*time.Millisecond, "how often -app-health is checked, and each check's timeout")
	fs.IntVar(&o.AppHealthFailures, "app-health-failures", 3, "how many -app-health checks in a row must fail before the agent gives the role up")
	return fs
}

// ParseOptions reads flags, then, for each flag not given, its environment
// variable. It returns flag.ErrHelp for -h.
func ParseOptions(args []string, getenv func(string) string) (Options, error) {
	var o Options
	fs := newFlagSet(&o)
	if err := envflag.Parse(fs, args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return o, err
		}
		return o, UsageError{err}
	}
	errs := envflag.Apply(fs, envFallback, getenv)
	if o.OnChangeTimeout <= 0 {
		errs = append(errs, fmt.Errorf("-on-change-timeout: must be positive, got %v", o.OnChangeTimeout))
	}
	if o.AppHealthPeriod <= 0 {
		errs = append(errs, fmt.Errorf("-app-health-period: must be positive, got %v", o.AppHealthPeriod))
	}
	if o.AppHealthFailures < 1 {
		errs = append(errs, fmt.Errorf("-app-health-failures: must be at least 1, got %d", o.AppHealthFailures))
	}
	if _, err := parseAppCheck(o.AppHealth, o.AppHealthPeriod, o.AppHealthFailures); err != nil {
		errs = append(errs, err)
	}
	for _, a := range []struct{ flag, addr string }{{"http-addr", o.HTTPAddr}, {"role-addr", o.RoleAddr}} {
		if err := envflag.CheckAddr(a.addr, ":7477 or 127.0.0.1:7480"); err != nil {
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

// PrintUsage writes -h's text.
func PrintUsage(w io.Writer) {
	fs := newFlagSet(&Options{})
	fs.SetOutput(w)
	fmt.Fprintln(w, "Usage: hapod-agent [flags]")
	fmt.Fprintln(w, "\nA role sidecar: relays the hapod controller's role messages to an app in any language")
	fmt.Fprintln(w, "as a file, a command and a local HTTP API. Treat role=unknown, or no agent, as standby.")
	fmt.Fprintln(w, "Each flag falls back to an environment variable (the flag wins):")
	envflag.WriteTable(w, fs, envFallback)
	fmt.Fprintln(w, "\nFlags:")
	fs.PrintDefaults()
}
