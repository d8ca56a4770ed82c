package main

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

// The commands that need no cluster answer plainly; the others are covered by the
// internal/dev/localcluster tests and by make cluster / make cluster-down.
func TestRun(t *testing.T) {
	cache := t.TempDir()
	tests := []struct {
		name       string
		args       []string
		wantErr    string // "" means success
		wantStdout string
	}{
		// No command: usage.
		{name: "no command", args: nil, wantErr: "usage"},
		// A typo is named.
		{name: "unknown command", args: []string{"upp"}, wantErr: `unknown command "upp"`},
		// env without a cluster says how to start one.
		{name: "env without cluster", args: []string{"env", "-cache", cache}, wantErr: "no cluster is running; start one with 'make cluster'"},
		// down without a cluster is not an error.
		{name: "down without cluster", args: []string{"down", "-cache", cache}, wantStdout: "no cluster is running\n"},
		// Stray arguments are refused.
		{name: "stray argument", args: []string{"down", "now"}, wantErr: "unexpected arguments"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			err := run(t.Context(), tt.args, &stdout, &stderr)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("run: %v", err)
			case tt.wantErr == "usage" && !errors.Is(err, errUsage):
				t.Fatalf("run: %v, want the usage", err)
			case tt.wantErr != "" && tt.wantErr != "usage" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("run: %v, want an error containing %q", err, tt.wantErr)
			}
			if stdout.String() != tt.wantStdout {
				t.Errorf("stdout %q, want %q", stdout.String(), tt.wantStdout)
			}
		})
	}
}
