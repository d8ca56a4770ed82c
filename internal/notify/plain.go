package notify

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"time"
)

// Plain is one plain datagram to send: the seed design's "become active",
// for an application that treats any datagram on its port as that order
// and answers nothing (the controller's plain-datagram mode).
type Plain struct {
	Addr    netip.AddrPort
	Payload []byte
	// Repeats is how many copies are sent, Spacing apart: with no ack, a
	// copy is the only defence against a lost datagram, and the app takes
	// the second "become active" as it took the first.
	Repeats int
	Spacing time.Duration
}

// SendPlain sends p's copies from a socket of its own and returns how many
// left. It stops early, with ctx's error, when ctx ends (the leader's lease
// may have run out: no copy may leave after that).
func SendPlain(ctx context.Context, p Plain) (int, error) {
	if p.Repeats < 1 {
		return 0, fmt.Errorf("plain datagram to %s: %d copies", p.Addr, p.Repeats)
	}
	// Unconnected: an ICMP "port unreachable" for one copy (the app not
	// bound yet) must not fail the copies after it.
	conn, err := net.ListenUDP("udp", nil)
	if err != nil {
		return 0, fmt.Errorf("plain datagram to %s: %w", p.Addr, err)
	}
	defer conn.Close()
	var timer *time.Timer
	for i := range p.Repeats {
		if i > 0 {
			if timer == nil {
				timer = time.NewTimer(p.Spacing)
				defer timer.Stop()
			} else {
				timer.Reset(p.Spacing)
			}
			select {
			case <-timer.C:
			case <-ctx.Done():
				return i, ctx.Err()
			}
		}
		if err := ctx.Err(); err != nil {
			return i, err
		}
		if _, err := conn.WriteToUDPAddrPort(p.Payload, p.Addr); err != nil {
			return i, fmt.Errorf("plain datagram to %s: %w", p.Addr, err)
		}
	}
	return p.Repeats, nil
}
