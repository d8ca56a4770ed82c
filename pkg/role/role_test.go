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
		// Retries of an applied message.
		{"duplicate active", State{Role: Active, Epoch: 5}, Active, 5, duplicate},
		{"duplicate standby", State{Role: Standby, Epoch: 5}, Standby, 5, duplicate},
		// Conflicting roles in one epoch: standby wins, so at most one pod
		// stays active.
		{"standby over active same epoch", State{Role: Active, Epoch: 5}, Standby, 5, apply},
		{"active over standby same epoch", State{Role: Standby, Epoch: 5}, Active, 5, stale},
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
	cfg.Addr = "127.0.0.1:0"
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

func roleMsg(role string, epoch uint64) wire.Message {
	return wire.Message{Type: wire.TypeRole, Group: "ns/g", Pod: "p-0", UID: "uid-0", Role: role, Epoch: epoch}
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
	return a
}

func (p *peer) readAck(wait time.Duration) (wire.Message, bool) {
	p.t.Helper()
	_ = p.conn.SetReadDeadline(time.Now().Add(wait))
	buf := make([]byte, wire.MaxSize+1)
	n, err := p.conn.Read(buf)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return wire.Message{}, false
	}
	if err != nil {
		p.t.Fatal(err)
	}
	a, err := wire.Decode(buf[:n])
	if err != nil {
		p.t.Fatalf("listener sent an undecodable ack %q: %v", buf[:n], err)
	}
	return a, true
}

func wantStats(t *testing.T, l *Listener, want Stats) {
	t.Helper()
	if got := l.Stats(); got != want {
		t.Fatalf("stats %+v, want %+v", got, want)
	}
}

func TestAccept(t *testing.T) {
	var mu sync.Mutex
	var seen []State
	l := listen(t, Config{PodUID: "uid-0", OnChange: func(s State) {
		mu.Lock()
		defer mu.Unlock()
		seen = append(seen, s)
	}})
	p := newPeer(t, l)

	before := time.Now()
	if a := p.send(roleMsg("active", 1)); a.Status != wire.StatusOK {
		t.Fatalf("status %q", a.Status)
	}
	// The ack promises the state is recorded.
	s := l.State()
	if s.Role != Active || s.Epoch != 1 || s.Group != "ns/g" || s.Changed.Before(before) {
		t.Fatalf("state %+v", s)
	}
	select {
	case got := <-l.Changes():
		if got != s {
			t.Fatalf("Changes gave %+v, State %+v", got, s)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("no change delivered")
	}
	mu.Lock()
	if len(seen) != 1 || seen[0] != s {
		t.Fatalf("OnChange saw %+v", seen)
	}
	mu.Unlock()
	wantStats(t, l, Stats{Received: 1, Accepted: 1})
}

func TestDuplicate(t *testing.T) {
	calls := 0
	l := listen(t, Config{OnChange: func(State) { calls++ }})
	p := newPeer(t, l)
	p.send(roleMsg("active", 3))
	first := l.State()
	// A retry whose first copy was applied but whose ack was lost.
	if a := p.send(roleMsg("active", 3)); a.Status != wire.StatusOK {
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
	for i, s := range steps {
		a := p.send(roleMsg(s.role, s.epoch))
		got := l.State()
		if a.Status != s.status || got.Role != s.want.Role || got.Epoch != s.want.Epoch {
			t.Fatalf("step %d (%s@%d): ack %q state %+v; want %q %+v", i, s.role, s.epoch, a.Status, got, s.status, s.want)
		}
	}
	wantStats(t, l, Stats{Received: 6, Accepted: 3, Stale: 3})
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
			if a := p.send(m); a.Status != wire.StatusWrongPod {
				t.Fatalf("acked %q", a.Status)
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
		{"oversized", []byte(`{"v":1,"pad":"` + strings.Repeat("x", wire.MaxSize) + `"}`)},
		{"unknown version", []byte(`{"v":2,"type":"role","group":"ns/g","pod":"p-0","uid":"uid-0","role":"active","epoch":9,"seq":1}`)},
		{"missing uid", []byte(`{"v":1,"type":"role","group":"ns/g","pod":"p-0","role":"active","epoch":9,"seq":1}`)},
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
	p.send(roleMsg("active", 1)) // fails if the ack waits for release
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
	p.send(roleMsg("active", 1))
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
