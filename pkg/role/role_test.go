package role

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hapod/hapod/internal/wire"
)

func TestDecide(t *testing.T) {
	fenced := func(epoch uint64) State { return State{Role: Standby, Epoch: epoch, Fenced: true} }
	tests := []struct {
		name  string
		cur   State
		role  Role
		epoch uint64
		want  verdict
	}{
		// A fresh listener takes whatever comes first, even epoch 0 (a
		// group that never promoted tells its pods standby at 0).
		{"fresh standby at 0", State{}, Standby, 0, apply},
		{"fresh active", State{}, Active, 3, apply},
		// The new active is told active at the new epoch.
		{"promotion", State{Role: Standby, Epoch: 4}, Active, 5, apply},
		// The old active is told standby at the same new epoch.
		{"demotion at new epoch", State{Role: Active, Epoch: 4}, Standby, 5, apply},
		// The controller's renewals, and retries of an applied message.
		{"renewal", State{Role: Active, Epoch: 5}, Active, 5, renew},
		{"duplicate standby", State{Role: Standby, Epoch: 5}, Standby, 5, duplicate},
		// Conflicting roles in one epoch: standby wins, so at most one pod
		// stays active.
		{"standby over active same epoch", State{Role: Active, Epoch: 5}, Standby, 5, apply},
		{"active over standby same epoch", State{Role: Standby, Epoch: 5}, Active, 5, stale},
		// A lapsed lease: a renewal round at the same epoch revives it
		// (if its echo is valid); being told standby makes the standby
		// one that no renewal can undo.
		{"renewal of a lapsed lease", fenced(5), Active, 5, apply},
		{"told standby after a lapse", fenced(5), Standby, 5, apply},
		{"lapsed, promoted at a higher epoch", fenced(5), Active, 6, apply},
		{"lapsed, older active", fenced(5), Active, 4, stale},
		// A delayed message from before a later promotion must not undo it.
		{"older active", State{Role: Standby, Epoch: 5}, Active, 4, stale},
		{"older standby", State{Role: Active, Epoch: 5}, Standby, 4, stale},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := decide(tt.cur, tt.role, tt.epoch); got != tt.want {
				t.Fatalf("decide(%+v, %q, %d) = %v, want %v", tt.cur, tt.role, tt.epoch, got, tt.want)
			}
		})
	}
}

// peer plays the controller: a real UDP socket that sends to the listener
// and reads its acks.
type peer struct {
	t    *testing.T
	conn *net.UDPConn
	to   netip.AddrPort
	seq  uint64
}

func newPeer(t *testing.T, l *Listener) *peer {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return &peer{t: t, conn: c, to: l.Addr().(*net.UDPAddr).AddrPort()}
}

func listen(t *testing.T, cfg Config) *Listener {
	t.Helper()
	if cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:0"
	}
	l, err := Listen(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	return l
}

func (p *peer) raw(b []byte) {
	p.t.Helper()
	if _, err := p.conn.WriteToUDPAddrPort(b, p.to); err != nil {
		p.t.Fatal(err)
	}
}

// ttl is the lease the tests grant; long enough that, on the real clock, no
// test's lease runs out unless the test waits for it.
const ttl = time.Minute

func roleMsg(role string, epoch uint64) wire.Message {
	m := wire.Message{Type: wire.TypeRole, Group: "ns/g", Pod: "p-0", UID: "uid-0", Role: role, Epoch: epoch}
	if role == wire.RoleActive {
		m.TTLMillis = wire.TTLMillisOf(ttl)
	}
	return m
}

func echoing(m wire.Message, nonce uint64) wire.Message {
	m.Echo = nonce
	return m
}

// send sends m with a fresh seq and returns the ack, checking that it echoes
// what the controller matches on.
func (p *peer) send(m wire.Message) wire.Message {
	p.t.Helper()
	p.seq++
	m.Seq = p.seq
	b, err := wire.Encode(m)
	if err != nil {
		p.t.Fatal(err)
	}
	p.raw(b)
	a, ok := p.readAck(2 * time.Second)
	if !ok {
		p.t.Fatalf("no ack for %+v", m)
	}
	if a.Type != wire.TypeAck || a.UID != m.UID || a.Epoch != m.Epoch || a.Seq != m.Seq {
		p.t.Fatalf("ack %+v does not echo %+v", a, m)
	}
	if a.Status != wire.StatusWrongPod && (a.Nonce == 0 || !a.Lease) {
		p.t.Fatalf("ack %+v carries no nonce or does not say it enforces the lease", a)
	}
	return a
}

// activate grants the active role at epoch as the controller does: the
// first message echoes nothing and is answered "retry" with a nonce; the
// second echoes it and is applied. It returns the second ack.
func (p *peer) activate(m wire.Message) wire.Message {
	p.t.Helper()
	m.Echo = 0
	first := p.send(m)
	if first.Status != wire.StatusRetry {
		p.t.Fatalf("first active message acked %q, want %q", first.Status, wire.StatusRetry)
	}
	return p.send(echoing(m, first.Nonce))
}

func (p *peer) readAck(wait time.Duration) (wire.Message, bool) {
	p.t.Helper()
	b, ok := readDatagram(p.t, p.conn, wait)
	if !ok {
		return wire.Message{}, false
	}
	a, err := wire.Decode(b)
	if err != nil {
		p.t.Fatalf("listener sent an undecodable ack %q: %v", b, err)
	}
	return a, true
}

// readDatagram reads one datagram from conn within wait; false if none came.
func readDatagram(t *testing.T, conn net.Conn, wait time.Duration) ([]byte, bool) {
	t.Helper()
	_ = conn.SetReadDeadline(time.Now().Add(wait))
	buf := make([]byte, wire.MaxSize+1)
	n, err := conn.Read(buf)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return nil, false
	}
	if err != nil {
		t.Fatal(err)
	}
	return buf[:n], true
}

func wantStats(t *testing.T, l *Listener, want Stats) {
	t.Helper()
	if got := l.Stats(); got != want {
		t.Fatalf("stats %+v, want %+v", got, want)
	}
}

// fakeClock is the listener's clock in tests that control time. The
// listener still sleeps on the real clock; poke wakes it to look again.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)} }

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// poke makes the listener's goroutine look at the clock now, as its read
// deadline does when the real clock reaches a lease's end.
func poke(l *Listener) { _ = l.conn.SetReadDeadline(time.Now()) }

func nextChange(t *testing.T, l *Listener) State {
	t.Helper()
	select {
	case s, ok := <-l.Changes():
		if !ok {
			t.Fatal("Changes closed")
		}
		return s
	case <-time.After(5 * time.Second):
		t.Fatal("no change delivered")
	}
	return State{}
}

func TestAccept(t *testing.T) {
	var mu sync.Mutex
	var seen []State
	clk := newFakeClock()
	l := listen(t, Config{PodUID: "uid-0", now: clk.now, OnChange: func(s State) {
		mu.Lock()
		defer mu.Unlock()
		seen = append(seen, s)
	}})
	p := newPeer(t, l)

	// A fresh listener knows no nonce: the first active message only
	// fetches one.
	first := p.send(roleMsg("active", 1))
	if first.Status != wire.StatusRetry || l.State().Role != Unknown {
		t.Fatalf("first ack %q, state %+v; want retry and nothing applied", first.Status, l.State())
	}
	issued := clk.now()
	clk.advance(10 * time.Millisecond)
	if a := p.send(echoing(roleMsg("active", 1), first.Nonce)); a.Status != wire.StatusOK {
		t.Fatalf("status %q", a.Status)
	}
	// The ack promises the state is recorded. The lease runs from the
	// nonce's ack, not from the message that echoed it.
	s := l.State()
	want := State{Role: Active, Epoch: 1, Group: "ns/g", Changed: issued.Add(10 * time.Millisecond), Expiry: issued.Add(ttl)}
	if s != want {
		t.Fatalf("state %+v, want %+v", s, want)
	}
	if got := nextChange(t, l); got != s {
		t.Fatalf("Changes gave %+v, State %+v", got, s)
	}
	mu.Lock()
	if len(seen) != 1 || seen[0] != s {
		t.Fatalf("OnChange saw %+v", seen)
	}
	mu.Unlock()
	wantStats(t, l, Stats{Received: 2, Accepted: 1, Retry: 1})
}

func TestDuplicate(t *testing.T) {
	calls := 0
	l := listen(t, Config{OnChange: func(State) { calls++ }})
	p := newPeer(t, l)
	p.send(roleMsg("standby", 3))
	first := l.State()
	// A retry whose first copy was applied but whose ack was lost.
	if a := p.send(roleMsg("standby", 3)); a.Status != wire.StatusOK {
		t.Fatalf("duplicate acked %q", a.Status)
	}
	if l.State() != first {
		t.Fatalf("duplicate changed the state: %+v -> %+v", first, l.State())
	}
	wantStats(t, l, Stats{Received: 2, Accepted: 1, Duplicate: 1})
	_ = l.Close()
	for range l.Changes() { // wait until no OnChange can run
	}
	if calls != 1 {
		t.Fatalf("OnChange called %d times", calls)
	}
}

// Renewals extend the lease without notifying the application.
func TestRenewal(t *testing.T) {
	clk := newFakeClock()
	calls := 0
	l := listen(t, Config{now: clk.now, OnChange: func(State) { calls++ }})
	p := newPeer(t, l)
	a := p.activate(roleMsg("active", 2))
	granted := l.State()
	// A renewal extends the lease to its echo's ack plus the TTL: the
	// first one echoes the grant's ack, which is where the lease already
	// ends; the second echoes the first renewal's ack, 20ms later.
	clk.advance(20 * time.Millisecond)
	at := clk.now()
	r := p.send(echoing(roleMsg("active", 2), a.Nonce))
	if r.Status != wire.StatusOK || l.State() != granted {
		t.Fatalf("first renewal acked %q, state %+v; want ok and %+v", r.Status, l.State(), granted)
	}
	clk.advance(20 * time.Millisecond)
	if r := p.send(echoing(roleMsg("active", 2), r.Nonce)); r.Status != wire.StatusOK {
		t.Fatalf("renewal acked %q", r.Status)
	}
	s := l.State()
	if s.Expiry != at.Add(ttl) || s.Changed != granted.Changed || s.Role != Active {
		t.Fatalf("after renewal %+v; want expiry %v, unchanged otherwise (%+v)", s, at.Add(ttl), granted)
	}
	wantStats(t, l, Stats{Received: 4, Accepted: 1, Retry: 1, Renewed: 2})
	_ = l.Close()
	for range l.Changes() {
	}
	if calls != 1 {
		t.Fatalf("OnChange called %d times, want once (the grant)", calls)
	}
}

func TestStale(t *testing.T) {
	l := listen(t, Config{})
	p := newPeer(t, l)
	steps := []struct {
		role   string
		epoch  uint64
		status string
		want   State
	}{
		{"active", 5, wire.StatusOK, State{Role: Active, Epoch: 5}},
		{"standby", 4, wire.StatusStale, State{Role: Active, Epoch: 5}},
		{"active", 4, wire.StatusStale, State{Role: Active, Epoch: 5}},
		{"standby", 5, wire.StatusOK, State{Role: Standby, Epoch: 5}},
		{"active", 5, wire.StatusStale, State{Role: Standby, Epoch: 5}},
		{"active", 6, wire.StatusOK, State{Role: Active, Epoch: 6}},
	}
	var nonce uint64
	for i, s := range steps {
		m := roleMsg(s.role, s.epoch)
		var a wire.Message
		switch {
		case s.role == "active" && s.status == wire.StatusOK:
			a = p.activate(m)
		case s.role == "active":
			// A valid echo must not matter: the epoch rule comes first.
			a = p.send(echoing(m, nonce))
		default:
			a = p.send(m)
		}
		nonce = a.Nonce
		got := l.State()
		if a.Status != s.status || got.Role != s.want.Role || got.Epoch != s.want.Epoch {
			t.Fatalf("step %d (%s@%d): ack %q state %+v; want %q %+v", i, s.role, s.epoch, a.Status, got, s.status, s.want)
		}
	}
	wantStats(t, l, Stats{Received: 8, Accepted: 3, Retry: 2, Stale: 3})
}

func TestWrongPod(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		edit func(*wire.Message)
	}{
		// A new pod that got a deleted pod's IP.
		{"other uid", Config{PodUID: "uid-0"}, func(m *wire.Message) { m.UID = "uid-old" }},
		{"other name", Config{PodName: "p-0"}, func(m *wire.Message) { m.Pod = "p-9" }},
		// Epochs of different groups cannot be compared.
		{"other group", Config{}, func(m *wire.Message) { m.Group = "ns/other"; m.Epoch = 99 }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := listen(t, tt.cfg)
			p := newPeer(t, l)
			p.send(roleMsg("standby", 1))
			m := roleMsg("active", 2)
			tt.edit(&m)
			a := p.send(m)
			if a.Status != wire.StatusWrongPod || a.Nonce != 0 {
				t.Fatalf("acked %q with nonce %d; want wrong-pod and no nonce", a.Status, a.Nonce)
			}
			if s := l.State(); s.Role != Standby || s.Epoch != 1 {
				t.Fatalf("state changed to %+v", s)
			}
			wantStats(t, l, Stats{Received: 2, Accepted: 1, WrongPod: 1})
		})
	}
}

func TestAckNamesPod(t *testing.T) {
	l := listen(t, Config{PodName: "p-0"})
	p := newPeer(t, l)
	m := roleMsg("standby", 1)
	m.Pod = "p-1"
	if a := p.send(m); a.Pod != "p-0" || a.Status != wire.StatusWrongPod {
		t.Fatalf("ack %+v", a)
	}
}

func TestDropped(t *testing.T) {
	ack := roleMsg("active", 1)
	ack.Type, ack.Status = wire.TypeAck, wire.StatusOK
	ackBytes, err := wire.Encode(ack)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		b    []byte
	}{
		{"not json", []byte("hello")},
		{"empty", nil},
		{"oversized", []byte(`{"v":2,"pad":"` + strings.Repeat("x", wire.MaxSize) + `"}`)},
		// A controller of the previous version: no lease, so not understood.
		{"v1", []byte(`{"v":1,"type":"role","group":"ns/g","pod":"p-0","uid":"uid-0","role":"active","epoch":9,"seq":1}`)},
		{"unknown version", []byte(`{"v":3,"type":"role","group":"ns/g","pod":"p-0","uid":"uid-0","role":"active","epoch":9,"seq":1}`)},
		{"missing uid", []byte(`{"v":2,"type":"role","group":"ns/g","pod":"p-0","role":"standby","epoch":9,"seq":1}`)},
		{"active without ttl", []byte(`{"v":2,"type":"role","group":"ns/g","pod":"p-0","uid":"uid-0","role":"active","epoch":9,"seq":1}`)},
		// An ack sent to a listener, e.g. by a misrouted controller socket.
		{"ack", ackBytes},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := listen(t, Config{})
			p := newPeer(t, l)
			p.raw(tt.b)
			// The next ack must answer the valid message that follows: the
			// dropped datagram got no reply.
			if a := p.send(roleMsg("standby", 1)); a.Status != wire.StatusOK {
				t.Fatalf("acked %q", a.Status)
			}
			if a, ok := p.readAck(50 * time.Millisecond); ok {
				t.Fatalf("unexpected reply %+v", a)
			}
			wantStats(t, l, Stats{Received: 2, Accepted: 1, Malformed: 1})
		})
	}
}

func TestContextCancelCloses(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	l, err := Listen(ctx, Config{Addr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	cancel()
	select {
	case _, ok := <-l.Changes():
		if ok {
			t.Fatal("got a state, want a closed channel")
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Changes not closed after ctx was canceled")
	}
	// The socket is closed. (Rebinding its port would race any other
	// process on the machine for a released ephemeral port.)
	if _, err := l.conn.WriteToUDPAddrPort([]byte("x"), netip.MustParseAddrPort(addr)); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("write on the listener's socket after cancel: %v, want net.ErrClosed", err)
	}
	if err := l.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Close after cancel: %v", err)
	}
}

func TestListenError(t *testing.T) {
	l := listen(t, Config{})
	if _, err := Listen(t.Context(), Config{Addr: l.Addr().String()}); err == nil {
		t.Fatal("second Listen on a bound port succeeded")
	}
}

func TestChangesLatestValue(t *testing.T) {
	var order []uint64
	l := listen(t, Config{OnChange: func(s State) { order = append(order, s.Epoch) }})
	p := newPeer(t, l)
	// Nobody reads Changes while five changes land: the listener must not
	// block (every message is acked) and the channel must hold the newest.
	for e := uint64(1); e <= 5; e++ {
		p.send(roleMsg("standby", e))
	}
	// Closing after the last ack still delivers its notification: the
	// listener finishes the datagram in hand before it sees the close.
	_ = l.Close()
	<-l.done
	var got []uint64
	for s := range l.Changes() {
		got = append(got, s.Epoch)
	}
	if len(got) != 1 || got[0] != 5 {
		t.Fatalf("Changes gave epochs %v, want [5]", got)
	}
	// OnChange sees every change, in order.
	if fmt.Sprint(order) != "[1 2 3 4 5]" {
		t.Fatalf("OnChange order %v", order)
	}
}

// The ack must not wait for the application.
func TestAckBeforeOnChange(t *testing.T) {
	release := make(chan struct{})
	entered := make(chan struct{})
	l := listen(t, Config{OnChange: func(State) {
		close(entered)
		<-release
	}})
	p := newPeer(t, l)
	p.activate(roleMsg("active", 1)) // fails if the ack waits for release
	<-entered
	close(release)
}

func TestCloseFromOnChange(t *testing.T) {
	// Through an atomic: the race detector sees no ordering through the
	// socket between the assignment and the callback.
	var lp atomic.Pointer[Listener]
	closed := make(chan error, 1)
	l := listen(t, Config{OnChange: func(State) { closed <- lp.Load().Close() }})
	lp.Store(l)
	p := newPeer(t, l)
	p.activate(roleMsg("active", 1))
	select {
	case err := <-closed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Close from OnChange blocked")
	}
	for range l.Changes() {
	}
}

// A context that is already done closes the listener without racing
// Listen's own setup (run with -race).
func TestListenWithDoneContext(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	l, err := Listen(ctx, Config{Addr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	for range l.Changes() {
	}
	if err := l.Close(); err != nil {
		t.Errorf("Close after ctx closed it: %v", err)
	}
}
