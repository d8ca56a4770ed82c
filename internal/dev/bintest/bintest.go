package bintest

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/hapod/hapod/internal/dev/gobuild"
)

var builds struct {
	mu   sync.Mutex
	dir  string
	bins map[string]string
}

// Build builds the main package pkg (an import path, e.g.
// "github.com/hapod/hapod/cmd/hapod-controller") once per test process,
// without -race (it is the program under test, not the test), and returns
// the binary's path.
func Build(t testing.TB, pkg string) string {
	t.Helper()
	builds.mu.Lock()
	defer builds.mu.Unlock()
	if bin, ok := builds.bins[pkg]; ok {
		return bin
	}
	if builds.dir == "" {
		dir, err := os.MkdirTemp("", "hapod-bintest")
		if err != nil {
			t.Fatal(err)
		}
		builds.dir, builds.bins = dir, map[string]string{}
	}
	if err := gobuild.Build(t.Context(), "", builds.dir, pkg); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(builds.dir, filepath.Base(pkg))
	builds.bins[pkg] = bin
	return bin
}

// Buffer collects a process's output; safe for the process's copying
// goroutines and the test at once.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *Buffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *Buffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// FreeAddr returns a free TCP address on 127.0.0.1 for a process under
// test to bind (the port is released when FreeAddr returns).
func FreeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// Cleanup removes the binaries; call it from TestMain after m.Run.
func Cleanup() {
	builds.mu.Lock()
	defer builds.mu.Unlock()
	if builds.dir != "" {
		_ = os.RemoveAll(builds.dir)
	}
	builds.dir, builds.bins = "", nil
}

// String makes Buffer print its content in test logs.
var _ fmt.Stringer = (*Buffer)(nil)
