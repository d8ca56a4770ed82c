package rolekey_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/hapod/hapod/internal/dev/keydir"
	"github.com/hapod/hapod/internal/rolekey"
	"github.com/hapod/hapod/internal/wire"
)

var (
	k1 = bytes.Repeat([]byte{1}, 32)
	k2 = bytes.Repeat([]byte{2}, 32)
)

func TestLoadDir(t *testing.T) {
	tests := []struct {
		name    string
		files   map[string]string
		want    []string // key ids; nil: an error
		current string
	}{
		// An optional Secret volume whose Secret does not exist.
		{"empty", map[string]string{}, []string{}, ""},
		{"one key", map[string]string{"k1": rolekey.Encode(k1) + "\n"}, []string{"k1"}, "k1"},
		// Without "current", the greatest id signs.
		{"two keys", map[string]string{"k1": rolekey.Encode(k1), "k2": rolekey.Encode(k2)}, []string{"k1", "k2"}, "k2"},
		// During a rotation: the new key is accepted, the old one still signs.
		{"current named", map[string]string{"k1": rolekey.Encode(k1), "k2": rolekey.Encode(k2), "current": "k1\n"}, []string{"k1", "k2"}, "k1"},
		// The kubelet's own entries are not keys.
		{"dot files", map[string]string{"k1": rolekey.Encode(k1), ".hidden": "x"}, []string{"k1"}, "k1"},
		{"current unknown", map[string]string{"k1": rolekey.Encode(k1), "current": "k9"}, nil, ""},
		{"not base64", map[string]string{"k1": "not base64!"}, nil, ""},
		{"too short", map[string]string{"k1": rolekey.Encode([]byte("short"))}, nil, ""},
		{"bad name", map[string]string{"k 1": rolekey.Encode(k1)}, nil, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			for name, content := range tt.files {
				if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			r, err := rolekey.LoadDir(dir)
			if tt.want == nil {
				if err == nil {
					t.Fatalf("loaded %v, want an error", r.IDs())
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := r.IDs(); len(got) != len(tt.want) || (len(got) > 0 && !slices.Equal(got, tt.want)) || r.Current() != tt.current {
				t.Fatalf("ids %v current %q, want %v %q", got, r.Current(), tt.want, tt.current)
			}
		})
	}
	if _, err := rolekey.LoadDir(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Fatal("a missing directory loaded: a typo in a flag would disable authentication")
	}
}

// The subkeys of two groups differ, and neither is the master key.
func TestGroupKey(t *testing.T) {
	a, b := rolekey.GroupKey(k1, "ns/a"), rolekey.GroupKey(k1, "ns/b")
	if bytes.Equal(a, b) || bytes.Equal(a, k1) || len(a) != 32 {
		t.Fatalf("subkeys %x %x", a, b)
	}
	if !bytes.Equal(a, rolekey.GroupKey(k1, "ns/a")) {
		t.Fatal("derivation not deterministic")
	}
}

// A Secret volume updated by the kubelet (the ..data swap) is picked up
// by the next poll; an emptied one keeps the keys.
func TestSourceReload(t *testing.T) {
	dir := t.TempDir()
	if err := keydir.Write(dir, map[string][]byte{"k1": k1}, ""); err != nil {
		t.Fatal(err)
	}
	s, err := rolekey.Open(dir, time.Hour, time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	if r := s.Ring(now); r.Current() != "k1" {
		t.Fatalf("current %q", r.Current())
	}
	if err := keydir.Write(dir, map[string][]byte{"k1": k1, "k2": k2}, "k1"); err != nil {
		t.Fatal(err)
	}
	if _, ok := s.Ring(now).Key("k2"); ok {
		t.Fatal("read again before the poll interval")
	}
	r := s.Refresh(now.Add(time.Second))
	if _, ok := r.Key("k2"); !ok || r.Current() != "k1" {
		t.Fatalf("after refresh: ids %v current %q", r.IDs(), r.Current())
	}
	if err := keydir.Write(dir, nil, ""); err != nil {
		t.Fatal(err)
	}
	if r := s.Ring(now.Add(2 * time.Hour)); r.Empty() || s.Err() == nil {
		t.Fatalf("an emptied directory turned authentication off (ids %v, err %v)", r.IDs(), s.Err())
	}
}

func TestRingVerify(t *testing.T) {
	ring, err := rolekey.NewRing(map[string][]byte{"k1": k1}, "")
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	m := wire.Message{Type: wire.TypeRole, Group: "ns/g", Pod: "p", UID: "u", Role: wire.RoleStandby, Epoch: 1, Seq: 1,
		Kid: "k1", Boot: 7, Ctr: 1, TS: wire.StampMillis(now)}
	seal := func(m wire.Message, key []byte) ([]byte, []byte) {
		b, err := wire.Encode(m)
		if err != nil {
			t.Fatal(err)
		}
		d, err := wire.Seal(b, key)
		if err != nil {
			t.Fatal(err)
		}
		return wire.Open(d)
	}
	plain, err := wire.Encode(wire.Message{Type: m.Type, Group: m.Group, Pod: m.Pod, UID: m.UID, Role: m.Role, Epoch: 1, Seq: 1})
	if err != nil {
		t.Fatal(err)
	}
	old := m
	old.TS = wire.StampMillis(now.Add(-time.Minute))
	other := m
	other.Kid = "k9"
	tests := []struct {
		name string
		m    wire.Message
		key  []byte
		raw  []byte // instead of sealing m
		want error
	}{
		{"valid", m, k1, nil, nil},
		{"no mac", m, nil, plain, wire.ErrUnauthenticated},
		{"wrong key", m, k2, nil, wire.ErrBadMAC},
		{"unknown kid", other, k1, nil, wire.ErrUnknownKey},
		{"stale timestamp", old, k1, nil, wire.ErrExpired},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var body, sum []byte
			if tt.raw != nil {
				body, sum = wire.Open(tt.raw)
			} else {
				body, sum = seal(tt.m, tt.key)
			}
			dm, err := wire.Decode(body)
			if err != nil {
				t.Fatal(err)
			}
			err = ring.Verify(dm, body, sum, now, wire.DefaultFreshness)
			if (tt.want == nil) != (err == nil) || (tt.want != nil && !errors.Is(err, tt.want)) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
		})
	}
}
