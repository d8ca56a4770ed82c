package main

import (
	"bytes"
	"encoding/base64"
	"strings"
	"testing"

	"github.com/hapod/hapod/internal/dev/keydir"
	"github.com/hapod/hapod/internal/rolekey"
)

// -print-group-keys prints what the group's pods mount: its subkeys under
// the same ids, and the current one.
func TestPrintGroupKeys(t *testing.T) {
	dir := t.TempDir()
	master := bytes.Repeat([]byte{3}, 32)
	if err := keydir.Write(dir, map[string][]byte{"k1": master, "k0": bytes.Repeat([]byte{4}, 32)}, "k1"); err != nil {
		t.Fatal(err)
	}
	keys, err := rolekey.Open(dir, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	if err := printGroupKeys(&out, keys, "shop/db"); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "k0=") || lines[2] != "current=k1" {
		t.Fatalf("output:\n%s", out.String())
	}
	got, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(lines[1], "k1="))
	if err != nil || !bytes.Equal(got, rolekey.GroupKey(master, "shop/db")) {
		t.Fatalf("k1 subkey %x, %v", got, err)
	}
	for _, bad := range []string{"db", "/db", "shop/"} {
		if err := printGroupKeys(&out, keys, bad); err == nil {
			t.Errorf("group %q accepted", bad)
		}
	}
	if err := printGroupKeys(&out, nil, "shop/db"); err == nil {
		t.Error("printed without keys")
	}
}
