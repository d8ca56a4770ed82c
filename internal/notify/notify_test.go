package notify

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hapod/hapod/internal/wire"
	"github.com/hapod/hapod/pkg/role"
)

func newNotifier(t *testing.T, cfg Config) (*Notifier, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	cfg.ListenAddr = "127.0.0.1:0"
	cfg.Registerer = reg
	n, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Close() })
	return n, reg
}

func addrPort(t *testing.T, a net.Addr) netip.AddrPort {
	t.Helper()
	return a.(*net.UDPAddr).AddrPort()
}

func listener(t *testing.T, cfg role.Config) *role.Listener {
	t.Helper()
	cfg.Addr = "127.0.0.1:0"
	l, err := role.Listen(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	return l
}

func target(addr netip.AddrPort, r string, epoch uint64) Target {
	return Target{Addr: addr, Group: "ns/g", Pod: "p-0", UID: "uid-0", Role: r, Epoch: epoch}
}

// blackhole is a bound socket that never reads: datagrams to it vanish
// without the ICMP error a closed port would cause, like a frozen pod.
func blackhole(t *testing.T) netip.AddrPort {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return addrPort(t, c.LocalAddr())
}

// fakePod is a scripted pod: reply decides what to send back for the n-th
// datagram (counting from 1); nil replies send nothing.
func fakePod(t *testing.T, reply func(n int, m wire.Message) [][]byte) netip.AddrPort {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	go func() {
		buf := make([]byte, wire.MaxSize+1)
		for n := 1; ; n++ {
			sz, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			m, err := wire.Decode(buf[:sz])
			if err != nil {
				t.Errorf("notifier sent an undecodable datagram: %v", err)
				return
			}
			for _, b := range reply(n, m) {
				_, _ = c.WriteToUDPAddrPort(b, from)
			}
		}
	}()
	return addrPort(t, c.LocalAddr())
}

func ackOf(t *testing.T, m wire.Message, status string) []byte {
	m.Type, m.Status = wire.TypeAck, status
	b, err := wire.Encode(m)
	if err != nil {
		t.Error(err)
	}
	return b
}

// counter reads one series from the registry; labels are name/value pairs.
func counter(t *testing.T, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
						found = true
					}
				}
				if !found {
					continue series
				}
			}
			if h := m.GetHistogram(); h != nil {
				return float64(h.GetSampleCount())
			}
			return m.GetCounter().GetValue()
		}
	}
	t.Fatalf("no series %s%v", name, labels)
	return 0
}

func TestSendAck(t *testing.T) {
	n, reg := newNotifier(t, Config{})
	l := listener(t, role.Config{PodUID: "uid-0"})
	before := time.Now()
	res := n.Send(t.Context(), target(addrPort(t, l.Addr()), wire.RoleActive, 1))
	// An active role is a lease grant: two round trips, the first fetching
	// the nonce that the second echoes.
	if !res.Acked || res.Status != wire.StatusOK || res.Attempts != 2 || res.Err != nil {
		t.Fatalf("result %+v", res)
	}
	if res.Latency <= 0 || res.Latency > time.Second {
		t.Fatalf("latency %v", res.Latency)
	}
	if res.Nonce == 0 || !res.Lease || res.Echoed.Before(before) || res.NonceAt.Before(res.Echoed) {
		t.Fatalf("lease fields of %+v", res)
	}
	s := l.State()
	if s.Role != role.Active || s.Epoch != 1 || !s.Expiry.After(time.Now()) || s.Expiry.After(res.Echoed.Add(DefaultLeaseTTL)) {
		t.Fatalf("pod state %+v: want active with a lease ending by %v", s, res.Echoed.Add(DefaultLeaseTTL))
	}
	// A standby role grants nothing: one round trip.
	if r := n.Send(t.Context(), target(addrPort(t, l.Addr()), wire.RoleStandby, 2)); !r.Acked || r.Attempts != 1 || !r.Echoed.IsZero() {
		t.Fatalf("standby result %+v", r)
	}
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"hapod_notify_sends_total", nil, 2},
		{"hapod_notify_retries_total", nil, 0},
		{"hapod_notify_acks_total", []string{"status", "ok"}, 2},
		{"hapod_notify_acks_total", []string{"status", "retry"}, 1},
		{"hapod_notify_acks_total", []string{"status", "stale"}, 0},
		{"hapod_notify_ack_latency_seconds", nil, 2},
	} {
		if got := counter(t, reg, c.name, c.labels...); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
}

// A frozen pod must not slow the failover of a healthy one.
func TestDeadTargetDoesNotDelayOthers(t *testing.T) {
	n, reg := newNotifier(t, Config{Deadline: 500 * time.Millisecond})
	l := listener(t, role.Config{})
	live, dead := addrPort(t, l.Addr()), blackhole(t)

	var wg sync.WaitGroup
	var deadRes Result
	var deadEnd time.Time
	wg.Add(1)
	go func() {
		defer wg.Done()
		deadRes = n.Send(t.Context(), target(dead, wire.RoleStandby, 1))
		deadEnd = time.Now()
	}()
	// Wait (bounded) until the dead Send is retrying.
	for deadline := time.Now().Add(5 * time.Second); counter(t, reg, "hapod_notify_retries_total") < 1; {
		if time.Now().After(deadline) {
			t.Fatal("the dead Send never retried")
		}
		time.Sleep(time.Millisecond)
	}
	liveRes := n.Send(t.Context(), target(live, wire.RoleActive, 1))
	liveEnd := time.Now()
	wg.Wait()

	if !liveRes.Acked {
		t.Fatalf("live send %+v", liveRes)
	}
	if !liveEnd.Before(deadEnd) {
		t.Fatal("live send finished after the dead one")
	}
	if deadRes.Acked || !errors.Is(deadRes.Err, ErrTimeout) {
		t.Fatalf("dead send %+v", deadRes)
	}
	// Sends at 0, 5, 15, 35, 75, 155, 315ms, then the 500ms deadline: at
	// most 7; a loaded machine may manage fewer, but it retried.
	if deadRes.Attempts < 2 || deadRes.Attempts > 7 {
		t.Fatalf("dead send made %d attempts, want 2 to 7", deadRes.Attempts)
	}
	if got := counter(t, reg, "hapod_notify_timeouts_total"); got != 1 {
		t.Fatalf("timeouts %v", got)
	}
}

func TestRetryUntilAcked(t *testing.T) {
	n, reg := newNotifier(t, Config{InitialBackoff: time.Millisecond})
	// Loses the first two datagrams, as a congested network might.
	addr := fakePod(t, func(i int, m wire.Message) [][]byte {
		if i < 3 {
			return nil
		}
		return [][]byte{ackOf(t, m, wire.StatusOK)}
	})
	res := n.Send(t.Context(), target(addr, wire.RoleActive, 1))
	if !res.Acked || res.Attempts != 3 {
		t.Fatalf("result %+v", res)
	}
	if got := counter(t, reg, "hapod_notify_retries_total"); got != 2 {
		t.Fatalf("retries %v", got)
	}
}

// Refusals end the Send: resending the same message gets the same answer.
func TestRefusalEndsSend(t *testing.T) {
	tests := []struct {
		name   string
		cfg    role.Config
		first  *Target // sent before, to put the pod in a state
		tgt    func(Target) Target
		status string
	}{
		{"stale", role.Config{}, &Target{Role: wire.RoleActive, Epoch: 5},
			func(t Target) Target { t.Epoch = 4; return t }, wire.StatusStale},
		{"wrong pod", role.Config{PodUID: "uid-new"}, nil,
			func(t Target) Target { t.UID = "uid-old"; return t }, wire.StatusWrongPod},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n, reg := newNotifier(t, Config{})
			l := listener(t, tt.cfg)
			base := target(addrPort(t, l.Addr()), wire.RoleActive, 1)
			if tt.first != nil {
				f := base
				f.Role, f.Epoch = tt.first.Role, tt.first.Epoch
				if r := n.Send(t.Context(), f); !r.Acked {
					t.Fatalf("setup send %+v", r)
				}
			}
			res := n.Send(t.Context(), tt.tgt(base))
			if res.Acked || res.Status != tt.status || res.Attempts != 1 || res.Err != nil {
				t.Fatalf("result %+v", res)
			}
			if got := counter(t, reg, "hapod_notify_acks_total", "status", tt.status); got != 1 {
				t.Fatalf("acks{status=%s} = %v", tt.status, got)
			}
		})
	}
}

func TestBadAcksIgnored(t *testing.T) {
	n, reg := newNotifier(t, Config{})
	addr := fakePod(t, func(_ int, m wire.Message) [][]byte {
		other := m
		other.Seq++             // an ack for a Send that is not waiting
		rb, _ := wire.Encode(m) // a role message where an ack belongs
		return [][]byte{
			[]byte("garbage"),
			[]byte(`{"v":9,"type":"ack"}`),
			rb,
			ackOf(t, other, wire.StatusOK),
			ackOf(t, m, wire.StatusOK),
		}
	})
	res := n.Send(t.Context(), target(addr, wire.RoleStandby, 2))
	if !res.Acked || res.Attempts != 1 {
		t.Fatalf("result %+v", res)
	}
	for _, c := range []struct {
		name   string
		labels []string
	}{
		{"hapod_notify_malformed_acks_total", []string{"reason", "malformed"}},
		{"hapod_notify_malformed_acks_total", []string{"reason", "version"}},
		{"hapod_notify_malformed_acks_total", []string{"reason", "not-ack"}},
		{"hapod_notify_unmatched_acks_total", nil},
	} {
		if got := counter(t, reg, c.name, c.labels...); got != 1 {
			t.Errorf("%s%v = %v, want 1", c.name, c.labels, got)
		}
	}
}

func TestContextCanceled(t *testing.T) {
	n, _ := newNotifier(t, Config{})
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Millisecond)
	defer cancel()
	start := time.Now()
	res := n.Send(ctx, target(blackhole(t), wire.RoleActive, 1))
	if !errors.Is(res.Err, context.DeadlineExceeded) || time.Since(start) > time.Second {
		t.Fatalf("result %+v after %v", res, time.Since(start))
	}
	if res := n.Send(ctx, target(blackhole(t), wire.RoleActive, 1)); res.Attempts != 0 || res.Err == nil {
		t.Fatalf("send on a done ctx: %+v", res)
	}
}

func TestInvalidTarget(t *testing.T) {
	n, _ := newNotifier(t, Config{})
	good := target(blackhole(t), wire.RoleActive, 1)
	for name, tgt := range map[string]Target{
		"no uid":     {Addr: good.Addr, Group: "ns/g", Pod: "p", Role: wire.RoleActive},
		"bad role":   {Addr: good.Addr, Group: "ns/g", Pod: "p", UID: "u", Role: "leader"},
		"no address": {Group: "ns/g", Pod: "p", UID: "u", Role: wire.RoleActive},
	} {
		if res := n.Send(t.Context(), tgt); res.Err == nil || res.Attempts != 0 {
			t.Errorf("%s: %+v", name, res)
		}
	}
}

// Close releases every waiting Send, and a waiting Send costs no goroutine
// of its own.
func TestCloseReleasesSends(t *testing.T) {
	n, _ := newNotifier(t, Config{Deadline: time.Minute})
	dead := blackhole(t)
	const senders = 200
	base := runtime.NumGoroutine()
	results := make(chan Result, senders)
	for i := range senders {
		go func() { results <- n.Send(t.Context(), target(dead, wire.RoleStandby, uint64(i))) }()
	}
	for {
		n.mu.Lock()
		waiting := len(n.waiters)
		n.mu.Unlock()
		if waiting == senders {
			break
		}
		time.Sleep(time.Millisecond)
	}
	if extra := runtime.NumGoroutine() - base; extra > senders+2 {
		t.Errorf("%d goroutines for %d Sends", extra, senders)
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	for range senders {
		select {
		case r := <-results:
			if !errors.Is(r.Err, ErrClosed) {
				t.Fatalf("result %+v", r)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("Send still blocked after Close")
		}
	}
	if r := n.Send(t.Context(), target(dead, wire.RoleActive, 1)); !errors.Is(r.Err, ErrClosed) {
		t.Fatalf("Send after Close: %+v", r)
	}
}

// A mass failover: every pod has its own listener and its own Send caller,
// all through one Notifier.
func TestMassFailover(t *testing.T) {
	// Every Send is a lease grant, two round trips; with 1,000 listeners in
	// this process, on two cores shared with other work and under the race
	// detector, the burst can take longer than the default 3s deadline to
	// drain (BenchmarkMassFailover measures it without the race detector).
	n, reg := newNotifier(t, Config{Deadline: 15 * time.Second})
	const pods = 1000
	addrs := make([]netip.AddrPort, pods)
	for i := range addrs {
		addrs[i] = addrPort(t, listener(t, role.Config{}).Addr())
	}
	var wg sync.WaitGroup
	results := make([]Result, pods)
	start := time.Now()
	for i := range pods {
		wg.Go(func() {
			tgt := target(addrs[i], wire.RoleActive, 1)
			// This test is about the Notifier under a burst, not about
			// leases: a grant's second round trip must land within the TTL
			// of the first, and 1,000 listeners and their Sends on two
			// loaded cores under the race detector may take longer than
			// the default 150ms.
			tgt.TTL = time.Minute
			results[i] = n.Send(t.Context(), tgt)
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	var worst time.Duration
	for i, r := range results {
		if !r.Acked {
			t.Fatalf("pod %d: %+v", i, r)
		}
		worst = max(worst, r.Latency)
	}
	t.Logf("%d Sends acked in %v (slowest ack %v), %v retries", pods, elapsed, worst,
		counter(t, reg, "hapod_notify_retries_total"))
	n.mu.Lock()
	defer n.mu.Unlock()
	if len(n.waiters) != 0 {
		t.Fatalf("%d waiters left behind", len(n.waiters))
	}
}

func TestRegisterTwiceFails(t *testing.T) {
	reg := prometheus.NewRegistry()
	n, err := New(Config{ListenAddr: "127.0.0.1:0", Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	if _, err := New(Config{ListenAddr: "127.0.0.1:0", Registerer: reg}); err == nil {
		t.Fatal("second New on one registry succeeded")
	}
}
