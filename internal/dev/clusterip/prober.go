package clusterip

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"
)

// Prober sends GET to a URL every interval, a new connection each time (a
// kept-alive one would survive the rule change through conntrack and hide
// it), and keeps who answered. The app answers with JSON naming its pod
// (hapod-demo's status).
type Prober struct {
	cancel context.CancelFunc
	done   chan struct{}
	mu     sync.Mutex
	hits   []Hit
}

// Hit is one request.
type Hit struct {
	At  time.Time // when the request was sent
	Pod string    // who answered 200; "" for a failure or another status
	Err string    // why not: the error, or the status and who sent it
}

// keep bounds the hits kept: the newest half is kept when it is reached, a
// minute or more at the bench's pace.
const keep = 60000

// Start sends requests to url until Stop or ctx's end.
func Start(ctx context.Context, url string, interval time.Duration) *Prober {
	ctx, cancel := context.WithCancel(ctx)
	p := &Prober{cancel: cancel, done: make(chan struct{})}
	// Each connection is closed with a reset (linger 0) rather than left in
	// TIME_WAIT: at 500 requests/s to one address the ephemeral ports
	// would run out within a minute.
	dialer := &net.Dialer{Timeout: 300 * time.Millisecond}
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dialer.DialContext(ctx, network, addr)
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetLinger(0)
		}
		return c, err
	}
	hc := &http.Client{Timeout: 300 * time.Millisecond, Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil, DialContext: dial}}
	go func() {
		defer close(p.done)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			at := time.Now()
			pod, why := probeOnce(ctx, hc, url)
			if ctx.Err() != nil {
				return // a request cut short by Stop is no answer
			}
			p.mu.Lock()
			p.hits = append(p.hits, Hit{At: at, Pod: pod, Err: why})
			if len(p.hits) > keep {
				p.hits = slices.Clone(p.hits[len(p.hits)-keep/2:])
			}
			p.mu.Unlock()
		}
	}()
	return p
}

// probeOnce returns the pod that answered 200, or why none did.
func probeOnce(ctx context.Context, hc *http.Client, url string) (pod, why string) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err.Error()
	}
	resp, err := hc.Do(req)
	if err != nil {
		return "", err.Error()
	}
	defer func() { _ = resp.Body.Close() }()
	var st struct {
		Pod string `json:"pod"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 4096)).Decode(&st); err != nil {
		return "", err.Error()
	}
	if resp.StatusCode != http.StatusOK {
		return "", resp.Status + " from " + st.Pod
	}
	return st.Pod, ""
}

// Stop ends the requests and waits for the last one.
func (p *Prober) Stop() {
	p.cancel()
	<-p.done
}

// Between returns the hits sent in [from, to).
func (p *Prober) Between(from, to time.Time) []Hit {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []Hit
	for _, h := range p.hits {
		if !h.At.Before(from) && h.At.Before(to) {
			out = append(out, h)
		}
	}
	return out
}

// FirstFrom is when the first request sent after since was answered by pod.
func (p *Prober) FirstFrom(pod string, since time.Time) (time.Time, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, h := range p.hits {
		if h.At.After(since) && h.Pod == pod {
			return h.At, true
		}
	}
	return time.Time{}, false
}

// FailedBetween counts the requests sent in [from, to) that no pod answered
// with 200.
func (p *Prober) FailedBetween(from, to time.Time) int {
	n := 0
	for _, h := range p.Between(from, to) {
		if h.Pod == "" {
			n++
		}
	}
	return n
}

// Timeline describes the hits in [from, to) as runs of the same answer:
// "[+0s 12x pod-a] [+24ms 3x connection refused] ...".
func (p *Prober) Timeline(from, to time.Time) string {
	var b strings.Builder
	last, n := "", 0
	var since time.Time
	flush := func() {
		if n > 0 {
			fmt.Fprintf(&b, "[+%s %dx %s] ", since.Sub(from).Round(time.Millisecond), n, last)
		}
	}
	for _, h := range p.Between(from, to) {
		what := h.Pod
		if what == "" {
			what = h.Err
		}
		if what != last {
			flush()
			last, n, since = what, 0, h.At
		}
		n++
	}
	flush()
	return strings.TrimSpace(b.String())
}
