package controller

import (
	"net/netip"
	"testing"
)

func TestParseRoleAddress(t *testing.T) {
	tests := []struct {
		in   string
		want string // "" for rejected
	}{
		{"127.0.0.9", "127.0.0.9:7477"},
		{"127.0.0.9:9000", "127.0.0.9:9000"},
		{"[::1]:9000", "[::1]:9000"},
		{"::1", "[::1]:7477"},
		{"127.0.0.9:0", ""}, // port 0 reaches nobody
		{"pod.example", ""}, // names would need DNS on the failover path
		{"", ""},
	}
	for _, tc := range tests {
		got, ok := parseRoleAddress(tc.in, 7477)
		if (tc.want == "") != !ok || (ok && got != netip.MustParseAddrPort(tc.want)) {
			t.Errorf("parseRoleAddress(%q) = %v, %v; want %q", tc.in, got, ok, tc.want)
		}
	}
}
