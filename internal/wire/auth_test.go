package wire

import (
	"bytes"
	"encoding/base64"
	"errors"
	"strings"
	"testing"
	"time"
)

func authRole() Message {
	m := validRole()
	m.Kid, m.Boot, m.Ctr, m.TS = "k1", 77, 3, 1764600000000
	return m
}

// What Seal produces, Open takes apart again into the encoded message and
// its MAC, and the datagram stays one JSON object a receiver without keys
// decodes as the same message.
func TestSealOpen(t *testing.T) {
	key := bytes.Repeat([]byte{7}, 32)
	b, err := Encode(authRole())
	if err != nil {
		t.Fatal(err)
	}
	d, err := Seal(b, key)
	if err != nil {
		t.Fatal(err)
	}
	body, sum := Open(d)
	if !bytes.Equal(body, b) || !Verify(key, body, sum) {
		t.Fatalf("Open(Seal(b)) = %s, verified %v", body, Verify(key, body, sum))
	}
	if m, err := Decode(d); err != nil || m != authRole() {
		t.Fatalf("a receiver without keys decodes %+v, %v", m, err)
	}
	if Verify(bytes.Repeat([]byte{8}, 32), body, sum) {
		t.Fatal("verified under another key")
	}
	// Any byte changed anywhere outside the MAC fails verification.
	for i := range len(d) - macTail {
		bad := bytes.Clone(d)
		bad[i] ^= 0x01
		if body, sum := Open(bad); sum != nil && Verify(key, body, sum) {
			t.Fatalf("byte %d changed and still verified: %s", i, bad)
		}
	}
	// Without a MAC, the body is the datagram.
	if body, sum := Open(b); sum != nil || !bytes.Equal(body, b) {
		t.Fatalf("Open of an unsealed datagram: %s %x", body, sum)
	}
}

func TestSealTooLarge(t *testing.T) {
	m := authRole()
	m.Group = string(bytes.Repeat([]byte{'g'}, MaxSize-240))
	b, err := Encode(m)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Seal(b, []byte("k")); !errors.Is(err, ErrOversized) {
		t.Fatalf("sealed %d bytes: %v", len(b), err)
	}
}

func TestReplayWindow(t *testing.T) {
	tests := []struct {
		name string
		seq  []uint64
		want []bool
	}{
		{"in order", []uint64{1, 2, 3}, []bool{true, true, true}},
		{"duplicate", []uint64{1, 1}, []bool{true, false}},
		// Concurrent sends overtake each other: an unseen counter just
		// below the highest is still new.
		{"reordered", []uint64{2, 1, 3, 1}, []bool{true, true, true, false}},
		{"gap", []uint64{5, 3, 4, 3}, []bool{true, true, true, false}},
		// Older than the window: cannot tell, so refused.
		{"too old", []uint64{100, 36, 37}, []bool{true, false, true}},
		{"jump past the window", []uint64{1, 200, 1, 199}, []bool{true, true, false, true}},
		{"zero", []uint64{0}, []bool{false}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var w ReplayWindow
			for i, c := range tt.seq {
				if got := w.Accept(c); got != tt.want[i] {
					t.Fatalf("Accept(%d) (#%d) = %v, want %v", c, i, got, tt.want[i])
				}
			}
		})
	}
}

// A boot silent for two freshness windows is forgotten; its counters then
// start afresh, which is safe because its old datagrams are expired.
func TestReplaysForget(t *testing.T) {
	r := NewReplays(time.Second)
	t0 := time.Now()
	if !r.Accept(1, 5, t0) || r.Accept(1, 5, t0) || !r.Accept(2, 5, t0) {
		t.Fatal("per-boot windows")
	}
	if !r.Accept(2, 6, t0.Add(1500*time.Millisecond)) || r.Len() != 2 {
		t.Fatal("pruned too early")
	}
	r.Accept(2, 7, t0.Add(2500*time.Millisecond))
	if r.Len() != 1 {
		t.Fatalf("boot 1 not forgotten: %d boots", r.Len())
	}
}

func TestFresh(t *testing.T) {
	now := time.UnixMilli(1764600000000)
	tests := []struct {
		name string
		ts   uint64
		want bool
	}{
		{"now", StampMillis(now), true},
		{"just old enough", StampMillis(now.Add(-30 * time.Second)), true},
		{"too old", StampMillis(now.Add(-31 * time.Second)), false},
		// The sender's clock may be ahead of the receiver's.
		{"ahead", StampMillis(now.Add(20 * time.Second)), true},
		{"too far ahead", StampMillis(now.Add(31 * time.Second)), false},
		{"absurd", 1 << 63, false},
	}
	for _, tt := range tests {
		if got := Fresh(tt.ts, now, DefaultFreshness); got != tt.want {
			t.Errorf("%s: Fresh = %v", tt.name, got)
		}
	}
}

// What authentication adds per datagram: the sender's Seal, the
// receiver's Open and Verify (docs/protocol.md, Cost).
func BenchmarkAuth(b *testing.B) {
	key := bytes.Repeat([]byte{7}, 32)
	enc, err := Encode(authRole())
	if err != nil {
		b.Fatal(err)
	}
	d, err := Seal(enc, key)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("seal", func(b *testing.B) {
		for b.Loop() {
			if _, err := Seal(enc, key); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("open+verify", func(b *testing.B) {
		for b.Loop() {
			body, sum := Open(d)
			if !Verify(key, body, sum) {
				b.Fatal("not verified")
			}
		}
	})
}

// The bound is on the whole datagram: a signed one over MaxSize is not
// opened, so Decode refuses it as oversized.
func TestOpenRefusesOversizedSigned(t *testing.T) {
	key := []byte("0123456789abcdef0123456789abcdef")
	body := []byte(`{"v":2,"pad":"` + strings.Repeat("x", MaxSize-30) + `"}`)
	sum := mac(key, body)
	signed := append(append(body[:len(body)-1:len(body)-1], macMember...), base64.RawURLEncoding.EncodeToString(sum)+`"}`...)
	if len(signed) <= MaxSize {
		t.Fatalf("test datagram has %d bytes, want more than %d", len(signed), MaxSize)
	}
	got, s := Open(signed)
	if s != nil || len(got) != len(signed) {
		t.Fatalf("Open split an oversized datagram (%d bytes)", len(signed))
	}
	if _, err := Decode(got); !errors.Is(err, ErrOversized) {
		t.Fatalf("Decode: %v, want ErrOversized", err)
	}
}
