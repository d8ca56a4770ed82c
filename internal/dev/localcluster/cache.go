package localcluster

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"time"
)

// stamp records what a cached binary is; it is written only after a successful build.
type stamp struct {
	Component string    `json:"component"`
	Version   string    `json:"version"`
	SHA256    string    `json:"sha256"`
	GoVersion string    `json:"goVersion"`
	BuiltAt   time.Time `json:"builtAt"`
}

func stampPath(bin string) string { return bin + ".stamp" }

// writeStamp hashes bin and records it with component and version next to it.
func writeStamp(bin, component, version string) error {
	sum, err := fileSHA256(bin)
	if err != nil {
		return err
	}
	data, err := json.MarshalIndent(stamp{
		Component: component,
		Version:   version,
		SHA256:    sum,
		GoVersion: runtime.Version(),
		BuiltAt:   time.Now().UTC().Truncate(time.Second),
	}, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(stampPath(bin), append(data, '\n'), 0o644)
}

// verifyStamp returns nil if bin is an executable file whose stamp names component at
// version and whose sha256 matches the stamp; otherwise it says what is wrong, which
// means the binary must be rebuilt.
func verifyStamp(bin, component, version string) error {
	fi, err := os.Stat(bin)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("%s is not built", bin)
	case err != nil:
		return err
	case !fi.Mode().IsRegular():
		return fmt.Errorf("%s is not a regular file", bin)
	case fi.Mode().Perm()&0o111 == 0:
		return fmt.Errorf("%s is not executable", bin)
	}
	data, err := os.ReadFile(stampPath(bin))
	if err != nil {
		return fmt.Errorf("%s has no stamp (a build did not finish?)", bin)
	}
	var s stamp
	if err := json.Unmarshal(data, &s); err != nil {
		return fmt.Errorf("stamp of %s is corrupt: %w", bin, err)
	}
	if s.Component != component || s.Version != version {
		return fmt.Errorf("%s is %s %s, want %s %s", bin, s.Component, s.Version, component, version)
	}
	sum, err := fileSHA256(bin)
	if err != nil {
		return err
	}
	if sum != s.SHA256 {
		return fmt.Errorf("%s does not match its stamp (sha256 %s, stamp says %s): corrupt or half-written", bin, sum, s.SHA256)
	}
	return nil
}

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer func() { _ = f.Close() }()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("hash %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// RepoRoot returns the nearest directory at or above dir that holds a go.mod file.
func RepoRoot(dir string) (string, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d, nil
		}
		if filepath.Dir(d) == d {
			return "", fmt.Errorf("no go.mod at or above %s: run from inside the hapod repository or set the cache directory", dir)
		}
	}
}

// DefaultCacheDir returns .cache/cluster under the repository root found from the
// working directory.
func DefaultCacheDir() (string, error) {
	wd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	root, err := RepoRoot(wd)
	if err != nil {
		return "", err
	}
	return filepath.Join(root, ".cache", "cluster"), nil
}

func resolveCacheDir(dir string) (string, error) {
	if dir == "" {
		return DefaultCacheDir()
	}
	return filepath.Abs(dir)
}
