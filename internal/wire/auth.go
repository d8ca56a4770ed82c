package wire

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"time"
)

// Authentication (docs/protocol.md, "Authentication"). A sender that has
// keys sets Kid, Boot, Ctr and TS, encodes the message and Seals it: Seal
// appends the MAC as the object's last member, so the datagram stays one
// readable JSON object, and a receiver without keys (unauthenticated mode)
// decodes it as before, the unknown "mac" member ignored. A receiver with
// keys Opens the datagram first: the MAC covers every byte of the datagram
// but the "mac" member itself, so nothing a receiver acts on is outside it.

// Errors of the authentication checks, so that receivers can count each
// reason of refusal with errors.Is.
var (
	// ErrUnauthenticated: no MAC, or no authentication fields.
	ErrUnauthenticated = errors.New("wire: message not authenticated")
	// ErrUnknownKey: Kid names no key the receiver has.
	ErrUnknownKey = errors.New("wire: unknown key id")
	// ErrBadMAC: the MAC does not verify with the key Kid names.
	ErrBadMAC = errors.New("wire: bad MAC")
	// ErrExpired: TS is outside the receiver's freshness window.
	ErrExpired = errors.New("wire: message outside the freshness window")
	// ErrReplayed: the (Boot, Ctr) pair was seen before, or is too old to
	// tell.
	ErrReplayed = errors.New("wire: message replayed")
)

// MaxKidLen bounds a key id: a file name in the mounted Secret.
const MaxKidLen = 64

// DefaultFreshness is the freshness window of both sides: a datagram whose
// TS differs from the receiver's wall clock by more is refused. It is a
// bound on the senders' wall-clock skew (NTP keeps nodes within well under
// a second) plus delivery; it is not part of the lease's guarantee, which
// needs no synchronised clocks. It only bounds how long a receiver must
// remember a sender's counters: a replay older than it is refused by TS, a
// younger one by the counters.
const DefaultFreshness = 30 * time.Second

// macMember is what Seal appends; the MAC is HMAC-SHA256, unpadded
// base64url (43 characters).
const (
	macMember = `,"mac":"`
	macB64Len = 43
	macTail   = len(macMember) + macB64Len + len(`"}`)
)

// ValidKid reports whether kid can name a key: 1..MaxKidLen characters of
// [A-Za-z0-9._-], the characters a Secret's data key may hold, none of
// which JSON escapes; "." and ".." and names starting with "." (the
// kubelet's own entries in a Secret volume) are not key ids.
func ValidKid(kid string) bool {
	if kid == "" || len(kid) > MaxKidLen || kid[0] == '.' {
		return false
	}
	for i := 0; i < len(kid); i++ {
		switch c := kid[i]; {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '.', c == '_', c == '-':
		default:
			return false
		}
	}
	return true
}

func validateAuth(m Message) error {
	switch {
	case m.Kid == "" && m.Boot == 0 && m.Ctr == 0 && m.TS == 0:
		return nil
	case !ValidKid(m.Kid) || m.Boot == 0 || m.Ctr == 0 || m.TS == 0:
		return fmt.Errorf("%w: kid, boot, ctr and ts must be set together (kid %s)", ErrMalformed, quote(m.Kid))
	}
	return nil
}

// Authenticated reports whether m carries the authentication fields.
func (m Message) Authenticated() bool { return m.Kid != "" }

// Seal returns the datagram b (an encoded message, from Encode) with its
// MAC under key appended. The result is at most MaxSize bytes, or an
// ErrOversized error.
func Seal(b, key []byte) ([]byte, error) {
	if len(b) < 2 || b[len(b)-1] != '}' {
		return nil, fmt.Errorf("%w: not an encoded message", ErrMalformed)
	}
	if len(b)-1+macTail > MaxSize {
		return nil, fmt.Errorf("%w: %d bytes with the MAC", ErrOversized, len(b)-1+macTail)
	}
	sum := mac(key, b)
	out := make([]byte, 0, len(b)-1+macTail)
	out = append(out, b[:len(b)-1]...)
	out = append(out, macMember...)
	out = base64.RawURLEncoding.AppendEncode(out, sum)
	return append(out, `"}`...), nil
}

// Open splits a datagram into the message it carries, without its "mac"
// member, and the MAC (nil when there is none; the body is then the
// datagram itself). It does not verify anything: Decode the body, look up
// the key its Kid and Group name, then Verify.
func Open(b []byte) (body, sum []byte) {
	n := len(b)
	// The bound is on the whole datagram, MAC included: an oversized one
	// is returned whole, for Decode to refuse.
	if n > MaxSize || n < macTail+1 || string(b[n-2:]) != `"}` || string(b[n-macTail:n-macTail+len(macMember)]) != macMember {
		return b, nil
	}
	sum, err := base64.RawURLEncoding.DecodeString(string(b[n-macB64Len-2 : n-2]))
	if err != nil || len(sum) != sha256.Size {
		return b, nil
	}
	// A fresh slice: b is the caller's receive buffer.
	body = make([]byte, 0, n-macTail+1)
	body = append(body, b[:n-macTail]...)
	return append(body, '}'), sum
}

// Verify reports whether sum is body's MAC under key, in constant time.
func Verify(key, body, sum []byte) bool {
	return len(sum) == sha256.Size && hmac.Equal(mac(key, body), sum)
}

func mac(key, b []byte) []byte {
	h := hmac.New(sha256.New, key)
	h.Write(b)
	return h.Sum(nil)
}

// Fresh reports whether a datagram stamped ts (Unix milliseconds) is
// within window of now, either way: a sender's clock may be ahead.
func Fresh(ts uint64, now time.Time, window time.Duration) bool {
	d := time.Duration(now.UnixMilli()-int64(min(ts, 1<<62))) * time.Millisecond
	return d <= window && d >= -window
}

// StampMillis is t as a TS.
func StampMillis(t time.Time) uint64 { return uint64(max(t.UnixMilli(), 1)) }
