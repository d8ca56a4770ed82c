package clusterip

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hapod/hapod/internal/dev/poll"
)

// A server on 127.0.0.1 that answers as pod a, then as a standby (503),
// then as pod b: the prober keeps who answered and counts the rest.
func TestProber(t *testing.T) {
	var phase atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		switch phase.Load() {
		case 0:
			_ = json.NewEncoder(w).Encode(map[string]string{"pod": "a"})
		case 1:
			w.WriteHeader(http.StatusServiceUnavailable)
			_ = json.NewEncoder(w).Encode(map[string]string{"pod": "a"})
		default:
			_ = json.NewEncoder(w).Encode(map[string]string{"pod": "b"})
		}
	}))
	defer srv.Close()
	p := Start(t.Context(), srv.URL, time.Millisecond)
	defer p.Stop()
	wait := func(pod string, since time.Time) time.Time {
		t.Helper()
		if err := poll.Until(context.Background(), 30*time.Second, func() (bool, error) {
			_, ok := p.FirstFrom(pod, since)
			return ok, nil
		}); err != nil {
			t.Fatalf("no answer from %s: %v", pod, err)
		}
		at, _ := p.FirstFrom(pod, since)
		return at
	}
	t0 := time.Now()
	wait("a", t0)
	phase.Store(1)
	t1 := time.Now()
	if err := poll.Until(context.Background(), 30*time.Second, func() (bool, error) {
		return p.FailedBetween(t1, time.Now()) > 0, nil
	}); err != nil {
		t.Fatal("no 503 counted as failed")
	}
	phase.Store(2)
	t2 := time.Now()
	b := wait("b", t2)
	for _, h := range p.Between(t2, b) {
		if h.Pod == "a" {
			t.Errorf("a 503 counted as an answer from a: %+v", h)
		}
	}
	if tl := p.Timeline(t0, time.Now()); tl == "" {
		t.Error("empty timeline")
	}
}
