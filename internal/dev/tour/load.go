package tour

import (
	"context"
	"errors"
	"io"
	"net/http"
	"sync"
	"time"
)

// load sends HTTP requests to the Service, through the tour's kube-proxy (route), at a
// steady pace, and counts the outcomes of each scene's requests.
type load struct {
	obs      *observer
	interval time.Duration
	limit    int // requests in all, a bound on a runaway tour
	client   *http.Client

	mu    sync.Mutex
	scene *Requests // counting into; nil: paused
	sent  int
}

func newLoad(obs *observer, interval time.Duration, limit int) *load {
	return &load{
		obs: obs, interval: interval, limit: limit,
		// A new connection per request: kube-proxy routes connections, so each request
		// follows the endpoints as they are when it is sent.
		client: &http.Client{Timeout: time.Second, Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}},
	}
}

// count makes the following requests count into r (nil pauses the load); the previous
// scene's counts are final when it returns.
func (l *load) count(r *Requests) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.scene = r
}

// run sends requests until ctx ends or the limit is reached.
func (l *load) run(ctx context.Context) {
	tick := time.NewTicker(l.interval)
	defer tick.Stop()
	for n := 0; ; n++ {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		l.mu.Lock()
		counting := l.scene != nil && l.sent < l.limit
		if counting {
			l.sent++
		}
		l.mu.Unlock()
		if !counting {
			continue
		}
		at := time.Now()
		outcome := l.once(ctx, n)
		if ctx.Err() != nil {
			return
		}
		l.mu.Lock()
		if r := l.scene; r != nil {
			switch outcome {
			case outcomeOK:
				r.OK++
			case outcomeNoEndpoint:
				r.NoEndpoint++
			case outcomeConnError:
				r.ConnError++
			case outcomeBadStatus:
				r.BadStatus++
			}
			if outcome != outcomeOK {
				if r.FirstFail.IsZero() {
					r.FirstFail = at
				}
				r.LastFail = at
			}
		}
		l.mu.Unlock()
	}
}

type outcome int

const (
	outcomeOK outcome = iota
	outcomeNoEndpoint
	outcomeConnError
	outcomeBadStatus
)

func (l *load) once(ctx context.Context, n int) outcome {
	eps, port, loopbackOf := l.obs.routeTable()
	dst, err := route(eps, loopbackOf, port, n)
	if errors.Is(err, errNoEndpoint) {
		return outcomeNoEndpoint
	}
	if err != nil {
		return outcomeConnError
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+dst.String()+"/", nil)
	if err != nil {
		return outcomeConnError
	}
	resp, err := l.client.Do(req)
	if err != nil {
		return outcomeConnError
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return outcomeBadStatus
	}
	return outcomeOK
}
