package helmbin

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/hapod/hapod/internal/dev/localcluster"
)

// Version is the helm release the chart is tested with.
const Version = "v3.22.0"

// module is the main package go install builds.
const module = "helm.sh/helm/v3/cmd/helm"

// KubeVersion is the Kubernetes minor version helm assumes without a cluster
// (helm template, helm lint): that of the client-go helm is built with, set
// at link time as helm's Makefile does. Without it helm assumes v1.20.
const KubeVersion = "1.37"

// ldflags are those of helm's release build (its Makefile): the version
// helm reports and the Kubernetes version it assumes, neither of which go
// install alone sets.
var ldflags = strings.Join([]string{
	"-s", "-w",
	"-X helm.sh/helm/v3/internal/version.version=" + Version,
	"-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=" + strings.Split(KubeVersion, ".")[0],
	"-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=" + strings.Split(KubeVersion, ".")[1],
	"-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=" + strings.Split(KubeVersion, ".")[0],
	"-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=" + strings.Split(KubeVersion, ".")[1],
}, " ")

// DefaultCacheDir returns .cache/tools under the repository root found from
// the working directory.
func DefaultCacheDir() (string, error) {
	wd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	root, err := localcluster.RepoRoot(wd)
	if err != nil {
		return "", err
	}
	return filepath.Join(root, ".cache", "tools"), nil
}

// Path returns where Build puts helm under cacheDir.
func Path(cacheDir string) string {
	return filepath.Join(cacheDir, "helm-"+Version, "helm")
}

// Build returns the path of helm Version under cacheDir (DefaultCacheDir if
// empty), building it first unless a binary that reports Version is there.
// The binary is built into a fresh directory and renamed into place, so a
// build that fails or is killed leaves nothing that a later Build would take
// for finished, and concurrent Builds (several test binaries) both succeed.
func Build(ctx context.Context, cacheDir string) (string, error) {
	if cacheDir == "" {
		var err error
		if cacheDir, err = DefaultCacheDir(); err != nil {
			return "", err
		}
	}
	bin := Path(cacheDir)
	if err := check(ctx, bin); err == nil {
		return bin, nil
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		return "", errors.New("the go command is not in PATH")
	}
	dir := filepath.Dir(bin)
	// Whatever is there is not helm Version (or not whole): it would stop
	// the rename below.
	if err := os.RemoveAll(dir); err != nil {
		return "", err
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return "", err
	}
	tmp, err := os.MkdirTemp(filepath.Dir(dir), ".helm-build-")
	if err != nil {
		return "", err
	}
	defer func() { _ = os.RemoveAll(tmp) }()
	if err := os.Chmod(tmp, 0o755); err != nil {
		return "", err
	}
	cmd := exec.CommandContext(ctx, goBin, "install", "-trimpath", "-ldflags="+ldflags, module+"@"+Version)
	// Outside the repository, so that hapod's go.mod plays no part; the
	// toolchain is the one installed (no download of another Go).
	cmd.Dir = tmp
	cmd.Env = append(os.Environ(), "GOBIN="+tmp, "GOTOOLCHAIN=local", "GOFLAGS=-mod=mod", "CGO_ENABLED=0")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("go install %s@%s: %w\n%s", module, Version, err, out.String())
	}
	if err := check(ctx, filepath.Join(tmp, "helm")); err != nil {
		return "", err
	}
	// A directory renamed over an existing one fails; whoever lost the race
	// checks the winner's.
	if err := os.Rename(tmp, dir); err != nil {
		if cerr := check(ctx, bin); cerr != nil {
			return "", fmt.Errorf("install helm into %s: %w (and the one there: %w)", dir, err, cerr)
		}
	}
	return bin, nil
}

// check runs helm version and compares it with Version.
func check(ctx context.Context, bin string) error {
	out, err := exec.CommandContext(ctx, bin, "version", "--template", "{{.Version}}").Output()
	if err != nil {
		return fmt.Errorf("%s version: %w", bin, err)
	}
	if got := strings.TrimSpace(string(out)); got != Version {
		return fmt.Errorf("%s is helm %s, want %s", bin, got, Version)
	}
	return nil
}
