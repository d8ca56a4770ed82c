package appproc

import (
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hapod/hapod/internal/dev/bintest"
)

func TestMain(m *testing.M) {
	code := m.Run()
	bintest.Cleanup()
	os.Exit(code)
}

// A started app runs until it is killed; Kill returns once it is reaped,
// the exit is known to be expected, and OnExit ran before Done closed.
func TestKill(t *testing.T) {
	if testing.Short() {
		t.Skip("builds hapod-demo")
	}
	port := uint16(20000 + rand.IntN(40000))
	exited := make(chan struct{})
	p, err := Start(Options{
		Bin: bintest.Build(t, "github.com/hapod/hapod/cmd/hapod-demo"), Pod: "p", UID: "uid-p",
		RoleAddr: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port),
		HTTPAddr: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port+1),
		LogPath:  filepath.Join(t.TempDir(), "p.log"),
		OnExit:   func(*Proc) { close(exited) },
	})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.Done():
		t.Fatalf("exited by itself: %v", p.Err())
	case <-time.After(200 * time.Millisecond): // it runs; nothing to wait for
	}
	if p.Expected() {
		t.Error("an exit is expected before anyone asked for one")
	}
	at, err := p.Kill()
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-exited:
	default:
		t.Error("Done closed before OnExit ran")
	}
	if !p.Expected() || p.Err() == nil || at.IsZero() {
		t.Errorf("expected %v, err %v, killed at %v", p.Expected(), p.Err(), at)
	}
}
