// Package envflag gives each flag of a command's flag.FlagSet an
// environment variable to fall back to, the way the project's pod binaries
// (hapod-demo, hapod-agent, hapod-file-app) are configured: a container
// sets env (often from the downward API), a person types flags, and a flag
// given wins over its variable.
package envflag

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"strconv"
)

// Parse parses args into fs and refuses positional arguments. It returns
// flag.ErrHelp as it is, for -h.
func Parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	return nil
}

// Apply sets each flag of fs that the command line did not give from its
// variable in env (flag name to variable name), where getenv returns it
// non-empty. It returns one error per value the flag refused, naming the
// variable, its value and the flag.
func Apply(fs *flag.FlagSet, env map[string]string, getenv func(string) string) []error {
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		name := env[f.Name]
		if given[f.Name] || name == "" {
			return
		}
		if v := getenv(name); v != "" {
			if err := fs.Set(f.Name, v); err != nil {
				errs = append(errs, fmt.Errorf("%s=%q (for -%s): %w", name, v, f.Name, err))
			}
		}
	})
	return errs
}

// WriteTable writes, a line each, every flag of fs and the variable it
// falls back to, for -h.
func WriteTable(w io.Writer, fs *flag.FlagSet, env map[string]string) {
	width := 0
	fs.VisitAll(func(f *flag.Flag) { width = max(width, len(f.Name)) })
	fs.VisitAll(func(f *flag.Flag) { fmt.Fprintf(w, "  -%-*s %s\n", width+1, f.Name, env[f.Name]) })
}

// CheckAddr accepts host:port with a numeric port, host possibly empty;
// example is a valid address the error shows.
func CheckAddr(addr, example string) error {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return errors.New("want host:port, such as " + example)
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return fmt.Errorf("bad port %q", port)
	}
	return nil
}
