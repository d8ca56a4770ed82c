package wire

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func validRole() Message {
	return Message{
		Version: Version, Type: TypeRole, Group: "shop/db", Pod: "db-0",
		UID: "6f1c2a9e-0000-4000-8000-000000000001", Role: RoleActive, Epoch: 7, Seq: 42,
		TTLMillis: 150, Echo: 9001,
	}
}

func TestRoundTrip(t *testing.T) {
	ack := validRole()
	ack.Type, ack.Status, ack.Nonce, ack.Lease = TypeAck, StatusStale, 1<<63+5, true
	retry := ack
	retry.Status = StatusRetry
	standby := validRole()
	standby.Role, standby.TTLMillis, standby.Echo = RoleStandby, 0, 0
	for _, m := range []Message{validRole(), ack, retry, standby} {
		b, err := Encode(m)
		if err != nil {
			t.Fatalf("Encode(%+v): %v", m, err)
		}
		got, err := Decode(b)
		if err != nil {
			t.Fatalf("Decode(%s): %v", b, err)
		}
		if got != m {
			t.Fatalf("round trip: got %+v, want %+v", got, m)
		}
	}
}

// The literal format is a contract with other implementations and with
// people reading tcpdump, so pin it.
func TestEncodeFormat(t *testing.T) {
	b, err := Encode(validRole())
	if err != nil {
		t.Fatal(err)
	}
	want := `{"v":2,"type":"role","group":"shop/db","pod":"db-0","uid":"6f1c2a9e-0000-4000-8000-000000000001","role":"active","epoch":7,"seq":42,"ttl_ms":150,"echo":9001}`
	if string(b) != want {
		t.Fatalf("got  %s\nwant %s", b, want)
	}
	ack := validRole()
	ack.Type, ack.Status, ack.Nonce, ack.Lease = TypeAck, StatusOK, 77, true
	if b, err = Encode(ack); err != nil {
		t.Fatal(err)
	}
	want = `{"v":2,"type":"ack","group":"shop/db","pod":"db-0","uid":"6f1c2a9e-0000-4000-8000-000000000001","role":"active","epoch":7,"seq":42,"ttl_ms":150,"echo":9001,"status":"ok","nonce":77,"lease":true}`
	if string(b) != want {
		t.Fatalf("got  %s\nwant %s", b, want)
	}
}

func TestTTLMillisOf(t *testing.T) {
	for _, tc := range []struct {
		d    time.Duration
		want uint64
	}{{0, 0}, {-time.Second, 0}, {time.Nanosecond, 1}, {150 * time.Millisecond, 150}, {150*time.Millisecond + 1, 151}} {
		if got := TTLMillisOf(tc.d); got != tc.want {
			t.Errorf("TTLMillisOf(%v) = %d, want %d", tc.d, got, tc.want)
		}
	}
	if got := (Message{TTLMillis: 150}).TTL(); got != 150*time.Millisecond {
		t.Errorf("TTL() = %v", got)
	}
}

func TestEncodeDefaultsVersion(t *testing.T) {
	m := validRole()
	m.Version = 0
	b, err := Encode(m)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Decode(b)
	if err != nil || got.Version != Version {
		t.Fatalf("Decode: %+v, %v", got, err)
	}
}

func TestEncodeRejects(t *testing.T) {
	tests := []struct {
		name string
		edit func(*Message)
		want error
	}{
		// A sender must not claim to speak another version.
		{"other version", func(m *Message) { m.Version = 1 }, ErrVersion},
		// An active role without a lease would never expire.
		{"active without ttl", func(m *Message) { m.TTLMillis = 0 }, ErrMalformed},
		{"ttl too long", func(m *Message) { m.TTLMillis = MaxTTLMillis + 1 }, ErrMalformed},
		{"standby with ttl", func(m *Message) { m.Role = RoleStandby; m.Echo = 0 }, ErrMalformed},
		{"standby with echo", func(m *Message) { m.Role = RoleStandby; m.TTLMillis = 0 }, ErrMalformed},
		{"nonce on role", func(m *Message) { m.Nonce = 1 }, ErrMalformed},
		{"lease on role", func(m *Message) { m.Lease = true }, ErrMalformed},
		{"retry without nonce", func(m *Message) { m.Type, m.Status = TypeAck, StatusRetry }, ErrMalformed},
		// Without a UID the ack could not be matched.
		{"no uid", func(m *Message) { m.UID = "" }, ErrMalformed},
		// Receivers drop anything over MaxSize, so refuse to send it.
		{"oversized", func(m *Message) { m.Group = strings.Repeat("g", MaxSize) }, ErrOversized},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := validRole()
			tt.edit(&m)
			if _, err := Encode(m); !errors.Is(err, tt.want) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
		})
	}
}

func TestDecode(t *testing.T) {
	const ok = `{"v":2,"type":"role","group":"g/x","pod":"p","uid":"u","role":"standby","epoch":1,"seq":1}`
	tests := []struct {
		name string
		in   string
		want error // nil: accepted
	}{
		{"valid", ok, nil},
		{"valid active", `{"v":2,"type":"role","group":"g/x","pod":"p","uid":"u","role":"active","epoch":1,"seq":1,"ttl_ms":150,"echo":5}`, nil},
		// A grant's first message: no nonce to echo yet.
		{"active without echo", `{"v":2,"type":"role","group":"g/x","pod":"p","uid":"u","role":"active","epoch":1,"seq":1,"ttl_ms":150}`, nil},
		// Unknown fields are ignored so that informational additions need no version bump.
		{"unknown field", `{"v":2,"type":"role","group":"g/x","pod":"p","uid":"u","role":"active","epoch":1,"seq":1,"ttl_ms":1,"hint":"x"}`, nil},
		{"valid ack", `{"v":2,"type":"ack","group":"g/x","pod":"p","uid":"u","role":"active","epoch":1,"seq":1,"ttl_ms":150,"status":"wrong-pod"}`, nil},
		{"valid retry", `{"v":2,"type":"ack","group":"g/x","pod":"p","uid":"u","role":"active","epoch":1,"seq":1,"ttl_ms":150,"status":"retry","nonce":18446744073709551615,"lease":true}`, nil},
		{"oversized", `{"v":2,"pad":"` + strings.Repeat("x", MaxSize) + `"}`, ErrOversized},
		{"empty", ``, ErrMalformed},
		{"not json", `hello`, ErrMalformed},
		{"json null", `null`, ErrMalformed},
		{"json array", `[1]`, ErrMalformed},
		{"trailing garbage", ok + `x`, ErrMalformed},
		// Names are exact: encoding/json alone would read "Seq" as seq and
		// keep the last of two members, unlike a stricter implementation.
		{"member twice", `{"v":2,"type":"role","group":"g/x","pod":"p","uid":"u","role":"standby","epoch":1,"seq":1,"seq":2}`, ErrMalformed},
		{"unknown member twice", `{"v":2,"type":"role","group":"g/x","pod":"p","uid":"u","role":"standby","epoch":1,"seq":1,"x":1,"x":2}`, ErrMalformed},
		{"member in another case", `{"v":2,"type":"role","group":"g/x","pod":"p","uid":"u","role":"standby","epoch":1,"Seq":1}`, ErrMalformed},
		{"v in another case", `{"V":2,"v":2,"type":"role","group":"g/x","pod":"p","uid":"u","role":"standby","epoch":1,"seq":1}`, ErrMalformed},
		{"mac in another case", `{"v":2,"type":"role","group":"g/x","pod":"p","uid":"u","role":"standby","epoch":1,"seq":1,"MAC":"x"}`, ErrMalformed},
		{"invalid utf8", `{"v":2,"type":"role","group":"g/x","pod":"p` + "\xff" + `","uid":"u","role":"standby"}`, ErrMalformed},
		// A message must say which version it is; a missing "v" is not a version skew.
		{"no version", `{"type":"role","group":"g/x","pod":"p","uid":"u","role":"standby"}`, ErrMalformed},
		{"version string", `{"v":"2","type":"role"}`, ErrMalformed},
		// A v1 peer (no leases) or a newer one: counted as version skew even
		// if other fields changed type.
		{"v1", `{"v":1,"type":"role","group":"g/x","pod":"p","uid":"u","role":"active","epoch":1,"seq":1}`, ErrVersion},
		{"future version", `{"v":3,"type":"role","epoch":"big"}`, ErrVersion},
		{"version zero", `{"v":0,"type":"role","group":"g/x","pod":"p","uid":"u","role":"standby"}`, ErrVersion},
		{"unknown type", `{"v":2,"type":"hello","group":"g/x","pod":"p","uid":"u","role":"standby"}`, ErrMalformed},
		{"unknown role", `{"v":2,"type":"role","group":"g/x","pod":"p","uid":"u","role":"leader"}`, ErrMalformed},
		{"missing group", `{"v":2,"type":"role","pod":"p","uid":"u","role":"standby"}`, ErrMalformed},
		{"missing pod", `{"v":2,"type":"role","group":"g/x","uid":"u","role":"standby"}`, ErrMalformed},
		{"missing uid", `{"v":2,"type":"role","group":"g/x","pod":"p","role":"standby"}`, ErrMalformed},
		{"negative epoch", `{"v":2,"type":"role","group":"g/x","pod":"p","uid":"u","role":"standby","epoch":-1}`, ErrMalformed},
		{"status on role", `{"v":2,"type":"role","group":"g/x","pod":"p","uid":"u","role":"standby","status":"ok"}`, ErrMalformed},
		{"ack without status", `{"v":2,"type":"ack","group":"g/x","pod":"p","uid":"u","role":"standby"}`, ErrMalformed},
		{"ack unknown status", `{"v":2,"type":"ack","group":"g/x","pod":"p","uid":"u","role":"standby","status":"maybe"}`, ErrMalformed},
		// The lease fields.
		{"active without ttl", `{"v":2,"type":"role","group":"g/x","pod":"p","uid":"u","role":"active","epoch":1,"seq":1}`, ErrMalformed},
		{"ttl too long", `{"v":2,"type":"role","group":"g/x","pod":"p","uid":"u","role":"active","epoch":1,"seq":1,"ttl_ms":3600001}`, ErrMalformed},
		{"negative ttl", `{"v":2,"type":"role","group":"g/x","pod":"p","uid":"u","role":"active","epoch":1,"seq":1,"ttl_ms":-1}`, ErrMalformed},
		{"standby with ttl", `{"v":2,"type":"role","group":"g/x","pod":"p","uid":"u","role":"standby","ttl_ms":150}`, ErrMalformed},
		{"standby with echo", `{"v":2,"type":"role","group":"g/x","pod":"p","uid":"u","role":"standby","echo":3}`, ErrMalformed},
		{"nonce on role", `{"v":2,"type":"role","group":"g/x","pod":"p","uid":"u","role":"active","ttl_ms":1,"nonce":3}`, ErrMalformed},
		{"lease string", `{"v":2,"type":"ack","group":"g/x","pod":"p","uid":"u","role":"standby","status":"ok","lease":"yes"}`, ErrMalformed},
		{"retry without nonce", `{"v":2,"type":"ack","group":"g/x","pod":"p","uid":"u","role":"active","ttl_ms":1,"status":"retry"}`, ErrMalformed},
		{"retry for standby", `{"v":2,"type":"ack","group":"g/x","pod":"p","uid":"u","role":"standby","status":"retry","nonce":1}`, ErrMalformed},
		// One such datagram would fence a listener against every real
		// epoch for good; the controller's epochs stop at MaxEpoch.
		{"epoch above MaxEpoch", `{"v":2,"type":"role","group":"g/x","pod":"p","uid":"u","role":"standby","epoch":2147483648,"seq":1}`, ErrMalformed},
		{"epoch MaxUint64", `{"v":2,"type":"role","group":"g/x","pod":"p","uid":"u","role":"standby","epoch":18446744073709551615,"seq":1}`, ErrMalformed},
		{"epoch MaxEpoch", `{"v":2,"type":"role","group":"g/x","pod":"p","uid":"u","role":"standby","epoch":2147483647,"seq":1}`, nil},
		// The authentication fields: all or none.
		{"authenticated", `{"v":2,"type":"role","group":"g/x","pod":"p","uid":"u","role":"standby","epoch":1,"seq":1,"kid":"k1","boot":5,"ctr":1,"ts":1764600000000}`, nil},
		{"kid alone", `{"v":2,"type":"role","group":"g/x","pod":"p","uid":"u","role":"standby","epoch":1,"seq":1,"kid":"k1"}`, ErrMalformed},
		{"no ctr", `{"v":2,"type":"role","group":"g/x","pod":"p","uid":"u","role":"standby","epoch":1,"seq":1,"kid":"k1","boot":5,"ts":1}`, ErrMalformed},
		{"kid with a slash", `{"v":2,"type":"role","group":"g/x","pod":"p","uid":"u","role":"standby","epoch":1,"seq":1,"kid":"../k","boot":5,"ctr":1,"ts":1}`, ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Decode([]byte(tt.in))
			if tt.want == nil {
				if err != nil {
					t.Fatalf("rejected: %v", err)
				}
				return
			}
			if !errors.Is(err, tt.want) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
		})
	}
}

func FuzzDecode(f *testing.F) {
	for _, s := range []string{
		`{"v":2,"type":"role","group":"g/x","pod":"p","uid":"u","role":"standby","epoch":1,"seq":1}`,
		`{"v":2,"type":"role","group":"g/x","pod":"p","uid":"u","role":"active","epoch":1,"seq":1,"ttl_ms":150,"echo":7}`,
		`{"v":2,"type":"ack","group":"g/x","pod":"p","uid":"u","role":"active","epoch":18446744073709551615,"seq":1,"ttl_ms":1,"status":"ok","nonce":3,"lease":true}`,
		`{"v":2,"type":"ack","group":"g/x","pod":"p","uid":"u","role":"active","epoch":1,"seq":1,"ttl_ms":1,"status":"retry","nonce":3}`,
		`{"v":1}`, `{}`, `null`, `{"V":2,"TYPE":"role"}`, `{"v":2,"pod":"\u2028<&>"}`,
		`{"v":2,"type":"role","group":"g/x","pod":"p","uid":"u","role":"standby","epoch":1,"seq":1,"kid":"k1","boot":5,"ctr":1,"ts":1764600000000,"mac":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}`,
		`{"v":2,"mac":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		// Open takes any bytes apart without panicking, and what it
		// strips is exactly the "mac" member.
		if body, sum := Open(b); sum != nil && len(body) != len(b)-macTail+1 {
			t.Fatalf("Open kept %d of %d bytes", len(body), len(b))
		}
		m, err := Decode(b)
		if err != nil {
			if !errors.Is(err, ErrOversized) && !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrVersion) {
				t.Fatalf("error of no known kind: %v", err)
			}
			return
		}
		enc, err := Encode(m)
		if err != nil {
			// Re-encoding may escape characters the input carried raw
			// (U+2028, for one), pushing a near-limit message over MaxSize.
			if errors.Is(err, ErrOversized) {
				return
			}
			t.Fatalf("Encode of a decoded message: %v", err)
		}
		again, err := Decode(enc)
		if err != nil {
			t.Fatalf("Decode(Encode(m)): %v\n%s", err, enc)
		}
		if again != m {
			t.Fatalf("round trip changed the message:\n%+v\n%+v", m, again)
		}
	})
}

// The fast path and encoding/json agree: whatever fastDecode accepts,
// encoding/json decodes to the same message, and whatever fastEncode
// writes is byte for byte what encoding/json writes.
func FuzzFastPath(f *testing.F) {
	for _, s := range []string{
		`{"v":2,"type":"role","group":"g/x","pod":"p","uid":"u","role":"standby","epoch":1,"seq":1}`,
		`{"v":2,"type":"role","group":"g/x","pod":"p","uid":"u","role":"active","epoch":1,"seq":1,"ttl_ms":150,"echo":7}`,
		`{"v":2,"type":"ack","group":"g/x","pod":"p","uid":"u","role":"active","epoch":18446744073709551615,"seq":1,"ttl_ms":1,"status":"ok","nonce":3,"lease":true}`,
		`{"v":2,"type":"ack","group":"<&>","pod":"p","uid":"u","role":"active","epoch":1,"seq":1,"ttl_ms":1,"status":"retry","nonce":3}`,
		`{"v":2,"type":"role","group":"g/x","pod":"p","uid":"u","role":"active","epoch":01,"seq":1,"ttl_ms":1}`,
		`{"v":2,"type":"role","group":"g\"x","pod":"p","uid":"u","role":"active","epoch":1,"seq":1,"ttl_ms":0}`,
		`{"v":2,"type":"role","group":"g/x","pod":"p","uid":"u","role":"active","epoch":1e3,"seq":1,"lease":false}`,
		`{"v":0,"type":"","group":"","pod":"","uid":"","role":"","epoch":0,"seq":0,"ttl_ms":1000}`,
		`{"v":2,"type":"ack","group":"g/x","pod":"p","uid":"u","role":"active","epoch":1,"seq":1,"ttl_ms":1,"status":"ok","nonce":3,"lease":true,"kid":"k1","boot":9,"ctr":2,"ts":3}`,
		`{"v":2,"type":"role","group":"g/x","pod":"p","uid":"u","role":"standby","epoch":1,"seq":1,"kid":"","boot":0}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if fast, ok := fastDecode(b); ok {
			slow, err := decodeJSON(b)
			if errors.Is(err, ErrVersion) && fast.Version != Version {
				return // both refuse it as another version (Decode checks after the fast path)
			}
			if err != nil {
				t.Fatalf("fast path accepted what encoding/json refuses (%v): %q", err, b)
			}
			if fast != slow {
				t.Fatalf("fast %+v, encoding/json %+v for %q", fast, slow, b)
			}
		}
		m, err := decodeJSON(b)
		if err != nil {
			return
		}
		if fb, ok := fastEncode(nil, m); ok {
			sb, err := encodeJSON(m)
			if err != nil {
				t.Fatalf("encoding/json refuses what the fast path writes: %v", err)
			}
			if string(fb) != string(sb) {
				t.Fatalf("fast %s\nencoding/json %s", fb, sb)
			}
		}
	})
}

func BenchmarkCodec(b *testing.B) {
	ack := validRole()
	ack.Type, ack.Status, ack.Nonce, ack.Lease = TypeAck, StatusOK, 1<<63+12345, true
	enc, err := Encode(ack)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("encode", func(b *testing.B) {
		for b.Loop() {
			if _, err := Encode(ack); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("decode", func(b *testing.B) {
		for b.Loop() {
			if _, err := Decode(enc); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("encode-json", func(b *testing.B) {
		for b.Loop() {
			if _, err := encodeJSON(ack); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("decode-json", func(b *testing.B) {
		for b.Loop() {
			if _, err := decodeJSON(enc); err != nil {
				b.Fatal(err)
			}
		}
	})
}
