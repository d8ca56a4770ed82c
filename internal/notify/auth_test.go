package notify

import (
	"bytes"
	"net"
	"testing"
	"time"

	"github.com/hapod/hapod/internal/dev/keydir"
	"github.com/hapod/hapod/internal/rolekey"
	"github.com/hapod/hapod/internal/wire"
	"github.com/hapod/hapod/pkg/role"
)

var master = bytes.Repeat([]byte{1}, 32)

func keySource(t testing.TB, keys map[string][]byte) *rolekey.Source {
	t.Helper()
	dir := t.TempDir()
	if err := keydir.Write(dir, keys, ""); err != nil {
		t.Fatal(err)
	}
	s, err := rolekey.Open(dir, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// podKeyDir is what the pods of group ns/g mount: its subkeys.
func podKeyDir(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	if err := keydir.Write(dir, map[string][]byte{"k1": rolekey.GroupKey(master, "ns/g")}, ""); err != nil {
		t.Fatal(err)
	}
	return dir
}

// A controller with the master key and a pod with its group's subkey grant
// and renew a lease; neither refuses anything.
func TestAuthGrantAndRenew(t *testing.T) {
	n, reg := newNotifier(t, Config{Keys: keySource(t, map[string][]byte{"k1": master})})
	if !n.Authenticated() {
		t.Fatal("notifier with keys not authenticated")
	}
	l := listener(t, role.Config{KeyDir: podKeyDir(t)})
	acks := make(chan Ack, 4)
	n.SetAckHandler(func(a Ack) AckVerdict { acks <- a; return AckExpected })
	tgt := target(addrPort(t, l.Addr()), wire.RoleActive, 1)
	res := n.Send(t.Context(), tgt)
	if !res.Acked || !l.Active() {
		t.Fatalf("grant %+v, listener %+v", res, l.Stats())
	}
	if _, err := n.Renew(tgt, res.Nonce); err != nil {
		t.Fatal(err)
	}
	select {
	case a := <-acks:
		if a.Status != wire.StatusOK || !SameAddr(a.From, tgt.Addr) {
			t.Fatalf("renewal ack %+v", a)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no renewal ack")
	}
	if st := l.Stats(); st.Renewed != 1 || st.BadMAC+st.Unauthenticated+st.Replayed+st.Expired+st.UnknownKey != 0 {
		t.Fatalf("listener %+v", st)
	}
	for _, r := range []string{"unauthenticated", "unknown-key", "bad-mac", "expired", "replayed", "wrong-source"} {
		if v := counter(t, reg, "hapod_notify_refused_acks_total", "reason", r); v != 0 {
			t.Fatalf("refused %s: %v", r, v)
		}
	}
}

// signedAck is a pod's ack of m signed with key under kid.
func signedAck(t *testing.T, m wire.Message, kid string, ctr uint64, ts time.Time, key []byte) []byte {
	t.Helper()
	m.Type, m.Status, m.Nonce, m.Lease = wire.TypeAck, wire.StatusOK, 5, true
	m.Kid, m.Boot, m.Ctr, m.TS = kid, 99, ctr, wire.StampMillis(ts)
	b, err := wire.Encode(m)
	if err != nil {
		t.Fatal(err)
	}
	d, err := wire.Seal(b, key)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// Acks a controller with keys cannot believe are refused, each counted by
// reason, and do not end the Send; the one valid ack does, and its replay
// is refused too.
func TestAuthAcksRefused(t *testing.T) {
	n, reg := newNotifier(t, Config{Keys: keySource(t, map[string][]byte{"k1": master}), InitialBackoff: time.Minute, Deadline: time.Minute})
	sub := rolekey.GroupKey(master, "ns/g")
	addr := fakePod(t, func(_ int, m wire.Message) [][]byte {
		now := time.Now()
		valid := signedAck(t, m, "k1", 5, now, sub)
		return [][]byte{
			ackOf(t, m, wire.StatusOK),                                     // unauthenticated
			signedAck(t, m, "k1", 1, now, bytes.Repeat([]byte{9}, 32)),     // forged
			signedAck(t, m, "k1", 2, now, rolekey.GroupKey(master, "x/y")), // another group's subkey
			signedAck(t, m, "k7", 3, now, sub),                             // unknown key
			signedAck(t, m, "k1", 4, now.Add(-time.Minute), sub),           // expired
			valid,
			valid, // replayed
		}
	})
	res := n.Send(t.Context(), target(addr, wire.RoleStandby, 2))
	if !res.Acked || res.Attempts != 1 {
		t.Fatalf("result %+v", res)
	}
	waitFor(t, "the replay is counted", func() bool {
		return counter(t, reg, "hapod_notify_refused_acks_total", "reason", "replayed") == 1
	})
	for r, want := range map[string]float64{"unauthenticated": 1, "bad-mac": 2, "unknown-key": 1, "expired": 1, "wrong-source": 0} {
		if v := counter(t, reg, "hapod_notify_refused_acks_total", "reason", r); v != want {
			t.Errorf("refused %s: %v, want %v", r, v, want)
		}
	}
}

// An ack that names the pod but comes from another address (another pod
// of the group, which holds the same subkey, or a spoofer) does not end
// the pod's Send: it is refused, and the pod's own ack is taken. (On
// loopback a datagram is in the receiver's queue when sendto returns, so
// the forged ack, written first, is read first.)
func TestAckFromWrongSource(t *testing.T) {
	n, reg := newNotifier(t, noResend)
	other, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = other.Close() })
	addr := fakePod(t, func(_ int, m wire.Message) [][]byte {
		if _, err := other.WriteToUDPAddrPort(ackOf(t, m, wire.StatusStale), addrPort(t, n.Addr())); err != nil {
			t.Error(err)
		}
		return [][]byte{ackOf(t, m, wire.StatusOK)}
	})
	res := n.Send(t.Context(), target(addr, wire.RoleStandby, 2))
	if !res.Acked || res.Status != wire.StatusOK {
		t.Fatalf("result %+v: the ack from another address was taken", res)
	}
	if v := counter(t, reg, "hapod_notify_refused_acks_total", "reason", "wrong-source"); v != 1 {
		t.Fatalf("wrong-source %v", v)
	}
}

// Every datagram a Notifier with keys sends, resends included, is signed
// with a counter of its own: a listener that got the first copy refuses
// none of the others as replays.
func TestAuthResendsAreFresh(t *testing.T) {
	n, _ := newNotifier(t, Config{Keys: keySource(t, map[string][]byte{"k1": master}), InitialBackoff: time.Millisecond})
	sub := rolekey.GroupKey(master, "ns/g")
	seen := make(chan uint64, 8)
	addr := fakePod(t, func(i int, m wire.Message) [][]byte {
		seen <- m.Ctr
		if i < 3 {
			return nil // the acks of the first two are "lost"
		}
		return [][]byte{signedAck(t, m, "k1", uint64(i), time.Now(), sub)}
	})
	if res := n.Send(t.Context(), target(addr, wire.RoleStandby, 2)); !res.Acked || res.Attempts < 3 {
		t.Fatalf("result %+v", res)
	}
	a, b, c := <-seen, <-seen, <-seen
	if a == 0 || a >= b || b >= c {
		t.Fatalf("counters %d %d %d", a, b, c)
	}
}
