package wire

import "time"

// Replay refusal: every sender numbers its datagrams with Ctr, strictly
// increasing within its Boot. A receiver accepts each (Boot, Ctr) at most
// once. Datagrams of one sender can overtake each other (concurrent sends
// from several goroutines, the network reordering them), so, as IPsec and
// DTLS do (RFC 4303 §3.4.3), a receiver keeps a window of the last 64
// counters below the highest seen, accepts an unseen one inside it, and
// refuses anything older. A Boot unheard of for longer than the freshness
// window can be forgotten: whatever it sent before is refused by its TS.

// ReplayWindow is the state of one sender boot; the zero value has seen
// nothing.
type ReplayWindow struct {
	top  uint64 // highest counter accepted
	seen uint64 // bit i: counter top-i accepted
}

// Accept records ctr and reports whether it is new: above everything seen,
// or inside the window and not seen yet. Counter 0 is never valid.
func (w *ReplayWindow) Accept(ctr uint64) bool {
	switch {
	case ctr == 0:
		return false
	case ctr > w.top:
		if shift := ctr - w.top; shift >= 64 {
			w.seen = 1
		} else {
			w.seen = w.seen<<shift | 1
		}
		w.top = ctr
		return true
	case w.top-ctr >= 64:
		return false
	default:
		bit := uint64(1) << (w.top - ctr)
		if w.seen&bit != 0 {
			return false
		}
		w.seen |= bit
		return true
	}
}

// Replays is a receiver's replay state: one window per sender boot. Only
// datagrams whose MAC verified may be recorded, so a forger cannot fill it.
// Not safe for concurrent use.
type Replays struct {
	window time.Duration
	boots  map[uint64]*bootWindow
	pruned time.Time
}

type bootWindow struct {
	ReplayWindow
	last time.Time // when a datagram of this boot was last accepted
}

// NewReplays keeps each boot's window until freshness has passed without
// a datagram from it.
func NewReplays(freshness time.Duration) *Replays {
	return &Replays{window: freshness, boots: map[uint64]*bootWindow{}}
}

// Accept records (boot, ctr), received at now, and reports whether it is
// new.
func (r *Replays) Accept(boot, ctr uint64, now time.Time) bool {
	r.prune(now)
	w := r.boots[boot]
	if w == nil {
		w = &bootWindow{}
		r.boots[boot] = w
	}
	if !w.Accept(ctr) {
		return false
	}
	w.last = now
	return true
}

// prune forgets, at most once per window, the boots silent for two: any
// datagram of theirs is out of the freshness window by now (one window for
// its TS, one for the sender's clock being ahead).
func (r *Replays) prune(now time.Time) {
	if now.Sub(r.pruned) < r.window {
		return
	}
	r.pruned = now
	for b, w := range r.boots {
		if now.Sub(w.last) > 2*r.window {
			delete(r.boots, b)
		}
	}
}

// Len is the number of boots remembered.
func (r *Replays) Len() int { return len(r.boots) }
