package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/hapod/hapod/internal/envflag"
	"github.com/hapod/hapod/pkg/role"
)

// options is what the command line and environment configure.
type options struct {
	httpAddr  string
	roleAddr  string
	podName   string
	podUID    string
	initDelay time.Duration
	readyFile string
	// roleRecords, if set, is appended one JSON line per applied role change
	// (internal/dev/rolerecord), for tools that follow the app's role.
	roleRecords string
	// roleKeyDir and roleGroup are role.Config's KeyDir and Group.
	roleKeyDir string
	roleGroup  string
	// alwaysActive serves as active without any controller: the baselines
	// that measure Kubernetes without hapod.
	alwaysActive bool
}

// envFallback names the environment variable each flag falls back to.
var envFallback = map[string]string{
	"http-addr":     "HTTP_ADDR",
	"role-addr":     "ROLE_ADDR",
	"pod-name":      "POD_NAME",
	"pod-uid":       "POD_UID",
	"init-delay":    "INIT_DELAY",
	"ready-file":    "READY_FILE",
	"role-records":  "ROLE_RECORDS",
	"role-key-dir":  "ROLE_KEY_DIR",
	"role-group":    "ROLE_GROUP",
	"always-active": "ALWAYS_ACTIVE",
}

// usageError is a mistake on the command line or in the environment; the
// process exits 2 for it, as the flag package does.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() + " (see hapod-demo -h)" }
func (e usageError) Unwrap() error { return e.err }

func newFlagSet(o *options) *flag.FlagSet {
	fs := flag.NewFlagSet("hapod-demo", flag.ContinueOnError)
	// Errors are returned and printed once by main; usage only on -h.
	fs.SetOutput(io.Discard)
	fs.StringVar(&o.httpAddr, "http-addr", ":8080", "HTTP listen address")
	fs.StringVar(&o.roleAddr, "role-addr", fmt.Sprintf(":%d", role.DefaultPort), "UDP listen address for role messages from the hapod controller")
	fs.StringVar(&o.podName, "pod-name", "", "this pod's name; role messages addressed to another pod are refused")
	fs.StringVar(&o.podUID, "pod-uid", "", "this pod's UID (downward API metadata.uid); role messages for another UID are refused")
	fs.DurationVar(&o.initDelay, "init-delay", 3*time.Second, "simulated start-up time; /readyz and GET / fail until it has passed")
	fs.StringVar(&o.readyFile, "ready-file", "", "file to create once ready and remove on exit (optional)")
	fs.StringVar(&o.roleKeyDir, "role-key-dir", "", "directory of this group's role-message keys (a mounted Secret, from hapod-controller -print-group-keys); empty: unauthenticated")
	fs.StringVar(&o.roleGroup, "role-group", "", "this pod's group, namespace/name: role messages for another group are refused (optional)")
	fs.BoolVar(&o.alwaysActive, "always-active", false, "answer GET / as active whatever the role: for measuring Kubernetes without hapod (no standby, restarts in place)")
	fs.StringVar(&o.roleRecords, "role-records", "", "file to append one JSON line to per role change: at, pod, role, epoch, group (optional)")
	return fs
}

// parseOptions reads flags, then, for each flag not given, its environment
// variable.
func parseOptions(args []string, getenv func(string) string) (options, error) {
	var o options
	fs := newFlagSet(&o)
	if err := envflag.Parse(fs, args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return o, err
		}
		return o, usageError{err}
	}
	errs := envflag.Apply(fs, envFallback, getenv)
	if o.initDelay < 0 {
		errs = append(errs, fmt.Errorf("-init-delay: must not be negative, got %v", o.initDelay))
	}
	for _, a := range []struct{ flag, addr string }{{"http-addr", o.httpAddr}, {"role-addr", o.roleAddr}} {
		if err := envflag.CheckAddr(a.addr, ":8080 or 10.0.0.5:8080"); err != nil {
			errs = append(errs, fmt.Errorf("-%s %q: %w", a.flag, a.addr, err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return o, usageError{err}
	}
	return o, nil
}

func printUsage(w io.Writer) {
	fs := newFlagSet(&options{})
	fs.SetOutput(w)
	fmt.Fprintln(w, "Usage: hapod-demo [flags]")
	fmt.Fprintln(w, "\nA demo application for hapod: GET / answers 200 while this pod is active, 503 while standby.")
	fmt.Fprintln(w, "Each flag falls back to an environment variable (the flag wins):")
	envflag.WriteTable(w, fs, envFallback)
	fmt.Fprintln(w, "\nFlags:")
	fs.PrintDefaults()
}
