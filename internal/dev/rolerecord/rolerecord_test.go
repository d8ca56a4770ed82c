package rolerecord

import (
	"bytes"
	"testing"
	"time"
)

func TestWriteDecode(t *testing.T) {
	at := time.Date(2026, 12, 1, 10, 0, 0, 123456789, time.UTC)
	var buf bytes.Buffer
	w := NewWriter(&buf)
	for _, c := range []Change{{At: at, Pod: "p", Role: "standby", Epoch: 1, Group: "ns/g"}, {At: at.Add(time.Millisecond), Pod: "p", Role: "active", Epoch: 2}} {
		if err := w.Write(c); err != nil {
			t.Fatal(err)
		}
	}
	lines := bytes.Split(bytes.TrimSpace(buf.Bytes()), []byte("\n"))
	if len(lines) != 2 {
		t.Fatalf("want two lines, got %q", buf.String())
	}
	c, err := Decode(lines[1])
	if err != nil {
		t.Fatal(err)
	}
	if c.Role != "active" || c.Epoch != 2 || !c.At.Equal(at.Add(time.Millisecond)) {
		t.Fatalf("decoded %+v", c)
	}
	for _, bad := range []string{`nope`, `{"role":"active"}`, `{"at":"2026-12-01T10:00:00Z"}`} {
		if _, err := Decode([]byte(bad)); err == nil {
			t.Errorf("Decode(%s) = nil error", bad)
		}
	}
}
