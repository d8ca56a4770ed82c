package udprelay_test

import (
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/hapod/hapod/internal/dev/udprelay"
)

// patience bounds every wait for a datagram or a counter: far more than
// loopback needs, so that only a real failure reaches it.
const patience = 10 * time.Second

var loopback = netip.AddrFrom4([4]byte{127, 0, 0, 1})

// datagram is one datagram read by a test socket.
type datagram struct {
	b    string
	from netip.AddrPort
}

// endpoint is a test socket: a controller, or an application that echoes.
type endpoint struct {
	conn *net.UDPConn
	got  chan datagram
}

func newEndpoint(t *testing.T, echo bool) *endpoint {
	t.Helper()
	c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(loopback, 0)))
	if err != nil {
		t.Fatal(err)
	}
	e := &endpoint{conn: c, got: make(chan datagram, 1024)}
	done := make(chan struct{})
	t.Cleanup(func() { _ = c.Close(); <-done })
	go func() {
		defer close(done)
		buf := make([]byte, 64<<10)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			if echo {
				_, _ = c.WriteToUDPAddrPort(buf[:n], from)
			}
			select {
			case e.got <- datagram{string(buf[:n]), from}:
			default:
				t.Errorf("endpoint %s: more than %d datagrams unread", e.addr(), cap(e.got))
			}
		}
	}()
	return e
}

func (e *endpoint) addr() netip.AddrPort { return e.conn.LocalAddr().(*net.UDPAddr).AddrPort() }

func (e *endpoint) send(t *testing.T, to netip.AddrPort, msgs ...string) {
	t.Helper()
	for _, m := range msgs {
		if _, err := e.conn.WriteToUDPAddrPort([]byte(m), to); err != nil {
			t.Fatal(err)
		}
	}
}

// recv returns the next n datagrams.
func (e *endpoint) recv(t *testing.T, n int) []datagram {
	t.Helper()
	timeout := time.NewTimer(patience)
	defer timeout.Stop()
	var out []datagram
	for len(out) < n {
		select {
		case d := <-e.got:
			out = append(out, d)
		case <-timeout.C:
			t.Fatalf("endpoint %s: %d of %d datagrams after %v: %v", e.addr(), len(out), n, patience, out)
		}
	}
	return out
}

func payloads(ds []datagram) []string {
	var out []string
	for _, d := range ds {
		out = append(out, d.b)
	}
	return out
}

func numbered(prefix string, n int) []string {
	var out []string
	for i := range n {
		out = append(out, fmt.Sprintf("%s%03d", prefix, i))
	}
	return out
}

func newRelay(t *testing.T, app netip.AddrPort, seed uint64) *udprelay.Relay {
	t.Helper()
	r, err := udprelay.New(udprelay.Config{App: app, Seed: seed})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return r
}

func setFaults(t *testing.T, r *udprelay.Relay, d udprelay.Direction, f udprelay.Faults) {
	t.Helper()
	if err := r.SetFaults(d, f); err != nil {
		t.Fatal(err)
	}
}

// waitFor polls cond, a read of counters, until it holds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(patience); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
	}
}

// A clean relay passes datagrams both ways in order; the application sees
// them from the relay, and the controller gets the answers from the front
// address it sent to (which is what the controller checks an ack against).
func TestForwardsBothWays(t *testing.T) {
	app, ctl := newEndpoint(t, true), newEndpoint(t, false)
	r := newRelay(t, app.addr(), 1)
	msgs := numbered("m", 10)
	ctl.send(t, r.Addr(), msgs...)
	atApp := app.recv(t, len(msgs))
	back := ctl.recv(t, len(msgs))
	if !slices.Equal(payloads(atApp), msgs) || !slices.Equal(payloads(back), msgs) {
		t.Fatalf("app got %v, controller got %v, sent %v", payloads(atApp), payloads(back), msgs)
	}
	for _, d := range back {
		if d.from != r.Addr() {
			t.Fatalf("reply from %s, want the front address %s", d.from, r.Addr())
		}
	}
	for _, d := range atApp {
		if d.from == ctl.addr() || d.from == r.Addr() {
			t.Fatalf("app sees the datagram from %s: not an upstream socket of the relay", d.from)
		}
	}
	waitFor(t, "the counters add up", func() bool {
		st := r.Stats()
		return st.ToApp.Received == 10 && st.ToApp.Forwarded == 10 && st.ToController.Forwarded == 10
	})
}

// Each controller address gets its own upstream socket, so the answers to
// one controller's datagrams never go to another (a restarted controller,
// or two replicas).
func TestTwoControllers(t *testing.T) {
	app := newEndpoint(t, true)
	c1, c2 := newEndpoint(t, false), newEndpoint(t, false)
	r := newRelay(t, app.addr(), 1)
	c1.send(t, r.Addr(), "one")
	c2.send(t, r.Addr(), "two")
	if got := c1.recv(t, 1); got[0].b != "one" {
		t.Fatalf("controller 1 got %q", got[0].b)
	}
	if got := c2.recv(t, 1); got[0].b != "two" {
		t.Fatalf("controller 2 got %q", got[0].b)
	}
	if a := app.recv(t, 2); a[0].from == a[1].from {
		t.Fatalf("both controllers' datagrams reach the app from %s", a[0].from)
	}
}

// Loss 1 drops every datagram of its direction, and nothing of it arrives
// later: after Reset, the next datagram is the first to arrive.
func TestLossDropsAll(t *testing.T) {
	t.Run("to-app", func(t *testing.T) {
		app, ctl := newEndpoint(t, true), newEndpoint(t, false)
		r := newRelay(t, app.addr(), 2)
		setFaults(t, r, udprelay.ToApp, udprelay.Faults{Loss: 1})
		ctl.send(t, r.Addr(), numbered("lost", 20)...)
		waitFor(t, "20 dropped", func() bool { return r.Stats().ToApp.Dropped == 20 })
		r.Reset()
		ctl.send(t, r.Addr(), "marker")
		if got := app.recv(t, 1)[0].b; got != "marker" {
			t.Fatalf("app got %q first, want the marker", got)
		}
		waitFor(t, "the counters add up", func() bool {
			st := r.Stats().ToApp
			return st.Forwarded == 1 && st.Received == 21 && st.Dropped == 20
		})
	})
	t.Run("to-controller", func(t *testing.T) {
		app, ctl := newEndpoint(t, true), newEndpoint(t, false)
		r := newRelay(t, app.addr(), 2)
		setFaults(t, r, udprelay.ToController, udprelay.Faults{Loss: 1})
		ctl.send(t, r.Addr(), numbered("m", 5)...)
		app.recv(t, 5)
		waitFor(t, "5 answers dropped", func() bool { return r.Stats().ToController.Dropped == 5 })
		r.Reset()
		ctl.send(t, r.Addr(), "marker")
		if got := ctl.recv(t, 1)[0].b; got != "marker" {
			t.Fatalf("controller got %q first, want the marker", got)
		}
	})
}

// Dup 1 writes every datagram twice.
func TestDuplicateDoubles(t *testing.T) {
	app, ctl := newEndpoint(t, true), newEndpoint(t, false)
	r := newRelay(t, app.addr(), 3)
	setFaults(t, r, udprelay.ToApp, udprelay.Faults{Dup: 1})
	msgs := numbered("d", 10)
	ctl.send(t, r.Addr(), msgs...)
	got := payloads(app.recv(t, 20))
	for _, m := range msgs {
		if n := count(got, m); n != 2 {
			t.Fatalf("%s arrived %d times: %v", m, n, got)
		}
	}
	ctl.recv(t, 20) // each copy is answered
	waitFor(t, "the counters add up", func() bool {
		st := r.Stats()
		return st.ToApp.Forwarded == 10 && st.ToApp.Duplicated == 10 && st.ToController.Forwarded == 20
	})
}

func count(s []string, v string) int {
	n := 0
	for _, x := range s {
		if x == v {
			n++
		}
	}
	return n
}

// Reordering changes the order and loses nothing: held datagrams come out
// after a later one, or when their own hold ends.
func TestReorderLosesNothing(t *testing.T) {
	t.Run("released by a later datagram", func(t *testing.T) {
		app, ctl := newEndpoint(t, false), newEndpoint(t, false)
		r := newRelay(t, app.addr(), 4)
		// A hold far longer than the test: only later datagrams release
		// the held ones, so what arrives depends on the seed alone.
		setFaults(t, r, udprelay.ToApp, udprelay.Faults{Reorder: 0.5, ReorderMax: time.Hour})
		msgs := numbered("r", 30)
		ctl.send(t, r.Addr(), msgs...)
		waitFor(t, "all 30 read", func() bool { return r.Stats().ToApp.Received == 30 })
		setFaults(t, r, udprelay.ToApp, udprelay.Faults{})
		ctl.send(t, r.Addr(), "flush") // releases whatever is still held
		got := payloads(app.recv(t, 31))
		sent := append(slices.Clone(msgs), "flush")
		if held := r.Stats().ToApp.Reordered; held == 0 || slices.Equal(got, sent) {
			t.Fatalf("%d held, order %v", held, got)
		}
		slices.Sort(got)
		slices.Sort(sent)
		if !slices.Equal(got, sent) {
			t.Fatalf("got %v, want %v in some order", got, sent)
		}
	})
	t.Run("released by the hold's end", func(t *testing.T) {
		app, ctl := newEndpoint(t, false), newEndpoint(t, false)
		r := newRelay(t, app.addr(), 5)
		setFaults(t, r, udprelay.ToApp, udprelay.Faults{Reorder: 1, ReorderMax: 5 * time.Millisecond})
		msgs := numbered("h", 10)
		ctl.send(t, r.Addr(), msgs...)
		got := payloads(app.recv(t, 10))
		slices.Sort(got)
		if !slices.Equal(got, msgs) {
			t.Fatalf("got %v", got)
		}
		waitFor(t, "the counters add up", func() bool {
			st := r.Stats().ToApp
			return st.Reordered == 10 && st.Forwarded == 10
		})
	})
}

// Cut drops both ways; uncut restores the path.
func TestCut(t *testing.T) {
	app, ctl := newEndpoint(t, true), newEndpoint(t, false)
	r := newRelay(t, app.addr(), 6)
	r.Cut(true)
	ctl.send(t, r.Addr(), numbered("cut", 5)...)
	waitFor(t, "5 dropped to the app", func() bool { return r.Stats().ToApp.Dropped == 5 })
	// A replay reaches the app past the cut; its answer does not cross.
	if n, err := r.Replay(1); n != 1 || err != nil {
		t.Fatalf("replay: %d, %v", n, err)
	}
	replayed := app.recv(t, 1)[0].b
	waitFor(t, "the answer dropped", func() bool { return r.Stats().ToController.Dropped == 1 })

	r.Cut(false)
	ctl.send(t, r.Addr(), "marker")
	if got := app.recv(t, 1)[0].b; got != "marker" {
		t.Fatalf("app got %q after the replayed %q, want the marker", got, replayed)
	}
	if got := ctl.recv(t, 1)[0].b; got != "marker" {
		t.Fatalf("controller got %q first, want the marker", got)
	}
}

// A datagram already delayed when the pod is cut is dropped too.
func TestCutDropsInFlight(t *testing.T) {
	app, ctl := newEndpoint(t, false), newEndpoint(t, false)
	r := newRelay(t, app.addr(), 6)
	setFaults(t, r, udprelay.ToApp, udprelay.Faults{Delay: 300 * time.Millisecond})
	ctl.send(t, r.Addr(), "in-flight")
	waitFor(t, "the datagram queued", func() bool { return r.Stats().ToApp.Received == 1 })
	r.Cut(true)
	waitFor(t, "the datagram's fate", func() bool {
		st := r.Stats().ToApp
		return st.Forwarded+st.Dropped == 1
	})
	if r.Stats().ToApp.Forwarded == 1 {
		t.Skip("the delay ran out before the cut: the machine is too slow for this check")
	}
	r.Reset()
	ctl.send(t, r.Addr(), "marker")
	if got := app.recv(t, 1)[0].b; got != "marker" {
		t.Fatalf("app got %q, want the marker", got)
	}
}

// Replay resends captured datagrams, byte for byte, out of their order,
// and the app's answers reach the controller.
func TestReplay(t *testing.T) {
	app, ctl := newEndpoint(t, true), newEndpoint(t, false)
	r := newRelay(t, app.addr(), 7)
	msgs := numbered("c", 5)
	ctl.send(t, r.Addr(), msgs...)
	app.recv(t, 5)
	ctl.recv(t, 5)
	var captured []string
	for _, b := range r.Captured() {
		captured = append(captured, string(b))
	}
	if !slices.Equal(captured, msgs) {
		t.Fatalf("captured %v", captured)
	}
	n, err := r.Replay(3)
	if n != 3 || err != nil {
		t.Fatalf("replay: %d, %v", n, err)
	}
	again := payloads(app.recv(t, 3))
	var pos []int
	for _, b := range again {
		i := slices.Index(msgs, b)
		if i < 0 || slices.Contains(pos, i) {
			t.Fatalf("replayed %v: not 3 distinct captured datagrams", again)
		}
		pos = append(pos, i)
	}
	if slices.IsSorted(pos) {
		t.Fatalf("replayed in the captured order: %v", again)
	}
	if back := payloads(ctl.recv(t, 3)); !slices.Equal(back, again) {
		t.Fatalf("controller got %v, the app answered %v", back, again)
	}
	if st := r.Stats().ToApp; st.Replayed != 3 {
		t.Fatalf("replayed %d", st.Replayed)
	}
}

// The capture keeps the newest Config.Capture datagrams.
func TestCaptureBound(t *testing.T) {
	app, ctl := newEndpoint(t, false), newEndpoint(t, false)
	r, err := udprelay.New(udprelay.Config{App: app.addr(), Capture: 3})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	ctl.send(t, r.Addr(), numbered("k", 5)...)
	app.recv(t, 5)
	var got []string
	for _, b := range r.Captured() {
		got = append(got, string(b))
	}
	if want := numbered("k", 5)[2:]; !slices.Equal(got, want) {
		t.Fatalf("captured %v, want %v", got, want)
	}
}

// SendToApp reaches the app from a socket of its own, and ForgedReply
// reads the app's answer there.
func TestSendToApp(t *testing.T) {
	app, ctl := newEndpoint(t, true), newEndpoint(t, false)
	r := newRelay(t, app.addr(), 8)
	r.Cut(true) // forging does not go through the faults
	if err := r.SendToApp([]byte("forged")); err != nil {
		t.Fatal(err)
	}
	d := app.recv(t, 1)[0]
	if d.b != "forged" || d.from == ctl.addr() || d.from == r.Addr() {
		t.Fatalf("app got %q from %s", d.b, d.from)
	}
	b, err := r.ForgedReply(t.Context())
	if err != nil || string(b) != "forged" {
		t.Fatalf("forged reply %q, %v", b, err)
	}
	if st := r.Stats().ToApp; st.Forged != 1 {
		t.Fatalf("forged %d", st.Forged)
	}
}

// The same seed and the same traffic make the same choices.
func TestSeedDeterminesChoices(t *testing.T) {
	run := func(seed uint64) []string {
		app, ctl := newEndpoint(t, false), newEndpoint(t, false)
		r := newRelay(t, app.addr(), seed)
		setFaults(t, r, udprelay.ToApp, udprelay.Faults{Loss: 0.5})
		ctl.send(t, r.Addr(), numbered("s", 40)...)
		waitFor(t, "all read", func() bool { return r.Stats().ToApp.Received == 40 })
		setFaults(t, r, udprelay.ToApp, udprelay.Faults{})
		ctl.send(t, r.Addr(), "end")
		var got []string
		for _, d := range app.recv(t, 40-int(r.Stats().ToApp.Dropped)+1) {
			got = append(got, d.b)
		}
		return got
	}
	a, b, c := run(9), run(9), run(10)
	if !slices.Equal(a, b) {
		t.Fatalf("seed 9 twice:\n%v\n%v", a, b)
	}
	if slices.Equal(a, c) {
		t.Fatalf("seeds 9 and 10 chose alike: %v", a)
	}
}

func TestSetFaultsInvalid(t *testing.T) {
	r := newRelay(t, netip.AddrPortFrom(loopback, 9), 1)
	for _, c := range []struct {
		d udprelay.Direction
		f udprelay.Faults
	}{
		{udprelay.ToApp, udprelay.Faults{Loss: 1.5}},
		{udprelay.ToApp, udprelay.Faults{Dup: -0.1}},
		{udprelay.ToApp, udprelay.Faults{Reorder: math.NaN()}},
		{udprelay.ToApp, udprelay.Faults{Delay: -time.Second}},
		{0, udprelay.Faults{}},
		{8, udprelay.Faults{}},
	} {
		if err := r.SetFaults(c.d, c.f); err == nil {
			t.Errorf("SetFaults(%s, %+v) accepted", c.d, c.f)
		}
	}
	if err := r.SetFaults(udprelay.Both, udprelay.Faults{Loss: 0.25}); err != nil {
		t.Fatal(err)
	}
	if r.Faults(udprelay.ToController).Loss != 0.25 || r.Faults(udprelay.ToApp).Loss != 0.25 {
		t.Fatal("Both did not set both")
	}
}

// The relay sends nothing off the machine.
func TestNewRefusesNonLoopback(t *testing.T) {
	for _, cfg := range []udprelay.Config{
		{App: netip.MustParseAddrPort("192.0.2.1:7477")},
		{App: netip.AddrPortFrom(loopback, 0)},
		{App: netip.AddrPortFrom(loopback, 7477), Front: netip.MustParseAddrPort("0.0.0.0:0")},
	} {
		if r, err := udprelay.New(cfg); err == nil {
			_ = r.Close()
			t.Errorf("New(%+v) accepted", cfg)
		}
	}
}

// A closed relay leaves no goroutine behind: not its readers (one per
// controller), not its writer with datagrams still held, not a
// ForgedReply waiting; and its methods say it is closed.
func TestCloseLeavesNoGoroutine(t *testing.T) {
	app, c1, c2 := newEndpoint(t, true), newEndpoint(t, false), newEndpoint(t, false)
	before := runtime.NumGoroutine()
	r, err := udprelay.New(udprelay.Config{App: app.addr(), Seed: 11})
	if err != nil {
		t.Fatal(err)
	}
	c1.send(t, r.Addr(), "a")
	c2.send(t, r.Addr(), "b")
	c1.recv(t, 1)
	c2.recv(t, 1)
	setFaults(t, r, udprelay.ToApp, udprelay.Faults{Reorder: 1, ReorderMax: time.Hour})
	c1.send(t, r.Addr(), "held")
	waitFor(t, "the datagram held", func() bool { return r.Stats().ToApp.Reordered == 1 })
	forged := make(chan error, 1)
	go func() {
		_, err := r.ForgedReply(t.Context())
		forged <- err
	}()

	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-forged; !errors.Is(err, udprelay.ErrClosed) {
		t.Fatalf("ForgedReply after Close: %v", err)
	}
	waitFor(t, "the goroutines are gone", func() bool { return runtime.NumGoroutine() <= before })
	if err := r.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := r.Replay(1); !errors.Is(err, udprelay.ErrClosed) {
		t.Fatalf("Replay after Close: %v", err)
	}
	if err := r.SendToApp([]byte("x")); !errors.Is(err, udprelay.ErrClosed) {
		t.Fatalf("SendToApp after Close: %v", err)
	}
}
