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
		// Valid label values that are not valid object names (defect 9).
		{"a..b", "hapod-a--b-???"},
		{"a.-b", "hapod-a--b-???"},
		{"a_.b", "hapod-a--b-???"},
		{"A", "hapod-a-???"},
		{"a", "hapod-a"},
		{"", "hapod-???"}, // the label present but empty
		{strings.Repeat("x", 63), "hapod-" + strings.Repeat("x", 63)},
		{strings.Repeat("X", 62) + "_", "hapod-" + strings.Repeat("x", 62) + "-???"},
		{strings.Repeat("a.", 31) + "b", "hapod-" + strings.Repeat("a.", 31) + "b"},
		{strings.Repeat("a_", 31) + "b", "hapod-" + strings.Repeat("a-", 31) + "b-???"},
	}
	seen := map[string]string{}
	for _, tc := range tests {
		got := LeaseName("hapod-", tc.group)
		if strings.HasSuffix(tc.want, "???") {
			if !strings.HasPrefix(got, strings.TrimSuffix(tc.want, "???")) || len(got) != len(tc.want)-3+8 || strings.HasSuffix(tc.want, "-???") != (got[len(got)-9] == '-') {
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

// Any prefix that -lease-prefix accepts makes valid names for any label
// value, including the awkward ones.
func TestLeaseNameAnyPrefix(t *testing.T) {
	for _, prefix := range []string{"hapod-", "hapod.", "h", "x.y-", strings.Repeat("p", 180)} {
		for _, group := range []string{"", "a..b", "-", ".a", "A_B", strings.Repeat("Z_", 31) + "z"} {
			if got := LeaseName(prefix, group); len(validation.IsDNS1123Subdomain(got)) > 0 {
				t.Errorf("LeaseName(%q, %q) = %q is not a valid name", prefix, group, got)
			}
		}
	}
}
