package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"time"
)

// appCheck is -app-health: how the agent tells whether the app beside it
// is alive. Without it the role lease proves only that the agent is: a
// dead app's agent would go on acking renewals, and the failover would
// wait for the kubelet's report of the app's death (docs/agent.md).
type appCheck struct {
	spec     string // as given, for messages
	httpURL  string // http(s)://...: a GET answered 2xx or 3xx is healthy
	tcpAddr  string // tcp://host:port: a connection accepted is healthy
	period   time.Duration
	failures int
	client   *http.Client
}

// parseAppCheck reads -app-health; "" is no check.
func parseAppCheck(spec string, period time.Duration, failures int) (*appCheck, error) {
	if spec == "" {
		return nil, nil
	}
	const want = "want http://127.0.0.1:PORT/PATH or tcp://127.0.0.1:PORT"
	u, err := url.Parse(spec)
	if err != nil {
		return nil, fmt.Errorf("-app-health %q: %s", spec, want)
	}
	c := &appCheck{spec: spec, period: period, failures: failures}
	switch {
	case (u.Scheme == "http" || u.Scheme == "https") && u.Host != "":
		c.httpURL = spec
		// No keep-alive: each check is a fresh connection, so a dead app is
		// seen at once (refused), not through a pooled connection's error.
		c.client = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	case u.Scheme == "tcp" && u.Host != "" && (u.Path == "" || u.Path == "/"):
		if _, _, err := net.SplitHostPort(u.Host); err != nil {
			return nil, fmt.Errorf("-app-health %q: want tcp://host:port", spec)
		}
		c.tcpAddr = u.Host
	default:
		return nil, fmt.Errorf("-app-health %q: %s", spec, want)
	}
	return c, nil
}

// healthy runs one check, bounded by the period.
func (c *appCheck) healthy(ctx context.Context) bool {
	ctx, cancel := context.WithTimeout(ctx, c.period)
	defer cancel()
	if c.tcpAddr != "" {
		var d net.Dialer
		conn, err := d.DialContext(ctx, "tcp", c.tcpAddr)
		if err != nil {
			return false
		}
		_ = conn.Close()
		return true
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.httpURL, nil)
	if err != nil {
		return false
	}
	resp, err := c.client.Do(req)
	if err != nil {
		return false
	}
	_ = resp.Body.Close()
	return resp.StatusCode >= 200 && resp.StatusCode < 400
}

// waitHealthy returns once a check passes, or ctx's error. The agent binds
// its role listener only then: a restarted agent beside a dead app must not
// be made active again.
func (c *appCheck) waitHealthy(ctx context.Context) error {
	t := time.NewTicker(c.period)
	defer t.Stop()
	for !c.healthy(ctx) {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
	return nil
}

// errAppDied is watch's verdict.
var errAppDied = errors.New("the app failed its health checks")

// watch checks every period and returns errAppDied (wrapped) once
// c.failures checks in a row failed, or nil when ctx is done. One pass
// rules nothing: a slow answer under load costs one strike, not the role.
func (c *appCheck) watch(ctx context.Context) error {
	t := time.NewTicker(c.period)
	defer t.Stop()
	strikes := 0
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if c.healthy(ctx) {
			strikes = 0
			continue
		}
		if ctx.Err() != nil {
			return nil
		}
		if strikes++; strikes >= c.failures {
			return fmt.Errorf("%w: %d in a row failed (%s, every %s)", errAppDied, strikes, c.spec, c.period)
		}
	}
}
