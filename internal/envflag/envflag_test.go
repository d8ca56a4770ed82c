package envflag

import (
	"errors"
	"flag"
	"io"
	"strings"
	"testing"
	"time"
)

func newSet() (*flag.FlagSet, *string, *time.Duration) {
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	addr := fs.String("addr", ":1", "")
	wait := fs.Duration("wait", time.Second, "")
	return fs, addr, wait
}

var env = map[string]string{"addr": "ADDR", "wait": "WAIT"}

func TestApply(t *testing.T) {
	for _, tc := range []struct {
		name     string
		args     []string
		vars     map[string]string
		addr     string
		wait     time.Duration
		parseErr string // "" for none
		errs     []string
	}{
		{name: "defaults", addr: ":1", wait: time.Second},
		{name: "env", vars: map[string]string{"ADDR": ":2", "WAIT": "3s"}, addr: ":2", wait: 3 * time.Second},
		{name: "the flag wins", args: []string{"-addr", ":9"}, vars: map[string]string{"ADDR": ":2"}, addr: ":9", wait: time.Second},
		{name: "empty env is unset", vars: map[string]string{"ADDR": ""}, addr: ":1", wait: time.Second},
		{name: "bad env names the variable and the flag", vars: map[string]string{"WAIT": "soon"},
			errs: []string{`WAIT="soon" (for -wait): `}},
		{name: "positional arguments refused", args: []string{"x"}, parseErr: `unexpected arguments ["x"]`},
		{name: "unknown flag", args: []string{"-nope"}, parseErr: "flag provided but not defined: -nope"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fs, addr, wait := newSet()
			err := Parse(fs, tc.args)
			if tc.parseErr != "" {
				if err == nil || err.Error() != tc.parseErr {
					t.Fatalf("Parse: %v, want %q", err, tc.parseErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			errs := Apply(fs, env, func(k string) string { return tc.vars[k] })
			if len(errs) != len(tc.errs) {
				t.Fatalf("errors %v, want %q", errs, tc.errs)
			}
			for i, e := range errs {
				if !strings.HasPrefix(e.Error(), tc.errs[i]) {
					t.Errorf("error %q, want it to start with %q", e, tc.errs[i])
				}
			}
			// A value the flag refused leaves it as flag.Value.Set left it.
			if len(tc.errs) == 0 && (*addr != tc.addr || *wait != tc.wait) {
				t.Errorf("addr %q wait %v, want %q %v", *addr, *wait, tc.addr, tc.wait)
			}
		})
	}
}

func TestParseHelp(t *testing.T) {
	fs, _, _ := newSet()
	if err := Parse(fs, []string{"-h"}); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("-h: %v, want flag.ErrHelp", err)
	}
}

func TestCheckAddr(t *testing.T) {
	for addr, want := range map[string]string{
		":8080":          "",
		"127.0.0.1:8080": "",
		"[::1]:1":        "",
		"8080":           "want host:port, such as :80",
		":http":          `bad port "http"`,
		":70000":         `bad port "70000"`,
	} {
		err := CheckAddr(addr, ":80")
		if got := ""; err != nil {
			got = err.Error()
			if got != want {
				t.Errorf("CheckAddr(%q) = %q, want %q", addr, got, want)
			}
		} else if want != "" {
			t.Errorf("CheckAddr(%q) accepted, want %q", addr, want)
		}
	}
}

func TestWriteTable(t *testing.T) {
	fs, _, _ := newSet()
	var b strings.Builder
	WriteTable(&b, fs, env)
	if want := "  -addr  ADDR\n  -wait  WAIT\n"; b.String() != want {
		t.Errorf("table %q, want %q", b.String(), want)
	}
}
