package controller

import (
	"net/netip"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/util/validation"
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

func TestLeaseName(t *testing.T) {
	tests := []struct{ group, want string }{
		{"hapod", "hapod-hapod"},
		{"db.primary", "hapod-db.primary"},
		// Label values may hold characters object names may not: mapped,
		// with a hash so that "DB" and "db" stay distinct groups.
		{"DB_1", "hapod-db-1-" + "???"},
		{"db-1", "hapod-db-1"},
	}
	seen := map[string]string{}
	for _, tc := range tests {
		got := LeaseName("hapod-", tc.group)
		if strings.HasSuffix(tc.want, "???") {
			if !strings.HasPrefix(got, strings.TrimSuffix(tc.want, "???")) || len(got) != len(tc.want)-3+8 {
				t.Errorf("LeaseName(%q) = %q, want %s<8 hex>", tc.group, got, strings.TrimSuffix(tc.want, "???"))
			}
		} else if got != tc.want {
			t.Errorf("LeaseName(%q) = %q, want %q", tc.group, got, tc.want)
		}
		if msgs := validation.IsDNS1123Subdomain(got); len(msgs) > 0 {
			t.Errorf("LeaseName(%q) = %q is not a valid name: %v", tc.group, got, msgs)
		}
		if other, dup := seen[got]; dup {
			t.Errorf("groups %q and %q share the Lease %q", other, tc.group, got)
		}
		seen[got] = tc.group
	}
}
