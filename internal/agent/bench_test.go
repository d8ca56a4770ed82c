package agent

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/hapod/hapod/internal/notify"
	"github.com/hapod/hapod/internal/wire"
	"github.com/hapod/hapod/pkg/role"
)

// envMarkDir makes the test binary a tiny on-change command: it writes the
// wall-clock time it started running into MARKDIR/EPOCH and exits, so the
// benchmark sees when the command really ran, not only when it was forked.
const envMarkDir = "HAPOD_AGENT_BENCH_MARK_DIR"

func TestMain(m *testing.M) {
	if dir := os.Getenv(envMarkDir); dir != "" {
		now := time.Now().UnixNano()
		p := filepath.Join(dir, os.Getenv("EPOCH"))
		if err := os.WriteFile(p+".tmp", []byte(strconv.FormatInt(now, 10)), 0o644); err != nil {
			os.Exit(1)
		}
		if err := os.Rename(p+".tmp", p); err != nil {
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func percentile(d []time.Duration, p float64) float64 {
	s := slices.Clone(d)
	slices.Sort(s)
	return float64(s[min(len(s)-1, int(p*float64(len(s))))].Nanoseconds())
}

// BenchmarkAddedLatency measures what the agent's hop costs: from the real
// controller-side sender's Send to (base) a plain pkg/role Listener's
// Changes receiving the state, (file) the agent's role file showing it after
// the rename, and (cmd) the agent's on-change command running. The file and
// the marker are polled in a tight loop, so their numbers include up to one
// poll (a read, microseconds).
//
// Sub-benchmarks: the role file on the test's temporary directory (a disk,
// where the fsync costs), and on /dev/shm (tmpfs, like the example's
// emptyDir medium Memory), when there is one.
func BenchmarkAddedLatency(b *testing.B) {
	b.Run("disk", func(b *testing.B) { benchAddedLatency(b, b.TempDir()) })
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		b.Run("tmpfs", func(b *testing.B) {
			dir, err := os.MkdirTemp("/dev/shm", "hapod-agent-bench-")
			if err != nil {
				b.Skip(err)
			}
			b.Cleanup(func() { _ = os.RemoveAll(dir) })
			benchAddedLatency(b, dir)
		})
	}
}

func benchAddedLatency(b *testing.B, dir string) {
	n := sender(b)
	base, err := role.Listen(b.Context(), role.Config{Addr: "127.0.0.1:0", PodUID: "uid-0", PodName: "p-0", Group: group, KeyDir: podKeyDir(b)})
	if err != nil {
		b.Fatal(err)
	}
	defer base.Close()
	marks := b.TempDir()
	b.Setenv(envMarkDir, marks)
	o := testOptions(b)
	o.OnChange = os.Args[0]
	o.RoleFile = filepath.Join(dir, "role")
	a, _, _ := startAgent(b, o)
	baseTarget := notify.Target{Addr: addrOf(b, base.Addr().String()), Group: group, Pod: "p-0", UID: "uid-0", Role: wire.RoleStandby}
	agentTarget := target(a, wire.RoleStandby, 0)

	var baseD, fileD, cmdD []time.Duration
	for i := 0; b.Loop(); i++ {
		epoch := uint64(i + 1)

		baseTarget.Epoch = epoch
		t0 := time.Now()
		go n.Send(context.Background(), baseTarget)
		for s := range base.Changes() {
			if s.Epoch == epoch {
				break
			}
		}
		baseD = append(baseD, time.Since(t0))

		agentTarget.Epoch = epoch
		want := fmt.Appendf(nil, "epoch=%d\n", epoch)
		t0 = time.Now()
		go n.Send(context.Background(), agentTarget)
		deadline := t0.Add(30 * time.Second)
		for {
			if c, err := os.ReadFile(o.RoleFile); err == nil && bytes.Contains(c, want) {
				break
			}
			if time.Now().After(deadline) {
				b.Fatal("role file not written")
			}
		}
		fileD = append(fileD, time.Since(t0))
		mark := filepath.Join(marks, strconv.FormatUint(epoch, 10))
		for {
			if c, err := os.ReadFile(mark); err == nil {
				ns, err := strconv.ParseInt(string(c), 10, 64)
				if err != nil {
					b.Fatal(err)
				}
				cmdD = append(cmdD, time.Duration(ns-t0.UnixNano()))
				break
			}
			if time.Now().After(deadline) {
				b.Fatal("on-change command did not run")
			}
		}
	}
	for _, m := range []struct {
		name string
		d    []time.Duration
	}{{"base", baseD}, {"file", fileD}, {"cmd", cmdD}} {
		b.ReportMetric(percentile(m.d, 0.50), m.name+"-p50-ns")
		b.ReportMetric(percentile(m.d, 0.99), m.name+"-p99-ns")
	}
}

// BenchmarkWriteRoleFile is the file write alone (temp file, fsync,
// rename): what the on-change command's start waits for after the change.
func BenchmarkWriteRoleFile(b *testing.B) {
	v := view{Role: "active", Epoch: 7, Changed: time.Now()}
	dirs := map[string]string{"disk": b.TempDir()}
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		d, err := os.MkdirTemp("/dev/shm", "hapod-agent-bench-")
		if err == nil {
			b.Cleanup(func() { _ = os.RemoveAll(d) })
			dirs["tmpfs"] = d
		}
	}
	for _, name := range []string{"disk", "tmpfs"} {
		dir, ok := dirs[name]
		if !ok {
			continue
		}
		b.Run(name, func(b *testing.B) {
			p := filepath.Join(dir, "role")
			for b.Loop() {
				if err := writeFileAtomic(p, v.fileText()); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
