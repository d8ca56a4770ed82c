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

// noResend is a Config under which a Send never resends within a test, so
// that exact attempt and metric counts do not depend on how busy the
// machine is: the first ack, however late, ends the Send.
var noResend = Config{InitialBackoff: time.Minute, Deadline: time.Minute}

// waitFor polls cond until it holds, failing the test after a generous
// deadline.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
	}
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
	n, reg := newNotifier(t, noResend)
	l := listener(t, role.Config{PodUID: "uid-0"})
	before := time.Now()
	res := n.Send(t.Context(), target(addrPort(t, l.Addr()), wire.RoleActive, 1))
	// An active role is a lease grant: two round trips, the first fetching
	// the nonce that the second echoes.
	if !res.Acked || res.Status != wire.StatusOK || res.Attempts != 2 || res.Err != nil {
		t.Fatalf("result %+v", res)
	}
	if res.Latency <= 0 {
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

// A frozen pod must not slow the failover of a healthy one: the live Send
// is acked while the dead one is still retrying.
func TestDeadTargetDoesNotDelayOthers(t *testing.T) {
	n, reg := newNotifier(t, Config{Deadline: time.Minute})
	l := listener(t, role.Config{})
	live, dead := addrPort(t, l.Addr()), blackhole(t)

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	deadDone := make(chan Result, 1)
	go func() { deadDone <- n.Send(ctx, target(dead, wire.RoleStandby, 1)) }()
	waitFor(t, "the dead Send retries", func() bool { return counter(t, reg, "hapod_notify_retries_total") >= 1 })

	if liveRes := n.Send(t.Context(), target(live, wire.RoleActive, 1)); !liveRes.Acked {
		t.Fatalf("live send %+v", liveRes)
	}
	select {
	case r := <-deadDone:
		t.Fatalf("the dead Send ended before the live one was acked: %+v", r)
	default:
	}
	cancel()
	r := <-deadDone
	if r.Acked || !errors.Is(r.Err, context.Canceled) || r.Attempts < 2 {
		t.Fatalf("dead send %+v", r)
	}
}

// A pod that never answers ends its Send at the deadline, after retries.
func TestTimeout(t *testing.T) {
	n, reg := newNotifier(t, Config{Deadline: 300 * time.Millisecond})
	res := n.Send(t.Context(), target(blackhole(t), wire.RoleActive, 1))
	if res.Acked || !errors.Is(res.Err, ErrTimeout) || res.Attempts < 1 {
		t.Fatalf("result %+v", res)
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
	// At least the third datagram; more if its ack was slower than the
	// next backoff, which a busy machine may make it.
	if !res.Acked || res.Attempts < 3 {
		t.Fatalf("result %+v", res)
	}
	if got := counter(t, reg, "hapod_notify_retries_total"); got != float64(res.Attempts-1) {
		t.Fatalf("retries %v after %d attempts", got, res.Attempts)
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
			n, reg := newNotifier(t, noResend)
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
	n, reg := newNotifier(t, noResend)
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
	n, _ := newNotifier(t, Config{Deadline: time.Minute})
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Millisecond)
	defer cancel()
	res := n.Send(ctx, target(blackhole(t), wire.RoleActive, 1))
	if !errors.Is(res.Err, context.DeadlineExceeded) {
		t.Fatalf("result %+v", res)
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
	waitFor(t, "every Send waits", func() bool {
		n.mu.Lock()
		defer n.mu.Unlock()
		return len(n.waiters) == senders
	})
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
		case <-time.After(30 * time.Second):
			t.Fatal("Send still blocked after Close")
		}
	}
	if r := n.Send(t.Context(), target(dead, wire.RoleActive, 1)); !errors.Is(r.Err, ErrClosed) {
		t.Fatalf("Send after Close: %+v", r)
	}
}

// A mass failover: every pod has its own listener and its own Send caller,
// all through one Notifier, with the default deadline. Every pod must hold
// its role afterwards, also on a machine whose cores are busy with other
// work: before resends waited for the reader (readerQueue), this failed
// there every time, with acks queued for seconds behind duplicates.
func TestMassFailover(t *testing.T) {
	// Every Send is a lease grant, two round trips; with 1,000 listeners in
	// this process, on two cores shared with other work and under the race
	// detector, the burst can take longer than the default 3s deadline to
	// drain (BenchmarkMassFailover measures it without the race detector).
	n, reg := newNotifier(t, Config{Deadline: 15 * time.Second})
	const pods = 1000
	addrs := make([]netip.AddrPort, pods)
	ls := make([]*role.Listener, pods)
	for i := range addrs {
		ls[i] = listener(t, role.Config{})
		addrs[i] = addrPort(t, ls[i].Addr())
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
	failed := 0
	for i, r := range results {
		if !r.Acked {
			if failed++; failed <= 3 {
				t.Errorf("pod %d: %+v", i, r)
			}
		}
		worst = max(worst, r.Latency)
	}
	if failed > 0 {
		t.Errorf("%d of %d Sends not acked", failed, pods)
	}
	for i, l := range ls {
		if s := l.State(); s.Role != role.Active || s.Epoch != 1 {
			t.Fatalf("pod %d holds %+v", i, s)
		}
	}
	t.Logf("%d Sends acked in %v (slowest ack %v), %v retries, %v resends held back", pods, elapsed, worst,
		counter(t, reg, "hapod_notify_retries_total"), counter(t, reg, "hapod_notify_deferred_resends_total"))
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

func TestResendWait(t *testing.T) {
	const deadline = 3 * time.Second
	tests := []struct {
		name         string
		backoff, rto time.Duration
		want         time.Duration
	}{
		// Before any ack, or while acks are quick: the backoff schedule.
		{"no samples yet", 5 * time.Millisecond, 0, 5 * time.Millisecond},
		{"fast acks", 40 * time.Millisecond, time.Millisecond, 40 * time.Millisecond},
		// Acks measured to take longer than the backoff: waiting less
		// would only add a duplicate.
		{"slow acks", 5 * time.Millisecond, 300 * time.Millisecond, 300 * time.Millisecond},
		// However slow the acks were, a few attempts fit in the deadline.
		{"capped at a quarter of the deadline", 5 * time.Millisecond, 10 * time.Second, deadline / 4},
		{"backoff above the cap kept", time.Second, 10 * time.Second, time.Second},
	}
	for _, tc := range tests {
		if got := resendWait(tc.backoff, tc.rto, deadline); got != tc.want {
			t.Errorf("%s: resendWait(%v, %v) = %v, want %v", tc.name, tc.backoff, tc.rto, got, tc.want)
		}
	}
}

func TestResendUseful(t *testing.T) {
	const deadline = 3 * time.Second
	tests := []struct {
		name    string
		drained bool
		since   time.Duration
		want    bool
	}{
		// The reader emptied its queue after the datagram went out and the
		// ack was not there: lost, resend.
		{"drained", true, 10 * time.Millisecond, true},
		// The ack may be waiting in our own queue: a resend would queue a
		// duplicate ack in front of the acks other Sends wait for.
		{"reader behind", false, 10 * time.Millisecond, false},
		{"reader behind for long", false, 700 * time.Millisecond, false},
		// A reader that never catches up must not stop all repair.
		{"reader behind a quarter of the deadline", false, deadline / 4, true},
	}
	for _, tc := range tests {
		if got := resendUseful(tc.drained, tc.since, deadline); got != tc.want {
			t.Errorf("%s: resendUseful(%v, %v) = %v, want %v", tc.name, tc.drained, tc.since, got, tc.want)
		}
	}
}

func TestReaderQueue(t *testing.T) {
	var q readerQueue
	q.base = time.Now()
	q.markEmpty()
	sent := time.Now()
	if !q.drainedSince(sent) {
		t.Error("a reader waiting on an empty queue is not behind")
	}
	q.markRead()
	if q.drainedSince(sent) {
		t.Error("a reader reading since before the send is behind")
	}
	waitFor(t, "the clock moves past the send", func() bool { return time.Since(sent) > 0 })
	q.markEmpty()
	q.markRead()
	if !q.drainedSince(sent) {
		t.Error("the queue was empty after the send")
	}
}

// The round-trip estimate follows RFC 6298: the first sample sets it, a
// jump raises it quickly, steady samples bring it back down.
func TestRTTEstimator(t *testing.T) {
	var e rttEstimator
	if got := e.timeout(); got != 0 {
		t.Fatalf("no samples: %v", got)
	}
	e.observe(100 * time.Millisecond)
	if got := e.timeout(); got != 300*time.Millisecond {
		t.Fatalf("after one sample: %v, want srtt + 4*srtt/2", got)
	}
	for range 100 {
		e.observe(time.Millisecond)
	}
	if got := e.timeout(); got > 2*time.Millisecond {
		t.Fatalf("after steady 1ms samples: %v", got)
	}
	e.observe(time.Second)
	if got := e.timeout(); got < time.Second {
		t.Fatalf("after a 1s sample: %v, want at least 1s", got)
	}
}
