package role

import (
	"bytes"
	"math"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hapod/hapod/internal/dev/keydir"
	"github.com/hapod/hapod/internal/rolekey"
	"github.com/hapod/hapod/internal/wire"
)

var (
	master1 = bytes.Repeat([]byte{1}, 32)
	master2 = bytes.Repeat([]byte{2}, 32)
)

// groupKeys is what the pods of group ns/g mount: its subkeys only.
func groupKeys(masters map[string][]byte) map[string][]byte {
	sub := map[string][]byte{}
	for kid, k := range masters {
		sub[kid] = rolekey.GroupKey(k, "ns/g")
	}
	return sub
}

func keyDir(t *testing.T, keys map[string][]byte) string {
	t.Helper()
	dir := t.TempDir()
	if err := keydir.Write(dir, keys, ""); err != nil {
		t.Fatal(err)
	}
	return dir
}

// authPeer plays a controller with keys: it signs with the subkey of the
// message's group and checks the acks' MACs.
type authPeer struct {
	*peer
	masters map[string][]byte
	kid     string
	boot    uint64
	ctr     uint64
}

func newAuthPeer(t *testing.T, l *Listener) *authPeer {
	return &authPeer{peer: newPeer(t, l), masters: map[string][]byte{"k1": master1}, kid: "k1", boot: 42}
}

// seal encodes m as the controller would, with the next counter.
func (p *authPeer) seal(m wire.Message) []byte {
	p.t.Helper()
	p.ctr++
	m.Kid, m.Boot, m.Ctr, m.TS = p.kid, p.boot, p.ctr, wire.StampMillis(time.Now())
	return p.sealAs(m, rolekey.GroupKey(p.masters[p.kid], m.Group))
}

func (p *authPeer) sealAs(m wire.Message, key []byte) []byte {
	p.t.Helper()
	b, err := wire.Encode(m)
	if err != nil {
		p.t.Fatal(err)
	}
	d, err := wire.Seal(b, key)
	if err != nil {
		p.t.Fatal(err)
	}
	return d
}

// send sends m signed and returns its ack, whose MAC it verifies.
func (p *authPeer) send(m wire.Message) wire.Message {
	p.t.Helper()
	p.seq++
	m.Seq = p.seq
	p.raw(p.seal(m))
	a, ok := p.readSigned(2 * time.Second)
	if !ok {
		p.t.Fatalf("no ack for %+v", m)
	}
	if a.Seq != m.Seq || a.Kid != p.kid || a.Boot == 0 || a.Boot == p.boot {
		p.t.Fatalf("ack %+v for %+v", a, m)
	}
	return a
}

func (p *authPeer) readSigned(wait time.Duration) (wire.Message, bool) {
	p.t.Helper()
	b, ok := readDatagram(p.t, p.conn, wait)
	if !ok {
		return wire.Message{}, false
	}
	body, sum := wire.Open(b)
	a, err := wire.Decode(body)
	if err != nil {
		p.t.Fatal(err)
	}
	if !wire.Verify(rolekey.GroupKey(p.masters[a.Kid], a.Group), body, sum) {
		p.t.Fatalf("ack not signed with the group's subkey: %s", b)
	}
	return a, true
}

// noReply asserts that nothing answers within a short while: refused
// datagrams get no ack. (Not a synchronisation: the listener handles
// datagrams in order, so the test sends a valid one next and reads its
// ack, which proves the refused one was handled first.)
func (p *authPeer) noReply() {
	p.t.Helper()
	if a, ok := p.readAck(20 * time.Millisecond); ok {
		p.t.Fatalf("unexpected reply %+v", a)
	}
}

func TestAuthGrantAndSignedAcks(t *testing.T) {
	l := listen(t, Config{KeyDir: keyDir(t, groupKeys(map[string][]byte{"k1": master1})), PodUID: "uid-0"})
	if !l.Authenticated() {
		t.Fatal("listener with keys not authenticated")
	}
	p := newAuthPeer(t, l)
	first := p.send(roleMsg("active", 1))
	if first.Status != wire.StatusRetry {
		t.Fatalf("first %q", first.Status)
	}
	if a := p.send(echoing(roleMsg("active", 1), first.Nonce)); a.Status != wire.StatusOK || !l.Active() {
		t.Fatalf("grant acked %q, active %v", a.Status, l.Active())
	}
	// The ack counters increase, so the controller can refuse replays.
	second := p.send(roleMsg("standby", 2))
	if second.Ctr <= first.Ctr || second.Boot != first.Boot {
		t.Fatalf("ack counters %d then %d", first.Ctr, second.Ctr)
	}
	wantStats(t, l, Stats{Received: 3, Accepted: 2, Retry: 1})
}

// Every kind of datagram a listener with keys cannot verify is dropped
// without reply, changes nothing, and is counted by reason.
func TestAuthRefused(t *testing.T) {
	other := bytes.Repeat([]byte{9}, 32)
	tests := []struct {
		name  string
		build func(p *authPeer) []byte
		want  Stats
	}{
		{"unauthenticated", func(p *authPeer) []byte {
			b, _ := wire.Encode(roleMsg("active", 5))
			return b
		}, Stats{Unauthenticated: 1}},
		// A MAC made up by a forger.
		{"forged", func(p *authPeer) []byte {
			m := roleMsg("standby", 5)
			m.Kid, m.Boot, m.Ctr, m.TS = "k1", 1, 1, wire.StampMillis(time.Now())
			return p.sealAs(m, other)
		}, Stats{BadMAC: 1}},
		// A pod of another group signing with its own group's subkey.
		{"another group's key", func(p *authPeer) []byte {
			m := roleMsg("standby", 5)
			m.Kid, m.Boot, m.Ctr, m.TS = "k1", 1, 1, wire.StampMillis(time.Now())
			return p.sealAs(m, rolekey.GroupKey(master1, "ns/other"))
		}, Stats{BadMAC: 1}},
		// The master key itself is not the group's key either.
		{"master key", func(p *authPeer) []byte {
			m := roleMsg("standby", 5)
			m.Kid, m.Boot, m.Ctr, m.TS = "k1", 1, 1, wire.StampMillis(time.Now())
			return p.sealAs(m, master1)
		}, Stats{BadMAC: 1}},
		{"unknown key", func(p *authPeer) []byte {
			p.masters["k9"], p.kid = other, "k9"
			defer func() { p.kid = "k1" }()
			return p.seal(roleMsg("standby", 5))
		}, Stats{UnknownKey: 1}},
		{"expired", func(p *authPeer) []byte {
			m := roleMsg("standby", 5)
			m.Kid, m.Boot, m.Ctr, m.TS = "k1", 1, 1, wire.StampMillis(time.Now().Add(-time.Minute))
			return p.sealAs(m, rolekey.GroupKey(master1, "ns/g"))
		}, Stats{Expired: 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := listen(t, Config{KeyDir: keyDir(t, groupKeys(map[string][]byte{"k1": master1}))})
			p := newAuthPeer(t, l)
			p.raw(tt.build(p))
			p.noReply()
			if a := p.send(roleMsg("standby", 1)); a.Status != wire.StatusOK {
				t.Fatalf("the valid message after it acked %q", a.Status)
			}
			if s := l.State(); s.Role != Standby || s.Epoch != 1 || s.Group != "ns/g" {
				t.Fatalf("state %+v", s)
			}
			want := tt.want
			want.Received, want.Accepted = 2, 1
			wantStats(t, l, want)
		})
	}
}

// A captured datagram sent again is refused, even one that would be
// harmless: the (boot, counter) pair is spent.
func TestAuthReplayed(t *testing.T) {
	l := listen(t, Config{KeyDir: keyDir(t, groupKeys(map[string][]byte{"k1": master1}))})
	p := newAuthPeer(t, l)
	m := roleMsg("standby", 1)
	m.Seq = 100
	d := p.seal(m)
	p.raw(d)
	if _, ok := p.readSigned(2 * time.Second); !ok {
		t.Fatal("no ack")
	}
	p.raw(d)
	p.noReply()
	p.send(roleMsg("standby", 2))
	wantStats(t, l, Stats{Received: 3, Accepted: 2, Replayed: 1})
}

// The regression of issue 10: one datagram with epoch MaxUint64 (or for a
// bogus group) used to fence a fresh listener against every real message
// for good. Now it is dropped, with keys (it cannot be verified) and
// without (an epoch the controller never sends is malformed; a listener
// told its group refuses another).
func TestFirstBogusDatagramDoesNotWedge(t *testing.T) {
	huge := roleMsg("standby", 1)
	huge.Epoch = math.MaxUint64
	hugeRaw := []byte(`{"v":2,"type":"role","group":"ns/g","pod":"p-0","uid":"uid-0","role":"standby","epoch":18446744073709551615,"seq":1}`)
	highest := roleMsg("standby", wire.MaxEpoch)
	highest.Group = "evil/x"
	highestRaw, err := wire.Encode(highest)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		cfg  func(t *testing.T) Config
		raw  []byte
		want Stats // besides the valid message's Received and Accepted
	}{
		{"MaxUint64 epoch, no keys", func(*testing.T) Config { return Config{} }, hugeRaw, Stats{Malformed: 1}},
		{"bogus group, no keys, group configured", func(*testing.T) Config { return Config{Group: "ns/g"} }, highestRaw, Stats{WrongPod: 1}},
		{"MaxUint64 epoch, keys", func(t *testing.T) Config {
			return Config{KeyDir: keyDir(t, groupKeys(map[string][]byte{"k1": master1}))}
		}, hugeRaw, Stats{Malformed: 1}},
		{"bogus group, keys", func(t *testing.T) Config {
			return Config{KeyDir: keyDir(t, groupKeys(map[string][]byte{"k1": master1}))}
		}, highestRaw, Stats{Unauthenticated: 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := tt.cfg(t)
			l := listen(t, cfg)
			p := newAuthPeer(t, l)
			p.raw(tt.raw)
			if tt.want.WrongPod == 0 {
				p.noReply()
			} else if a, ok := p.readAck(2 * time.Second); !ok || a.Status != wire.StatusWrongPod {
				t.Fatalf("bogus group acked %+v", a)
			}
			var a wire.Message
			if cfg.KeyDir != "" {
				a = p.send(roleMsg("standby", 3))
			} else {
				a = p.peer.send(roleMsg("standby", 3))
			}
			if a.Status != wire.StatusOK {
				t.Fatalf("the controller's message after it acked %q: the listener is wedged", a.Status)
			}
			if s := l.State(); s.Epoch != 3 || s.Group != "ns/g" {
				t.Fatalf("state %+v", s)
			}
			want := tt.want
			want.Received, want.Accepted = 2, 1
			wantStats(t, l, want)
		})
	}
}

// A key rotation as the kubelet performs it: the new key is added to the
// mounted Secret (the ..data swap) while the controller still signs with
// the old one; once the controller signs with the new key, the listener,
// which had not read its directory again yet, reads it at once and
// accepts. No message is refused.
func TestAuthKeyRotation(t *testing.T) {
	dir := keyDir(t, groupKeys(map[string][]byte{"k1": master1}))
	l := listen(t, Config{KeyDir: dir, KeyPoll: time.Hour})
	p := newAuthPeer(t, l)
	first := p.send(roleMsg("active", 1))
	p.send(echoing(roleMsg("active", 1), first.Nonce))
	if err := keydir.Write(dir, groupKeys(map[string][]byte{"k1": master1, "k2": master2}), ""); err != nil {
		t.Fatal(err)
	}
	p.masters["k2"], p.kid = master2, "k2"
	if a := p.send(echoing(roleMsg("active", 1), first.Nonce)); a.Status != wire.StatusOK || a.Kid != "k2" {
		t.Fatalf("renewal under the new key acked %+v", a)
	}
	// The old key is still accepted until it is removed.
	p.kid = "k1"
	p.send(roleMsg("standby", 2))
	wantStats(t, l, Stats{Received: 4, Accepted: 2, Retry: 1, Renewed: 1})
}

// A listener that cannot verify its renewals (its keys were replaced by
// ones the controller does not have) lapses to standby by itself.
func TestAuthUnverifiableRenewalsLapse(t *testing.T) {
	dir := keyDir(t, groupKeys(map[string][]byte{"k1": master1}))
	l := listen(t, Config{KeyDir: dir, KeyPoll: time.Millisecond})
	p := newAuthPeer(t, l)
	m := roleMsg("active", 1)
	m.TTLMillis = 200
	first := p.send(m)
	if a := p.send(echoing(m, first.Nonce)); a.Status != wire.StatusOK {
		t.Fatalf("grant %q", a.Status)
	}
	if s := nextChange(t, l); s.Role != Active {
		t.Fatalf("change %+v", s)
	}
	if err := keydir.Write(dir, map[string][]byte{"k1": bytes.Repeat([]byte{5}, 32)}, ""); err != nil {
		t.Fatal(err)
	}
	// The reload is due by time (KeyPoll since the last read), which is
	// what is tested: let one poll interval pass, or a fast machine still
	// verifies the renewal with the keys read for the grant.
	time.Sleep(5 * time.Millisecond)
	p.raw(p.seal(echoing(m, first.Nonce)))
	p.noReply()
	if s := nextChange(t, l); s.Role != Standby || !s.Fenced {
		t.Fatalf("change %+v, want fenced standby", s)
	}
	if st := l.Stats(); st.BadMAC != 1 || st.Lapsed != 1 {
		t.Fatalf("stats %+v", st)
	}
}

// A key directory updated with something unreadable keeps the keys in
// use (the group goes on) and says why in KeyError.
func TestAuthBrokenKeyUpdateKeepsKeys(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "k1")
	if err := os.WriteFile(file, []byte(rolekey.Encode(rolekey.GroupKey(master1, "ns/g"))), 0o600); err != nil {
		t.Fatal(err)
	}
	l := listen(t, Config{KeyDir: dir, KeyPoll: time.Nanosecond})
	p := newAuthPeer(t, l)
	p.send(roleMsg("standby", 1))
	if err := os.WriteFile(file, []byte("not base64!"), 0o600); err != nil {
		t.Fatal(err)
	}
	if a := p.send(roleMsg("standby", 2)); a.Status != wire.StatusOK {
		t.Fatalf("acked %q", a.Status)
	}
	if l.KeyError() == nil {
		t.Fatal("no KeyError after an unreadable update")
	}
	wantStats(t, l, Stats{Received: 2, Accepted: 2})
}
