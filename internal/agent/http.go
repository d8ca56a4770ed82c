package agent

import (
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// maxWait caps a long poll, so a client's typo cannot hold a connection for
// hours; the client simply asks again.
const maxWait = 60 * time.Second

func (a *Agent) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /role", a.handleRole)
	mux.HandleFunc("GET /role/events", a.handleEvents)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		if !a.listening.Load() {
			text(w, http.StatusServiceUnavailable, "listener stopped")
			return
		}
		text(w, http.StatusOK, "ok")
	})
	mux.HandleFunc("GET /readyz", a.handleReadyz)
	mux.Handle("GET /metrics", promhttp.HandlerFor(a.m.reg, promhttp.HandlerOpts{}))
	return mux
}

func text(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(code)
	fmt.Fprintln(w, msg)
}

// handleRole answers the current view; with wait (and since), it waits
// until the view's seq differs from since, or the wait is over.
func (a *Agent) handleRole(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	v, changed := a.current()
	if ws := q.Get("wait"); ws != "" {
		wait, err := time.ParseDuration(ws)
		if err != nil || wait < 0 {
			text(w, http.StatusBadRequest, "wait: want a duration such as 30s")
			return
		}
		wait = min(wait, maxWait)
		since := v.Seq
		if ss := q.Get("since"); ss != "" {
			if since, err = strconv.ParseUint(ss, 10, 64); err != nil {
				text(w, http.StatusBadRequest, "since: want the seq of a previous answer")
				return
			}
		}
		t := time.NewTimer(wait)
		defer t.Stop()
		// Waits only while nothing has changed since the client's seq: a
		// since ahead of the agent's (a restarted agent counts from 0
		// again) answers at once, and the client goes on from the new seq.
		for v.Seq == since {
			select {
			case <-changed:
				v, changed = a.current()
				continue
			case <-t.C:
			case <-r.Context().Done():
			case <-a.quit:
			}
			break
		}
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = w.Write(append(v.json(), '\n'))
}

// handleEvents streams one event per change, the current view first.
func (a *Agent) handleEvents(w http.ResponseWriter, r *http.Request) {
	fl, ok := w.(http.Flusher)
	if !ok {
		text(w, http.StatusInternalServerError, "streaming unsupported")
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	v, changed := a.current()
	for {
		if _, err := fmt.Fprintf(w, "id: %d\ndata: %s\n\n", v.Seq, v.json()); err != nil {
			return
		}
		fl.Flush()
		select {
		case <-changed:
			v, changed = a.current()
		case <-r.Context().Done():
			return
		case <-a.quit:
			return
		}
	}
}

// handleReadyz: 200 once the listener is bound (the pod is a ready
// standby); with role=active, 200 only while the listener holds an
// unexpired active lease.
func (a *Agent) handleReadyz(w http.ResponseWriter, r *http.Request) {
	if a.stopping.Load() || !a.listening.Load() {
		text(w, http.StatusServiceUnavailable, "stopping")
		return
	}
	switch r.URL.Query().Get("role") {
	case "":
		text(w, http.StatusOK, "ok")
	case "active":
		if a.roles.Active() {
			text(w, http.StatusOK, "active")
			return
		}
		text(w, http.StatusServiceUnavailable, "not active")
	default:
		text(w, http.StatusBadRequest, "role: want active or nothing")
	}
}
