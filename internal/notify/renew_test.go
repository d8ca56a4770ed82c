package notify

import (
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/hapod/hapod/internal/wire"
	"github.com/hapod/hapod/pkg/role"
)

// The grant's handshake, as a scripted pod sees it: the first active
// message echoes nothing; the answer "retry" is answered at once, echoing
// its nonce with a new seq; Grant is asked first, with the time the nonce
// arrived.
func TestGrantHandshake(t *testing.T) {
	n, reg := newNotifier(t, Config{InitialBackoff: time.Second})
	var mu sync.Mutex
	var got []wire.Message
	addr := fakePod(t, func(_ int, m wire.Message) [][]byte {
		mu.Lock()
		got = append(got, m)
		mu.Unlock()
		a := m
		a.Type, a.Lease = wire.TypeAck, true
		if m.Echo != 42 {
			a.Status, a.Nonce = wire.StatusRetry, 42
		} else {
			a.Status, a.Nonce = wire.StatusOK, 43
		}
		b, err := wire.Encode(a)
		if err != nil {
			t.Error(err)
		}
		return [][]byte{b}
	})
	var granted []time.Time
	tgt := target(addr, wire.RoleActive, 3)
	tgt.TTL = 250 * time.Millisecond
	tgt.Grant = func(at time.Time, lease bool) bool { granted = append(granted, at); return lease }
	res := n.Send(t.Context(), tgt)
	if !res.Acked || res.Attempts != 2 || res.Nonce != 43 || !res.Lease || len(granted) != 1 || !res.Echoed.Equal(granted[0]) {
		t.Fatalf("result %+v, Grant called at %v", res, granted)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 2 || got[0].Echo != 0 || got[1].Echo != 42 || got[0].Seq == got[1].Seq || got[0].TTLMillis != 250 || got[1].TTLMillis != 250 {
		t.Fatalf("pod received %+v", got)
	}
	// Not a resend for want of an ack.
	if r := counter(t, reg, "hapod_notify_retries_total"); r != 0 {
		t.Fatalf("retries %v", r)
	}
}

// A revoked grant echoes nothing.
func TestGrantRevoked(t *testing.T) {
	n, _ := newNotifier(t, Config{})
	l := listener(t, role.Config{})
	tgt := target(addrPort(t, l.Addr()), wire.RoleActive, 1)
	tgt.Grant = func(time.Time, bool) bool { return false }
	res := n.Send(t.Context(), tgt)
	if !errors.Is(res.Err, ErrRevoked) || res.Attempts != 1 || !res.Echoed.IsZero() {
		t.Fatalf("result %+v", res)
	}
	if s := l.Stats(); s.Retry != 1 || s.Accepted != 0 || l.State().Role != role.Unknown {
		t.Fatalf("listener %+v, %+v", s, l.State())
	}
}

// Renewals do not wait; their acks go to the handler, not to the
// unmatched count.
func TestRenew(t *testing.T) {
	n, reg := newNotifier(t, Config{})
	l := listener(t, role.Config{})
	acks := make(chan Ack, 4)
	n.SetAckHandler(func(a Ack) AckVerdict { acks <- a; return AckExpected })
	tgt := target(addrPort(t, l.Addr()), wire.RoleActive, 1)
	res := n.Send(t.Context(), tgt)
	if !res.Acked {
		t.Fatalf("grant %+v", res)
	}
	before := l.State().Expiry
	seq, err := n.Renew(tgt, res.Nonce)
	if err != nil {
		t.Fatal(err)
	}
	var a Ack
	select {
	case a = <-acks:
	case <-time.After(5 * time.Second):
		t.Fatal("no renewal ack")
	}
	if a.Status != wire.StatusOK || a.Seq != seq || a.UID != tgt.UID || a.Epoch != 1 || a.Nonce == 0 || a.Nonce == res.Nonce || !a.Lease || a.At.IsZero() {
		t.Fatalf("ack %+v (seq %d)", a, seq)
	}
	if s := l.State(); s.Role != role.Active || s.Expiry.Before(before) || l.Stats().Renewed != 1 {
		t.Fatalf("after renewal %+v, %+v", s, l.Stats())
	}
	// An unknown echo: the pod answers "retry" with a nonce to echo.
	if _, err := n.Renew(tgt, res.Nonce+1); err != nil {
		t.Fatal(err)
	}
	if a := <-acks; a.Status != wire.StatusRetry || a.Nonce == 0 {
		t.Fatalf("ack %+v", a)
	}
	if u := counter(t, reg, "hapod_notify_unmatched_acks_total"); u != 0 {
		t.Fatalf("unmatched %v", u)
	}
	// Without a handler (or one that does not know the ack) it is unmatched.
	n.SetAckHandler(func(Ack) AckVerdict { return AckUnexpected })
	if _, err := n.Renew(tgt, 0); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for counter(t, reg, "hapod_notify_unmatched_acks_total") != 1 {
		if time.Now().After(deadline) {
			t.Fatal("the ack was not counted as unmatched")
		}
		time.Sleep(time.Millisecond)
	}
	standby := tgt
	standby.Role = wire.RoleStandby
	if _, err := n.Renew(standby, 0); err == nil {
		t.Fatal("renewed a standby role")
	}
}

// Backlog tells unread datagrams in the socket from none.
func TestBacklog(t *testing.T) {
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	n := &Notifier{conn: c} // no reading goroutine
	if n.Backlog() {
		t.Fatal("backlog on an idle socket")
	}
	s, err := net.DialUDP("udp", nil, c.LocalAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !n.Backlog() {
		if time.Now().After(deadline) {
			t.Fatal("no backlog with a datagram queued")
		}
		time.Sleep(time.Millisecond)
	}
}
