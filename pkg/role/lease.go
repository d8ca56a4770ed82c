package role

import (
	"math/rand/v2"
	"time"
)

// The role lease, listener side. See the package documentation and
// docs/protocol.md for the protocol and its guarantee; this file keeps the
// bookkeeping pure so that it can be tested without sockets or clocks.

// nonceRing remembers the nonces of the listener's latest acks and when each
// ack was sent. A renewal that echoes one of them extends the lease to that
// send time plus the TTL: the send time is on this process's clock and
// precedes, in real time, the controller's receipt of the ack and so its
// sending of any renewal echoing it. However late a renewal arrives, and
// however often it is replayed, it can therefore never carry the lease past
// what the controller accounted for when it sent it.
//
// The controller echoes the newest nonce it has seen, so a handful of
// entries is plenty even with reordered datagrams; an echo of a nonce that
// has been overwritten is simply not valid (answered "retry"), which is safe.
type nonceRing struct {
	n    [nonceSlots]uint64
	at   [nonceSlots]time.Time
	next int
	// random draws the nonces; rand.Uint64 unless a test makes them
	// predictable (the protocol's test vectors).
	random func() uint64
}

const nonceSlots = 16

// issue returns a fresh nonce, recorded as sent at t. Nonces are random so
// that a restarted listener (whose ring is empty) never accepts an echo
// meant for its previous incarnation, and so that a peer cannot guess one
// it has not seen; 0 means "no nonce" on the wire.
func (r *nonceRing) issue(t time.Time) uint64 {
	random := r.random
	if random == nil {
		random = rand.Uint64
	}
	n := random()
	for n == 0 {
		n = random()
	}
	r.n[r.next], r.at[r.next] = n, t
	r.next = (r.next + 1) % nonceSlots
	return n
}

// sentAt returns when the ack carrying n was sent.
func (r *nonceRing) sentAt(n uint64) (time.Time, bool) {
	if n == 0 {
		return time.Time{}, false
	}
	for i, v := range r.n {
		if v == n {
			return r.at[i], true
		}
	}
	return time.Time{}, false
}

// leaseEnd is the expiry a renewal echoing n with this TTL grants at now:
// sentAt(n)+ttl if that is still in the future, else nothing (the nonce is
// unknown or too old to grant anything).
func (r *nonceRing) leaseEnd(n uint64, ttl time.Duration, now time.Time) (time.Time, bool) {
	at, ok := r.sentAt(n)
	if !ok {
		return time.Time{}, false
	}
	end := at.Add(ttl)
	if !now.Before(end) {
		return time.Time{}, false
	}
	return end, true
}

// lapse returns the state a lease lapse leaves: Standby, Fenced, at the
// same epoch, changed at the moment the lease ran out (not when the
// listener noticed), so that a recorder of changes sees the exact interval
// during which the role was held. ok is false when s holds no lease that has
// run out by now.
func lapse(s State, now time.Time) (State, bool) {
	if s.Role != Active || now.Before(s.Expiry) {
		return s, false
	}
	s.Role, s.Fenced, s.Changed = Standby, true, s.Expiry
	return s, true
}
