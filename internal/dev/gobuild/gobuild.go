// Package gobuild builds this module's commands for the dev tooling that runs
// them as separate processes (the tour, the bench, tests through bintest):
// one go build per caller, so a binary is built once and run many times.
package gobuild

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
)

// Build compiles the main packages pkgs (import paths, or paths relative to
// dir such as ./cmd/hapod-controller) into outDir, one binary each named
// after its package's directory, without -race: they are the programs under
// study, not the code under test.
func Build(ctx context.Context, dir, outDir string, pkgs ...string) error {
	goBin, err := exec.LookPath("go")
	if err != nil {
		return errors.New("the go command is not in PATH")
	}
	args := append([]string{"build", "-o", outDir + string(filepath.Separator)}, pkgs...)
	cmd := exec.CommandContext(ctx, goBin, args...)
	cmd.Dir = dir
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go build %v: %w\n%s", pkgs, err, out.String())
	}
	return nil
}
