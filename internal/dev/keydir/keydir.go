// Package keydir writes role-message key directories the way the kubelet
// writes a Secret volume, for tests and the tour: the files live in a
// timestamped directory that a "..data" symlink points to, each key is a
// symlink through "..data", and an update swaps "..data" atomically (a
// rename over it), so readers see the old or the new set, never a mix.
package keydir

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"

	"github.com/hapod/hapod/internal/rolekey"
)

var generation atomic.Uint64

// Write makes dir hold exactly keys (by key id, raw bytes, written in
// base64) and, if current is not empty, a "current" file naming it.
func Write(dir string, keys map[string][]byte, current string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	gen := fmt.Sprintf("..%d_%d", os.Getpid(), generation.Add(1))
	tsDir := filepath.Join(dir, gen)
	if err := os.Mkdir(tsDir, 0o755); err != nil {
		return err
	}
	files := map[string]string{}
	for kid, k := range keys {
		files[kid] = rolekey.Encode(k) + "\n"
	}
	if current != "" {
		files[rolekey.CurrentFile] = current + "\n"
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(tsDir, name), []byte(content), 0o644); err != nil {
			return err
		}
	}
	old, _ := os.Readlink(filepath.Join(dir, "..data"))
	tmp := filepath.Join(dir, "..data_tmp")
	_ = os.Remove(tmp)
	if err := os.Symlink(gen, tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
		return err
	}
	// The user-visible names: added for new files, removed for gone ones.
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if name := e.Name(); !strings.HasPrefix(name, ".") {
			if _, keep := files[name]; !keep {
				_ = os.Remove(filepath.Join(dir, name))
			}
		}
	}
	for name := range files {
		link := filepath.Join(dir, name)
		if _, err := os.Lstat(link); err == nil {
			continue
		}
		if err := os.Symlink(filepath.Join("..data", name), link); err != nil {
			return err
		}
	}
	if old != "" && old != gen {
		return os.RemoveAll(filepath.Join(dir, old))
	}
	return nil
}
