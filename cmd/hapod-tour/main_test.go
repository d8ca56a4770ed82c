package main

import (
	"bytes"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// Bad command lines fail before anything is built or started.
func TestUsageErrors(t *testing.T) {
	tests := []struct {
		args []string
		want string // in stderr
	}{
		{[]string{"-bogus"}, "flag provided but not defined: -bogus"},
		{[]string{"extra"}, `unexpected arguments ["extra"]`},
		{[]string{"-init-delay", "0s"}, "must be positive"},
		{[]string{"-not-ready-grace", "-1s"}, "must be positive"},
		{[]string{"-init-delay", "soon"}, "invalid value"},
	}
	for _, tc := range tests {
		var stdout, stderr bytes.Buffer
		if code := run(t.Context(), tc.args, &stdout, &stderr); code != exitUsage {
			t.Errorf("%q: exit %d, want %d", tc.args, code, exitUsage)
		}
		if !strings.Contains(stderr.String(), tc.want) {
			t.Errorf("%q: stderr %q lacks %q", tc.args, stderr.String(), tc.want)
		}
		if stdout.Len() > 0 {
			t.Errorf("%q: printed %q before failing", tc.args, stdout.String())
		}
	}
}

func TestHelp(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := run(t.Context(), []string{"-h"}, &stdout, &stderr); code != exitOK {
		t.Errorf("-h: exit %d", code)
	}
	if !strings.Contains(stderr.String(), "-kubeconfig") {
		t.Errorf("-h: usage %q lacks the flags", stderr.String())
	}
}

// Each run logs into a directory of its own; only the newest few are kept.
func TestNewLogDir(t *testing.T) {
	dir := t.TempDir()
	start := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	var made []string
	for i := range keepRuns + 2 {
		d, err := newLogDir(dir, start.Add(time.Duration(i)*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		made = append(made, d)
	}
	left, err := filepath.Glob(filepath.Join(dir, "run-*"))
	if err != nil {
		t.Fatal(err)
	}
	if want := made[2:]; !slices.Equal(left, want) {
		t.Fatalf("left %v, want the newest %d: %v", left, keepRuns, want)
	}
}
