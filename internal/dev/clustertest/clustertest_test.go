package clustertest

import (
	"regexp"
	"strings"
	"testing"
)

var dnsLabel = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)

func TestObjectName(t *testing.T) {
	tests := []struct {
		name, prefix, test, wantStart string
	}{
		// Subtest separators and capitals become a valid label.
		{name: "subtest", prefix: "t-", test: "TestFoo/bar_baz", wantStart: "t-testfoo-bar-baz-"},
		// Runs of odd characters collapse into one dash.
		{name: "odd characters", prefix: "kwok-", test: "TestX/#01 (a=b)", wantStart: "kwok-testx-01-a-b-"},
		// A long name is cut to fit 63 characters with its suffix.
		{name: "long", prefix: "t-", test: "Test" + strings.Repeat("VeryLong", 20), wantStart: "t-testverylong"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := objectName(tt.prefix, tt.test)
			if !strings.HasPrefix(got, tt.wantStart) {
				t.Errorf("objectName = %q, want prefix %q", got, tt.wantStart)
			}
			if len(got) > 63 || !dnsLabel.MatchString(got) {
				t.Errorf("objectName = %q (%d chars): not a DNS-1123 label", got, len(got))
			}
			if objectName(tt.prefix, tt.test) == got {
				t.Errorf("two calls gave the same name %q", got)
			}
		})
	}
}
