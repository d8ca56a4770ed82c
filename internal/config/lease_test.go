package config

import (
	"flag"
	"strings"
	"testing"
	"time"
)

func TestLeaseFlags(t *testing.T) {
	c := Default()
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	c.Bind(fs)
	if err := fs.Parse([]string{"-lease-renew", "100ms", "-lease-ttl", "400ms", "-lease-margin", "0s"}); err != nil {
		t.Fatal(err)
	}
	if c.LeaseRenew != 100*time.Millisecond || c.LeaseTTL != 400*time.Millisecond || c.LeaseMargin != 0 {
		t.Fatalf("flags not applied: %+v", c)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestValidateLease(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*Config)
		want   string // "" for valid
	}{
		{"three renewals per TTL", func(c *Config) { c.LeaseRenew, c.LeaseTTL = 50*time.Millisecond, 150*time.Millisecond }, ""},
		// Two lost renewals in a row must not lapse a healthy app's lease.
		{"ttl too short for the renew interval", func(c *Config) { c.LeaseRenew, c.LeaseTTL = 50*time.Millisecond, 149*time.Millisecond }, "-lease-ttl"},
		{"zero renew", func(c *Config) { c.LeaseRenew = 0 }, "-lease-renew"},
		{"sub-millisecond renew", func(c *Config) { c.LeaseRenew = time.Microsecond }, "-lease-renew"},
		{"ttl past the wire's limit", func(c *Config) { c.LeaseTTL = 2 * time.Hour }, "-lease-ttl"},
		{"ttl not whole milliseconds", func(c *Config) { c.LeaseTTL = 150*time.Millisecond + time.Microsecond }, "-lease-ttl"},
		{"negative margin", func(c *Config) { c.LeaseMargin = -time.Millisecond }, "-lease-margin"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := Default()
			tc.mutate(&c)
			err := c.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("Validate() = %v, want valid", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("Validate() = %v, want an error naming %s", err, tc.want)
			}
		})
	}
}
