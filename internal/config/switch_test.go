package config

import (
	"flag"
	"strings"
	"testing"
	"time"
)

// The switch's bounds are flags, and a zero bound (no deadline, no wait)
// is refused with the flag's name.
func TestSwitchFlags(t *testing.T) {
	c := Default()
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	c.Bind(fs)
	if err := fs.Parse([]string{"-demote-ack-timeout", "20ms", "-api-timeout", "2s"}); err != nil {
		t.Fatal(err)
	}
	if c.DemoteAckTimeout != 20*time.Millisecond || c.APITimeout != 2*time.Second {
		t.Fatalf("flags not applied: %v %v", c.DemoteAckTimeout, c.APITimeout)
	}
	for flagName, mutate := range map[string]func(*Config){
		"-demote-ack-timeout": func(c *Config) { c.DemoteAckTimeout = 0 },
		"-api-timeout":        func(c *Config) { c.APITimeout = 0 },
	} {
		c := Default()
		mutate(&c)
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), flagName) {
			t.Errorf("zero %s: %v, want an error naming it", flagName, err)
		}
	}
}
