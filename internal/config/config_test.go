package config

import (
	"flag"
	"net/netip"
	"strings"
	"testing"
)

func TestDefaultsAreValid(t *testing.T) {
	c := Default()
	if err := c.Validate(); err != nil {
		t.Fatalf("defaults invalid: %v", err)
	}
}

func TestFlags(t *testing.T) {
	c := Default()
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	c.Bind(fs)
	err := fs.Parse([]string{"-selector", "app=db,tier in (a,b)", "-role-label", "hapod.io/role", "-namespaces", "a, b", "-role-port", "9000"})
	if err != nil {
		t.Fatal(err)
	}
	if c.RoleLabel != "hapod.io/role" || len(c.Namespaces) != 2 || c.Namespaces[1] != "b" || c.RolePort != 9000 {
		t.Fatalf("flags not applied: %+v", c)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
}

// A selector on other labels is fine, even one that merely looks like the
// role label.
func TestSelectorOnOtherLabels(t *testing.T) {
	for _, sel := range []string{"app=hapod", "app=hapod,tier in (a,b)", "roles=x", "hapod.io/role=x"} {
		c := Default()
		c.Selector = sel
		if err := c.Validate(); err != nil {
			t.Errorf("selector %q refused: %v", sel, err)
		}
	}
}

// Each refusal is one line.
func TestValidateOneLinePerProblem(t *testing.T) {
	c := Default()
	c.Selector, c.GroupLabel = "role=standby", "role"
	err := c.Validate()
	if err == nil {
		t.Fatal("accepted")
	}
	if lines := strings.Split(err.Error(), "\n"); len(lines) != 2 {
		t.Fatalf("want two lines, got %q", err)
	}
}

func TestNotifyNetworks(t *testing.T) {
	c := Default()
	if !c.MayNotify(netip.MustParseAddr("10.1.2.3")) {
		t.Error("no networks set must allow any address")
	}
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	c.Bind(fs)
	if err := fs.Parse([]string{"-notify-cidrs", "127.0.0.0/8, 10.0.0.0/8"}); err != nil {
		t.Fatal(err)
	}
	for addr, want := range map[string]bool{"127.64.0.9": true, "10.9.9.9": true, "198.51.100.7": false, "::ffff:127.0.0.1": true} {
		if got := c.MayNotify(netip.MustParseAddr(addr)); got != want {
			t.Errorf("MayNotify(%s) = %v, want %v", addr, got, want)
		}
	}
	if err := fs.Parse([]string{"-notify-cidrs", "127.0.0.0/33"}); err == nil {
		t.Error("a bad prefix was accepted")
	}
}

func TestValidateNamesTheFlag(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*Config)
		want   string
	}{
		{"unparsable selector", func(c *Config) { c.Selector = "app in (a" }, "-selector"},
		{"empty selector", func(c *Config) { c.Selector = " " }, "-selector"},
		{"bad label key", func(c *Config) { c.RoleLabel = "no spaces" }, "-role-label"},
		{"same role values", func(c *Config) { c.StandbyValue = c.ActiveValue }, "-standby-value"},
		{"empty role value", func(c *Config) { c.ActiveValue = "" }, "-active-value"},
		{"port out of range", func(c *Config) { c.RolePort = 70000 }, "-role-port"},
		{"bad namespace", func(c *Config) { c.Namespaces = []string{"Not_A_NS"} }, "-namespaces"},
		{"no workers", func(c *Config) { c.Workers = 0 }, "-workers"},
		{"zero grace", func(c *Config) { c.NotReadyGrace = 0 }, "-not-ready-grace"},
		{"empty critical env", func(c *Config) { c.CriticalEnv = "" }, "-critical-env"},
		// The controller relabels pods: a selector on the role label loses
		// each promoted pod from view and promotes the next (defect 9).
		{"selector on role", func(c *Config) { c.Selector = "app=hapod,role=standby" }, "-selector"},
		{"selector role exists", func(c *Config) { c.Selector = "app=hapod,role" }, "-selector"},
		{"selector role not active", func(c *Config) { c.Selector = "app=hapod,role!=active" }, "-selector"},
		{"selector on custom role label", func(c *Config) { c.RoleLabel = "hapod.io/role"; c.Selector = "hapod.io/role in (standby)" }, "-selector"},
		// A relabel would move the pod into another group.
		{"group label is role label", func(c *Config) { c.GroupLabel = c.RoleLabel }, "-group-label"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := Default()
			tc.mutate(&c)
			err := c.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate() = %v, want an error naming %s", err, tc.want)
			}
		})
	}
}
