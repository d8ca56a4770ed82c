package udprelay_test

import (
	"bytes"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/hapod/hapod/internal/dev/keydir"
	"github.com/hapod/hapod/internal/dev/udprelay"
	"github.com/hapod/hapod/internal/notify"
	"github.com/hapod/hapod/internal/rolekey"
	"github.com/hapod/hapod/internal/wire"
	"github.com/hapod/hapod/pkg/role"
)

// The role protocol through the relay: internal/notify's Notifier (the
// controller's sender) on one side, a pkg/role Listener (the app's) on the
// other, as in internal/notify's own tests.

var master = bytes.Repeat([]byte{1}, 32)

const group = "ns/g"

// pod is a listener behind a relay, and a controller's notifier.
type pod struct {
	relay *udprelay.Relay
	l     *role.Listener
	n     *notify.Notifier
	keys  *rolekey.Source // the controller's, nil without keys
}

func newPod(t *testing.T, keyed bool, seed uint64) *pod {
	t.Helper()
	cfg := role.Config{Addr: "127.0.0.1:0", PodUID: "uid-0", PodName: "p-0", Group: group}
	p := &pod{}
	if keyed {
		cfg.KeyDir = t.TempDir()
		if err := keydir.Write(cfg.KeyDir, map[string][]byte{"k1": rolekey.GroupKey(master, group)}, ""); err != nil {
			t.Fatal(err)
		}
		dir := t.TempDir()
		if err := keydir.Write(dir, map[string][]byte{"k1": master}, ""); err != nil {
			t.Fatal(err)
		}
		src, err := rolekey.Open(dir, 0, 0)
		if err != nil {
			t.Fatal(err)
		}
		p.keys = src
	}
	l, err := role.Listen(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	p.l = l
	p.relay = newRelay(t, l.Addr().(*net.UDPAddr).AddrPort(), seed)
	// A short deadline, and send tries again, as the controller retries
	// a switch: a Notifier stretches its resend wait to the round trips
	// it measures (up to a quarter of its deadline), and under 30% loss
	// those include many resends, so one long deadline would make every
	// later Send of this notifier slow.
	p.n = p.notifier(t, 2*time.Second)
	if keyed != p.n.Authenticated() || keyed != l.Authenticated() {
		t.Fatalf("keys: notifier %v, listener %v, want %v", p.n.Authenticated(), l.Authenticated(), keyed)
	}
	return p
}

func (p *pod) notifier(t *testing.T, deadline time.Duration) *notify.Notifier {
	t.Helper()
	n, err := notify.New(notify.Config{ListenAddr: "127.0.0.1:0", Deadline: deadline, Keys: p.keys})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Close() })
	return n
}

// target is the pod as the controller sees it: at the relay's front address.
// The lease lasts far longer than any test, so that what the listener
// holds only changes by what it is sent.
func (p *pod) target(r string, epoch uint64) notify.Target {
	return notify.Target{
		Addr: p.relay.Addr(), Group: group, Pod: "p-0", UID: "uid-0",
		Role: r, Epoch: epoch, TTL: time.Minute,
	}
}

// sendTries bounds the Sends of one change (each a Notifier deadline).
const sendTries = 10

// send tells the pod its role, trying again after a timeout as the
// controller does, and fails the test unless it is acked and held.
func (p *pod) send(t *testing.T, n *notify.Notifier, r string, epoch uint64) {
	t.Helper()
	var res notify.Result
	for try := 1; try <= sendTries; try++ {
		if res = n.Send(t.Context(), p.target(r, epoch)); res.Acked {
			break
		}
		if !errors.Is(res.Err, notify.ErrTimeout) {
			break
		}
		t.Logf("send %s at %d, try %d: %+v", r, epoch, try, res)
	}
	if !res.Acked || res.Err != nil {
		t.Fatalf("send %s at %d: %+v (relay %+v, listener %+v)", r, epoch, res, p.relay.Stats(), p.l.Stats())
	}
	p.holds(t, r, epoch)
}

func (p *pod) holds(t *testing.T, r string, epoch uint64) {
	t.Helper()
	if s := p.l.State(); string(s.Role) != r || s.Epoch != epoch {
		t.Fatalf("listener holds %+v, want %s at %d", s, r, epoch)
	}
}

func both(t *testing.T, f func(t *testing.T, keyed bool)) {
	t.Run("unauthenticated", func(t *testing.T) { f(t, false) })
	t.Run("keys", func(t *testing.T) { f(t, true) })
}

// Under 30% loss both ways, duplicates and reordering, every role sent is
// acked and held; cut, a send times out and changes nothing; uncut, the
// next one goes through.
func TestProtocolThroughFaults(t *testing.T) {
	both(t, func(t *testing.T, keyed bool) {
		p := newPod(t, keyed, 21)
		setFaults(t, p.relay, udprelay.Both, udprelay.Faults{
			Loss: 0.3, Dup: 0.2, Reorder: 0.3, ReorderMax: 5 * time.Millisecond, Delay: time.Millisecond,
		})
		// Until every fault has happened both ways, and at least 6 changes.
		epoch := uint64(0)
		exercised := func() bool {
			st := p.relay.Stats()
			for _, c := range []udprelay.Counters{st.ToApp, st.ToController} {
				if c.Dropped == 0 || c.Duplicated == 0 || c.Reordered == 0 {
					return false
				}
			}
			return true
		}
		for epoch < 6 || !exercised() {
			if epoch == 60 {
				t.Fatalf("faults not all exercised after %d changes: %+v", epoch, p.relay.Stats())
			}
			epoch++
			r := wire.RoleStandby
			if epoch%2 == 1 {
				r = wire.RoleActive
			}
			p.send(t, p.n, r, epoch)
		}
		t.Logf("%d changes; relay %+v; listener %+v", epoch, p.relay.Stats(), p.l.Stats())

		p.relay.Cut(true)
		before := p.l.Stats()
		quick := p.notifier(t, 300*time.Millisecond)
		res := quick.Send(t.Context(), p.target(wire.RoleActive, epoch+1))
		if res.Acked || !errors.Is(res.Err, notify.ErrTimeout) {
			t.Fatalf("cut send: %+v", res)
		}
		if after := p.l.Stats(); after.Accepted != before.Accepted || after.Retry != before.Retry {
			t.Fatalf("a cut pod took something: %+v, before %+v", after, before)
		}
		p.holds(t, wireRole(epoch), epoch)

		p.relay.Cut(false)
		p.relay.Reset()
		p.send(t, p.n, wire.RoleActive, epoch+1)
	})
}

func wireRole(epoch uint64) string {
	if epoch%2 == 1 {
		return wire.RoleActive
	}
	return wire.RoleStandby
}

// Replayed role messages of an earlier epoch change nothing: refused as
// replays with keys, as stale without.
func TestProtocolReplayRefused(t *testing.T) {
	both(t, func(t *testing.T, keyed bool) {
		p := newPod(t, keyed, 22)
		p.send(t, p.n, wire.RoleActive, 1) // a grant: two datagrams, one echoing a nonce
		p.send(t, p.n, wire.RoleStandby, 2)
		captured := len(p.relay.Captured())
		before := p.l.Stats()
		n, err := p.relay.Replay(captured)
		if err != nil || n != captured {
			t.Fatalf("replayed %d of %d: %v", n, captured, err)
		}
		waitFor(t, "the listener read the replays", func() bool {
			return p.l.Stats().Received == before.Received+uint64(n)
		})
		p.holds(t, wire.RoleStandby, 2)
		after := p.l.Stats()
		if after.Accepted != before.Accepted || after.Renewed != before.Renewed || after.Retry != before.Retry {
			t.Fatalf("a replay was taken: %+v, before %+v", after, before)
		}
		refused := after.Stale + after.Duplicate - before.Stale - before.Duplicate
		if keyed {
			refused = after.Replayed - before.Replayed
		}
		if refused != uint64(n) {
			t.Fatalf("%d of %d replays refused: %+v, before %+v", refused, n, after, before)
		}
	})
}

// Without keys, a replayed grant of the current epoch, after the lease it
// granted lapsed, grants nothing: its echo is too old (the lease is what
// protects an unauthenticated listener from replays).
func TestProtocolReplayAfterLapse(t *testing.T) {
	p := newPod(t, false, 23)
	tgt := p.target(wire.RoleActive, 1)
	tgt.TTL = 50 * time.Millisecond
	if res := p.n.Send(t.Context(), tgt); !res.Acked {
		t.Fatalf("grant: %+v", res)
	}
	waitFor(t, "the lease lapsed", func() bool { return p.l.State().Fenced })
	before := p.l.Stats()
	n, err := p.relay.Replay(len(p.relay.Captured()))
	if err != nil || n != 2 {
		t.Fatalf("replayed %d: %v", n, err)
	}
	waitFor(t, "the listener read the replays", func() bool {
		return p.l.Stats().Received == before.Received+uint64(n)
	})
	if p.l.Active() || !p.l.State().Fenced {
		t.Fatalf("a replayed grant made the listener active: %+v", p.l.State())
	}
	if after := p.l.Stats(); after.Retry-before.Retry != 2 || after.Accepted != before.Accepted {
		t.Fatalf("listener %+v, before %+v", after, before)
	}
}

// forged is a role message from an attacker, a standby at a high epoch
// that would demote the active pod; auth says how it is authenticated.
func forged(t *testing.T, auth string) []byte {
	t.Helper()
	m := wire.Message{
		Type: wire.TypeRole, Group: group, Pod: "p-0", UID: "uid-0",
		Role: wire.RoleStandby, Epoch: 1000, Seq: 1,
	}
	if auth != "none" {
		m.Kid, m.Boot, m.Ctr, m.TS = "k1", 7, 1, wire.StampMillis(time.Now())
	}
	b, err := wire.Encode(m)
	if err != nil {
		t.Fatal(err)
	}
	key := map[string][]byte{
		"wrong key":   bytes.Repeat([]byte{9}, 32),
		"master key":  master, // not the group's subkey
		"other group": rolekey.GroupKey(master, "ns/other"),
	}[auth]
	if key == nil {
		return b // "none", or fields without a MAC
	}
	if b, err = wire.Seal(b, key); err != nil {
		t.Fatal(err)
	}
	return b
}

// With keys, forged datagrams are refused unanswered, each counted by
// reason, and the active pod stays active.
func TestProtocolForgedRefused(t *testing.T) {
	p := newPod(t, true, 24)
	p.send(t, p.n, wire.RoleActive, 1)
	before := p.l.Stats()
	auths := []string{"none", "fields without a MAC", "wrong key", "master key", "other group"}
	for _, a := range auths {
		if err := p.relay.SendToApp(forged(t, a)); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "the listener read the forgeries", func() bool {
		return p.l.Stats().Received == before.Received+uint64(len(auths))
	})
	after := p.l.Stats()
	if d := after.Unauthenticated - before.Unauthenticated; d != 2 {
		t.Errorf("%d unauthenticated, want 2 (no MAC)", d)
	}
	if d := after.BadMAC - before.BadMAC; d != 3 {
		t.Errorf("%d bad MACs, want 3 (a wrong key, the master key, another group's)", d)
	}
	if after.Accepted != before.Accepted || after.Stale != before.Stale {
		t.Errorf("a forgery reached the epoch rules: %+v, before %+v", after, before)
	}
	p.holds(t, wire.RoleActive, 1)
	if st := p.relay.Stats().ToApp; st.Forged != uint64(len(auths)) {
		t.Fatalf("forged %d", st.Forged)
	}
}

// Without keys the same attacker completes a grant's round trip itself
// (SendToApp, ForgedReply, SendToApp echoing the nonce) and makes the pod
// active: what keys are for, and what a chaos run can check they stop.
func TestForgedGrantWithoutKeys(t *testing.T) {
	p := newPod(t, false, 25)
	p.send(t, p.n, wire.RoleStandby, 1)
	m := wire.Message{
		Type: wire.TypeRole, Group: group, Pod: "p-0", UID: "uid-0",
		Role: wire.RoleActive, Epoch: 1000, Seq: 1, TTLMillis: 60000,
	}
	for range 2 {
		b, err := wire.Encode(m)
		if err != nil {
			t.Fatal(err)
		}
		if err := p.relay.SendToApp(b); err != nil {
			t.Fatal(err)
		}
		reply, err := p.relay.ForgedReply(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		ack, err := wire.Decode(reply)
		if err != nil {
			t.Fatal(err)
		}
		m.Echo, m.Seq = ack.Nonce, m.Seq+1
	}
	p.holds(t, wire.RoleActive, 1000)
}
