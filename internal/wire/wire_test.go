package wire

import (
	"errors"
	"strings"
	"testing"
)

func validRole() Message {
	return Message{
		Version: Version, Type: TypeRole, Group: "shop/db", Pod: "db-0",
		UID: "6f1c2a9e-0000-4000-8000-000000000001", Role: RoleActive, Epoch: 7, Seq: 42,
	}
}

func TestRoundTrip(t *testing.T) {
	ack := validRole()
	ack.Type, ack.Status = TypeAck, StatusStale
	for _, m := range []Message{validRole(), ack} {
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
	want := `{"v":1,"type":"role","group":"shop/db","pod":"db-0","uid":"6f1c2a9e-0000-4000-8000-000000000001","role":"active","epoch":7,"seq":42}`
	if string(b) != want {
		t.Fatalf("got  %s\nwant %s", b, want)
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
		// A sender on a newer version must not claim to speak v1.
		{"other version", func(m *Message) { m.Version = 2 }, ErrVersion},
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
	const ok = `{"v":1,"type":"role","group":"g/x","pod":"p","uid":"u","role":"standby","epoch":1,"seq":1}`
	tests := []struct {
		name string
		in   string
		want error // nil: accepted
	}{
		{"valid", ok, nil},
		// Unknown fields are ignored so that informational additions need no version bump.
		{"unknown field", `{"v":1,"type":"role","group":"g/x","pod":"p","uid":"u","role":"active","epoch":1,"seq":1,"hint":"x"}`, nil},
		{"valid ack", `{"v":1,"type":"ack","group":"g/x","pod":"p","uid":"u","role":"active","epoch":1,"seq":1,"status":"wrong-pod"}`, nil},
		{"oversized", `{"v":1,"pad":"` + strings.Repeat("x", MaxSize) + `"}`, ErrOversized},
		{"empty", ``, ErrMalformed},
		{"not json", `hello`, ErrMalformed},
		{"json null", `null`, ErrMalformed},
		{"json array", `[1]`, ErrMalformed},
		{"trailing garbage", ok + `x`, ErrMalformed},
		{"invalid utf8", `{"v":1,"type":"role","group":"g/x","pod":"p` + "\xff" + `","uid":"u","role":"standby"}`, ErrMalformed},
		// A message must say which version it is; a missing "v" is not a version skew.
		{"no version", `{"type":"role","group":"g/x","pod":"p","uid":"u","role":"standby"}`, ErrMalformed},
		{"version string", `{"v":"1","type":"role"}`, ErrMalformed},
		// A newer peer: counted as version skew even if other fields changed type.
		{"future version", `{"v":2,"type":"role","epoch":"big"}`, ErrVersion},
		{"version zero", `{"v":0,"type":"role","group":"g/x","pod":"p","uid":"u","role":"standby"}`, ErrVersion},
		{"unknown type", `{"v":1,"type":"hello","group":"g/x","pod":"p","uid":"u","role":"standby"}`, ErrMalformed},
		{"unknown role", `{"v":1,"type":"role","group":"g/x","pod":"p","uid":"u","role":"leader"}`, ErrMalformed},
		{"missing group", `{"v":1,"type":"role","pod":"p","uid":"u","role":"standby"}`, ErrMalformed},
		{"missing pod", `{"v":1,"type":"role","group":"g/x","uid":"u","role":"standby"}`, ErrMalformed},
		{"missing uid", `{"v":1,"type":"role","group":"g/x","pod":"p","role":"standby"}`, ErrMalformed},
		{"negative epoch", `{"v":1,"type":"role","group":"g/x","pod":"p","uid":"u","role":"standby","epoch":-1}`, ErrMalformed},
		{"status on role", `{"v":1,"type":"role","group":"g/x","pod":"p","uid":"u","role":"standby","status":"ok"}`, ErrMalformed},
		{"ack without status", `{"v":1,"type":"ack","group":"g/x","pod":"p","uid":"u","role":"standby"}`, ErrMalformed},
		{"ack unknown status", `{"v":1,"type":"ack","group":"g/x","pod":"p","uid":"u","role":"standby","status":"maybe"}`, ErrMalformed},
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
		`{"v":1,"type":"role","group":"g/x","pod":"p","uid":"u","role":"standby","epoch":1,"seq":1}`,
		`{"v":1,"type":"ack","group":"g/x","pod":"p","uid":"u","role":"active","epoch":18446744073709551615,"seq":1,"status":"ok"}`,
		`{"v":2}`, `{}`, `null`, `{"V":1,"TYPE":"role"}`, `{"v":1,"pod":"\u2028<&>"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
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
