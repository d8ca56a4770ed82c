package notify

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/hapod/hapod/internal/wire"
)

// Renewals: the controller keeps the active pod's role lease alive by
// resending its active role message every renew interval, each echoing the
// newest nonce the pod has acked with. Unlike Send, a renewal does not wait:
// thousands of leases are renewed from one goroutine (the controller's
// renewal loop), and their acks arrive on the reading goroutine, which hands
// every ack that no Send waits for to the ack handler.

// Ack is an ack that no Send was waiting for: a renewal's, or a Send's that
// came too late.
type Ack struct {
	Group  string
	Pod    string
	UID    string
	Role   string
	Epoch  uint64
	Seq    uint64
	Status string
	Nonce  uint64
	Lease  bool
	At     time.Time      // when the reading goroutine received it
	From   netip.AddrPort // where it came from
}

// AckVerdict is what an ack handler made of an ack.
type AckVerdict int

// Ack handler verdicts.
const (
	// AckUnexpected: no renewal expected it (counted as unmatched).
	AckUnexpected AckVerdict = iota
	// AckExpected: a renewal's, or another ack the handler took.
	AckExpected
	// AckWrongSource: it names a pod whose address is another (counted as
	// refused, wrong-source): another pod of the group, which holds the
	// same subkey, cannot speak for this one.
	AckWrongSource
)

// SetAckHandler makes h receive every well-formed ack that no Send is
// waiting for, on the reading goroutine: h must be quick and must not
// block. h returns whether the ack was one it expected (a renewal's); the
// unexpected are counted in hapod_notify_unmatched_acks_total, those from
// the wrong address in hapod_notify_refused_acks_total. nil removes the
// handler.
func (n *Notifier) SetAckHandler(h func(Ack) AckVerdict) {
	if h == nil {
		n.onAck.Store(nil)
		return
	}
	n.onAck.Store(&h)
}

// Renew sends t's active role once, echoing echo, and returns at once; the
// ack goes to the ack handler. seq is the message's sequence number.
func (n *Notifier) Renew(t Target, echo uint64) (seq uint64, err error) {
	if t.Role != wire.RoleActive {
		return 0, fmt.Errorf("notify: renewal of role %q: only an active role has a lease", t.Role)
	}
	if !t.Addr.IsValid() || t.Addr.Port() == 0 {
		return 0, fmt.Errorf("notify: invalid target address %q", t.Addr)
	}
	m, k, err := n.encode(t, echo)
	if err != nil {
		return 0, fmt.Errorf("notify: invalid target: %w", err)
	}
	if err := n.write(m, t.Addr, time.Now()); err != nil {
		n.metrics.sendErrors.Inc()
		return k.seq, err
	}
	return k.seq, nil
}

func (n *Notifier) unmatchedAck(m wire.Message, from netip.AddrPort, at time.Time) {
	v := AckUnexpected
	if h := n.onAck.Load(); h != nil {
		v = (*h)(Ack{
			Group: m.Group, Pod: m.Pod, UID: m.UID, Role: m.Role, Epoch: m.Epoch, Seq: m.Seq,
			Status: m.Status, Nonce: m.Nonce, Lease: m.Lease, At: at, From: from,
		})
	}
	switch v {
	case AckExpected:
	case AckWrongSource:
		n.metrics.refused.WithLabelValues(refusedWrongSource).Inc()
	default:
		n.metrics.unmatched.Inc()
	}
}
