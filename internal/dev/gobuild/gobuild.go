// Package gobuild builds this module's commands for the dev tooling that runs
// them as separate processes (the tour, the bench, tests through bintest):
// one go build per caller, so a binary is built once and run many times.
package gobuild

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// Build compiles the main packages pkgs (import paths, or paths relative to
// dir such as ./cmd/hapod-controller) into outDir, one binary each named
// after its package's directory, without -race: they are the programs under
// study, not the code under test.
func Build(ctx context.Context, dir, outDir string, pkgs ...string) error {
	return build(ctx, dir, outDir, nil, nil, pkgs...)
}

func build(ctx context.Context, dir, outDir string, env, flags []string, pkgs ...string) error {
	goBin, err := exec.LookPath("go")
	if err != nil {
		return errors.New("the go command is not in PATH")
	}
	args := append(append([]string{"build", "-o", outDir + string(filepath.Separator)}, flags...), pkgs...)
	cmd := exec.CommandContext(ctx, goBin, args...)
	cmd.Dir = dir
	if env != nil {
		cmd.Env = append(os.Environ(), env...)
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go build %v: %w\n%s", pkgs, err, out.String())
	}
	return nil
}

// Static is Build with cgo off, so the binaries are static and run in a
// container image that holds nothing else (the real nodes' images).
func Static(ctx context.Context, dir, outDir string, pkgs ...string) error {
	return build(ctx, dir, outDir, []string{"CGO_ENABLED=0"}, nil, pkgs...)
}

// Release is Static for linux/goarch, built as the Dockerfile builds the
// published images: no file system paths and no symbol table in the
// binaries.
func Release(ctx context.Context, dir, outDir, goarch string, pkgs ...string) error {
	return build(ctx, dir, outDir, []string{"CGO_ENABLED=0", "GOOS=linux", "GOARCH=" + goarch},
		[]string{"-trimpath", "-ldflags=-s -w"}, pkgs...)
}
