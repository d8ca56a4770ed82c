package config

import (
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/validation"
)

// Config is everything the controller can be told.
type Config struct {
	// Selector picks the pods hapod manages.
	Selector string
	// GroupLabel is the label whose value splits the selected pods of a
	// namespace into independent groups, each with its own active pod.
	// Pods without it form the group "default".
	GroupLabel   string
	RoleLabel    string
	ActiveValue  string
	StandbyValue string
	// CriticalEnv/CriticalValue mark critical containers.
	CriticalEnv   string
	CriticalValue string
	// RolePort is the UDP port pods listen on for role messages.
	RolePort int
	// Namespaces to watch; empty means all.
	Namespaces []string
	// NotReadyGrace: how long an active may be not Ready before failover.
	NotReadyGrace time.Duration
	// NotifyDeadline bounds one role notification (with retries);
	// NotifyRetry is the pause before a failed one is tried again.
	NotifyDeadline time.Duration
	NotifyRetry    time.Duration

	// DemoteAckTimeout bounds how long a switch waits for the old active's
	// app to ack "standby" before the new active is told "active";
	// APITimeout bounds every API call of a switch (a half-open connection
	// would otherwise hold it for the HTTP/2 health check, ~45 s).
	DemoteAckTimeout time.Duration
	APITimeout       time.Duration

	// NotifyNetworks, if not empty, are the only networks role messages
	// may be sent to: a guard against telling an address outside the pod
	// network (or, in the local demo, anything but loopback).
	NotifyNetworks []netip.Prefix
	// WatchNodes enables failover when the active's node goes NotReady
	// (needs RBAC on nodes).
	WatchNodes bool
	// HAGroups: read HAGroup objects (api/v1alpha1) for the groups' policies
	// and write their status. The controller turns it off when the CRD is
	// not installed.
	HAGroups bool
	// Workers is how many groups are reconciled at once.
	Workers int
	// LeasePrefix names the per-group Lease that keeps the epoch.
	LeasePrefix  string
	ResyncPeriod time.Duration
	// The role lease (docs/protocol.md): the active pod's role is renewed
	// over UDP every LeaseRenew and lapses in the app LeaseTTL after its
	// last renewal; the controller fails over once it has certainly
	// lapsed, LeaseTTL*(1+LeaseDrift)+LeaseMargin after the last renewal
	// it can count on.
	LeaseRenew  time.Duration
	LeaseTTL    time.Duration
	LeaseMargin time.Duration

	// RoleKeyDir, if set, is the directory of the master keys that
	// authenticate role messages (a mounted Secret; docs/protocol.md,
	// "Authentication"); empty means unauthenticated.
	RoleKeyDir string
}

// LeaseDrift bounds how far the rates of the controller's and a pod's
// clocks may differ: 1%, that is either clock off by up to about 0.5%.
// Real clocks (a quartz oscillator, NTP slewing at most 0.05%) are far
// better; the cost of the generous bound is 1.5ms at a 150ms TTL.
const LeaseDrift = 0.01

// MinLeaseMisses is how many renewals in a row may go unanswered without
// the lease lapsing: LeaseTTL must be at least (MinLeaseMisses+1) times
// LeaseRenew.
const MinLeaseMisses = 2

// Default returns the seed's configuration.
func Default() Config {
	return Config{
		Selector:       "app=hapod",
		GroupLabel:     "app",
		RoleLabel:      "role",
		ActiveValue:    "active",
		StandbyValue:   "standby",
		CriticalEnv:    "pwcriticality",
		CriticalValue:  "critical",
		RolePort:       7477,
		NotReadyGrace:  5 * time.Second,
		NotifyDeadline: 3 * time.Second,
		NotifyRetry:    5 * time.Second,
		WatchNodes:     true,
		HAGroups:       true,
		Workers:        32,
		LeasePrefix:    "hapod-",
		ResyncPeriod:   10 * time.Minute,

		// A live app acks on loopback in well under 1 ms and across a
		// cluster network in a few; 50 ms covers the role protocol's first
		// four resends (0, 5, 15, 35 ms).
		DemoteAckTimeout: 50 * time.Millisecond,
		APITimeout:       5 * time.Second,
		// Measured (README, Performance): SIGKILL of the active app to the
		// new active's ack p99 under 200ms; renewals of 1,000 groups cost
		// a few percent of a core; a pause of the app shorter than
		// LeaseTTL-LeaseRenew changes nothing.
		LeaseRenew:  50 * time.Millisecond,
		LeaseTTL:    150 * time.Millisecond,
		LeaseMargin: 10 * time.Millisecond,
	}
}

// Bind registers the flags on fs, writing into c (which holds the defaults).
func (c *Config) Bind(fs *flag.FlagSet) {
	fs.StringVar(&c.Selector, "selector", c.Selector, "label selector of the pods hapod manages")
	fs.StringVar(&c.GroupLabel, "group-label", c.GroupLabel, "label whose value splits pods into groups, each with one active pod")
	fs.StringVar(&c.RoleLabel, "role-label", c.RoleLabel, "label key that carries the role (the Service selects on it)")
	fs.StringVar(&c.ActiveValue, "active-value", c.ActiveValue, "role label value of the active pod")
	fs.StringVar(&c.StandbyValue, "standby-value", c.StandbyValue, "role label value of standby pods")
	fs.StringVar(&c.CriticalEnv, "critical-env", c.CriticalEnv, "env var that marks a critical container")
	fs.StringVar(&c.CriticalValue, "critical-value", c.CriticalValue, "value of -critical-env that means critical")
	fs.IntVar(&c.RolePort, "role-port", c.RolePort, "UDP port on which pods listen for role messages")
	fs.Func("namespaces", "comma-separated namespaces to watch (default: all)", func(s string) error {
		c.Namespaces = commaList(s)
		return nil
	})
	fs.DurationVar(&c.NotReadyGrace, "not-ready-grace", c.NotReadyGrace, "how long the active may be not Ready before failover")
	fs.DurationVar(&c.NotifyDeadline, "notify-deadline", c.NotifyDeadline, "how long one role notification is retried before giving up")
	fs.DurationVar(&c.NotifyRetry, "notify-retry", c.NotifyRetry, "pause before a failed role notification is tried again")
	fs.DurationVar(&c.DemoteAckTimeout, "demote-ack-timeout", c.DemoteAckTimeout, "how long a switch waits for the old active's app to ack standby before telling the new active")
	fs.DurationVar(&c.APITimeout, "api-timeout", c.APITimeout, "deadline of each API call of a switch")
	fs.Func("notify-cidrs", "comma-separated networks role messages may be sent to (default: any)", func(s string) error {
		c.NotifyNetworks = nil
		for _, p := range commaList(s) {
			prefix, err := netip.ParsePrefix(p)
			if err != nil {
				return err
			}
			c.NotifyNetworks = append(c.NotifyNetworks, prefix.Masked())
		}
		return nil
	})
	fs.BoolVar(&c.HAGroups, "hagroups", c.HAGroups, "use HAGroup objects (hapod.io/v1alpha1) when the CRD is installed: their spec's policies, their status (needs hagroups get/list/watch and hagroups/status update)")
	fs.BoolVar(&c.WatchNodes, "watch-nodes", c.WatchNodes, "fail over when the active's node is NotReady (needs nodes get/list/watch)")
	fs.IntVar(&c.Workers, "workers", c.Workers, "groups reconciled concurrently")
	fs.StringVar(&c.LeasePrefix, "lease-prefix", c.LeasePrefix, "name prefix of the per-group Lease that stores the epoch")
	fs.DurationVar(&c.ResyncPeriod, "resync-period", c.ResyncPeriod, "full re-list period; only repairs, events drive failover")
	fs.DurationVar(&c.LeaseRenew, "lease-renew", c.LeaseRenew, "how often the active pod's role lease is renewed over UDP")
	fs.DurationVar(&c.LeaseTTL, "lease-ttl", c.LeaseTTL, "how long the active app keeps its role without a renewal (at least 3 x -lease-renew)")
	fs.DurationVar(&c.LeaseMargin, "lease-margin", c.LeaseMargin, "added to the TTL before the controller counts a silent app's lease as lapsed")
	fs.StringVar(&c.RoleKeyDir, "role-key-dir", c.RoleKeyDir, "directory of the master keys that authenticate role messages (a mounted Secret: one file per key id, base64; optional file \"current\" names the signing key); empty: unauthenticated")
}

// commaList splits a comma-separated flag value, dropping empty items.
func commaList(s string) []string {
	var out []string
	for _, item := range strings.Split(s, ",") {
		if item = strings.TrimSpace(item); item != "" {
			out = append(out, item)
		}
	}
	return out
}

// Validate reports every problem at once, each naming its flag.
func (c *Config) Validate() error {
	var errs []error
	bad := func(flag, format string, args ...any) {
		errs = append(errs, fmt.Errorf("-%s: %s", flag, fmt.Sprintf(format, args...)))
	}
	if sel, err := c.PodSelector(); err != nil {
		bad("selector", "%v", err)
	} else if reqs, _ := sel.Requirements(); mentions(reqs, c.RoleLabel) {
		// The controller rewrites the role label: a selector on it loses
		// sight of every pod it relabels (a standby selector makes each
		// promoted pod vanish from view, so the next one is promoted too,
		// until every pod is active).
		bad("selector", "%q constrains the role label %q, which the controller rewrites; select on the app's labels only", c.Selector, c.RoleLabel)
	}
	if c.GroupLabel == c.RoleLabel {
		// Every relabel would move a pod into another group.
		bad("group-label", "must differ from -role-label (%q)", c.RoleLabel)
	}
	for _, l := range []struct{ flag, key string }{{"group-label", c.GroupLabel}, {"role-label", c.RoleLabel}} {
		if msgs := validation.IsQualifiedName(l.key); len(msgs) > 0 {
			bad(l.flag, "%q is not a valid label key: %s", l.key, strings.Join(msgs, "; "))
		}
	}
	for _, v := range []struct{ flag, val string }{{"active-value", c.ActiveValue}, {"standby-value", c.StandbyValue}} {
		if msgs := validation.IsValidLabelValue(v.val); len(msgs) > 0 || v.val == "" {
			bad(v.flag, "%q is not a valid, non-empty label value", v.val)
		}
	}
	if c.ActiveValue == c.StandbyValue {
		bad("standby-value", "must differ from -active-value (%q)", c.ActiveValue)
	}
	if c.CriticalEnv == "" || c.CriticalValue == "" {
		bad("critical-env", "the env var name and -critical-value must not be empty")
	}
	if c.RolePort < 1 || c.RolePort > 65535 {
		bad("role-port", "%d is not a port (1-65535)", c.RolePort)
	}
	for _, ns := range c.Namespaces {
		if msgs := validation.IsDNS1123Label(ns); len(msgs) > 0 {
			bad("namespaces", "%q is not a namespace name", ns)
		}
	}
	if c.Workers < 1 {
		bad("workers", "must be at least 1")
	}
	for _, d := range []struct {
		flag string
		val  time.Duration
	}{{"not-ready-grace", c.NotReadyGrace}, {"notify-deadline", c.NotifyDeadline}, {"notify-retry", c.NotifyRetry}, {"resync-period", c.ResyncPeriod}} {
		if d.val <= 0 {
			bad(d.flag, "must be positive, got %v", d.val)
		}
	}
	for _, d := range []struct {
		flag string
		val  time.Duration
	}{{"demote-ack-timeout", c.DemoteAckTimeout}, {"api-timeout", c.APITimeout}} {
		if d.val <= 0 {
			bad(d.flag, "must be positive, got %v", d.val)
		}
	}
	switch {
	case c.LeaseRenew < time.Millisecond:
		bad("lease-renew", "must be at least 1ms, got %v", c.LeaseRenew)
	case c.LeaseTTL < time.Duration(MinLeaseMisses+1)*c.LeaseRenew:
		bad("lease-ttl", "must be at least %d x -lease-renew (%v), so that %d renewals in a row may be lost, got %v",
			MinLeaseMisses+1, time.Duration(MinLeaseMisses+1)*c.LeaseRenew, MinLeaseMisses, c.LeaseTTL)
	case c.LeaseTTL > time.Hour:
		bad("lease-ttl", "must be at most 1h, got %v", c.LeaseTTL)
	case c.LeaseTTL%time.Millisecond != 0:
		bad("lease-ttl", "must be whole milliseconds (the unit on the wire), got %v", c.LeaseTTL)
	}
	if c.LeaseMargin < 0 {
		bad("lease-margin", "must not be negative, got %v", c.LeaseMargin)
	}
	if msgs := validation.IsDNS1123Subdomain(c.LeasePrefix + "x"); len(msgs) > 0 {
		bad("lease-prefix", "%q does not make valid object names", c.LeasePrefix)
	}
	return errors.Join(errs...)
}

// mentions reports whether any requirement of a selector is on key.
func mentions(reqs labels.Requirements, key string) bool {
	for _, r := range reqs {
		if r.Key() == key {
			return true
		}
	}
	return false
}

// MayNotify reports whether role messages may be sent to addr.
func (c *Config) MayNotify(addr netip.Addr) bool {
	if len(c.NotifyNetworks) == 0 {
		return true
	}
	for _, p := range c.NotifyNetworks {
		if p.Contains(addr.Unmap()) {
			return true
		}
	}
	return false
}

// PodSelector parses Selector. An empty selector would take over every pod
// in the cluster, which is never what a user means, so it is refused.
func (c *Config) PodSelector() (labels.Selector, error) {
	if strings.TrimSpace(c.Selector) == "" {
		return nil, errors.New("must not be empty (it would select every pod)")
	}
	sel, err := labels.Parse(c.Selector)
	if err != nil {
		return nil, err
	}
	return sel, nil
}
