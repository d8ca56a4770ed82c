package controller_test

import (
	"fmt"
	"net"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/hapod/hapod/internal/dev/clustertest"
	"github.com/hapod/hapod/pkg/role"
)

// roleRecorder subscribes to every listener of a test and keeps, per pod,
// the intervals during which its listener held the active role with an
// unexpired lease, on the listeners' own clock (the test process's). An
// interval starts at the Active state's Changed and ends at the next
// state's Changed: a lapse's Changed is the moment the lease ran out, not
// when it was noticed, so the intervals are exact. A listener closed while
// active (the app killed) holds the role, as far as the lease is
// concerned, until its lease's end.
type roleRecorder struct {
	mu    sync.Mutex
	spans []span
	open  map[string]*span // by listener
	pod   map[string]string
	n     int
}

type span struct {
	pod      string
	epoch    uint64
	from, to time.Time // to is zero while open
}

func newRecorder(t testing.TB) *roleRecorder {
	r := &roleRecorder{open: map[string]*span{}, pod: map[string]string{}}
	t.Cleanup(func() { r.check(t) })
	return r
}

// onChange returns the OnChange hook of a new listener of pod.
func (r *roleRecorder) onChange(pod string) (string, func(role.State)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.n++
	who := fmt.Sprintf("%s#%d", pod, r.n)
	r.pod[who] = pod
	return who, func(s role.State) {
		r.mu.Lock()
		defer r.mu.Unlock()
		cur := r.open[who]
		switch {
		case s.Role == role.Active && cur == nil:
			r.open[who] = &span{pod: pod, epoch: s.Epoch, from: s.Changed}
		case s.Role == role.Active && cur.epoch != s.Epoch:
			cur.to = s.Changed
			r.spans = append(r.spans, *cur)
			r.open[who] = &span{pod: pod, epoch: s.Epoch, from: s.Changed}
		case s.Role != role.Active && cur != nil:
			cur.to = s.Changed
			r.spans = append(r.spans, *cur)
			delete(r.open, who)
		}
	}
}

// closed ends the open interval of a listener that has stopped (its
// Changes drained): at its lease's end (its State after Close keeps the end
// the released lease would have had), since the controller cannot know that
// the app is dead; or at died, if not zero, when the app's death is
// reported to the API, which the controller may take as proof.
func (r *roleRecorder) closed(who string, l *role.Listener, died time.Time) {
	s := l.State()
	r.mu.Lock()
	defer r.mu.Unlock()
	if cur := r.open[who]; cur != nil && !s.Expiry.IsZero() {
		cur.to = s.Expiry
		if !died.IsZero() {
			cur.to = died
		}
		r.spans = append(r.spans, *cur)
		delete(r.open, who)
	}
}

// check fails the test if two pods' intervals overlap. Two listeners of
// the same pod (one restarted in place) are the same app.
func (r *roleRecorder) check(t testing.TB) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	all := append([]span(nil), r.spans...)
	for _, s := range r.open {
		all = append(all, *s)
	}
	sort.Slice(all, func(i, j int) bool { return all[i].from.Before(all[j].from) })
	end := func(s span) time.Time {
		if s.to.IsZero() {
			return time.Unix(1<<40, 0)
		}
		return s.to
	}
	for i := range all {
		for j := i + 1; j < len(all); j++ {
			a, b := all[i], all[j]
			if a.pod != b.pod && b.from.Before(end(a)) {
				t.Errorf("two apps active at once: %s at epoch %d from %s to %s, and %s at epoch %d from %s (overlap %v)",
					a.pod, a.epoch, a.from.Format("15:04:05.000000"), fmtEnd(a.to), b.pod, b.epoch, b.from.Format("15:04:05.000000"), end(a).Sub(b.from))
			}
		}
	}
}

func fmtEnd(t time.Time) string {
	if t.IsZero() {
		return "(still active)"
	}
	return t.Format("15:04:05.000000")
}

// spansOf returns a pod's intervals so far, closed ones first.
func (r *roleRecorder) spansOf(pod string) []span {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []span
	for _, s := range r.spans {
		if s.pod == pod {
			out = append(out, s)
		}
	}
	for _, s := range r.open {
		if s.pod == pod {
			out = append(out, *s)
		}
	}
	return out
}

// app is a pod's application: a recorded role listener behind a relay
// (so that the test can cut it off, pause it, or kill it without a word).
type app struct {
	pod   corev1.Pod
	addr  netip.AddrPort // where the controller sends (the pod IP and role port)
	who   string
	l     *role.Listener
	relay *relay
	rec   *roleRecorder
	e     *env
}

// recordedApp starts pod's listener, recorded, on another port of its pod
// IP, with a relay on the role port.
func (e *env) recordedApp(rec *roleRecorder, p corev1.Pod) *app {
	e.t.Helper()
	ip, err := netip.ParseAddr(p.Status.PodIP)
	if err != nil || !ip.IsLoopback() {
		e.t.Fatalf("pod %s has IP %q; the test needs a loopback pod IP", p.Name, p.Status.PodIP)
	}
	a := &app{pod: p, addr: netip.AddrPortFrom(ip, uint16(e.port)), rec: rec, e: e}
	a.start(netip.AddrPortFrom(ip, 0))
	a.relay = newRelay(e.t, a.addr, a.l.Addr().(*net.UDPAddr).AddrPort())
	return a
}

func (a *app) start(at netip.AddrPort) {
	a.e.t.Helper()
	who, hook := a.rec.onChange(a.pod.Name)
	l, err := role.Listen(a.e.t.Context(), role.Config{Addr: at.String(), PodUID: string(a.pod.UID), OnChange: hook})
	if err != nil {
		a.e.t.Fatal(err)
	}
	a.who, a.l = who, l
	a.e.t.Cleanup(func() { a.kill() })
}

// kill ends the app as SIGKILL would: nothing more comes from it, not
// even the release its listener's Close sends; it waits until the listener
// has stopped.
func (a *app) kill() time.Time { return a.die(false) }

// killReported kills the app and counts it dead from then on: the test
// reports the death to the API (a critical container terminated), which the
// controller takes as proof that the app no longer acts.
func (a *app) killReported() time.Time { return a.die(true) }

func (a *app) die(reported bool) time.Time {
	a.relay.set("drop")
	at := time.Now()
	_ = a.l.Close()
	for range a.l.Changes() {
	}
	var died time.Time
	if reported {
		died = at
	}
	a.rec.closed(a.who, a.l, died)
	return at
}

// restart kills the app and starts a new listener on the same address at
// once: a container restarted in place.
func (a *app) restart() {
	a.e.t.Helper()
	addr := a.l.Addr().(*net.UDPAddr).AddrPort()
	a.kill()
	a.start(addr)
	a.relay.set("pass")
}

// waitActive waits until the app holds the active role at an epoch of at
// least min, and returns its state.
func (a *app) waitActive(min uint64, within time.Duration) role.State {
	a.e.t.Helper()
	var s role.State
	clustertest.Eventually(a.e.t, within, func() (bool, error) {
		s = a.l.State()
		return a.l.Active() && s.Epoch >= min, nil
	})
	return s
}

// relay forwards datagrams between the controller and a listener, and can
// drop them (a partition) or hold them (a paused app: its socket buffer
// fills, and it reads everything late).
type relay struct {
	front *net.UDPConn // the pod's role address
	back  *net.UDPConn // talks to the listener
	to    netip.AddrPort

	mu     sync.Mutex
	mode   string // "pass", "drop", "hold"
	peer   netip.AddrPort
	held   []heldDatagram
	passed int
}

type heldDatagram struct {
	b      []byte
	toPod  bool
	peerAt netip.AddrPort
}

func newRelay(t testing.TB, front, listener netip.AddrPort) *relay {
	t.Helper()
	f, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(front))
	if err != nil {
		t.Fatal(err)
	}
	b, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(front.Addr(), 0)))
	if err != nil {
		t.Fatal(err)
	}
	r := &relay{front: f, back: b, to: listener, mode: "pass"}
	go r.pump(f, true)
	go r.pump(b, false)
	t.Cleanup(r.close)
	return r
}

func (r *relay) close() {
	_ = r.front.Close()
	_ = r.back.Close()
}

func (r *relay) pump(c *net.UDPConn, toPod bool) {
	buf := make([]byte, 2048)
	for {
		n, from, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		b := append([]byte(nil), buf[:n]...)
		r.mu.Lock()
		if toPod {
			r.peer = from
		}
		d := heldDatagram{b: b, toPod: toPod, peerAt: r.peer}
		switch r.mode {
		case "drop":
		case "hold":
			r.held = append(r.held, d)
		default:
			r.deliver(d)
		}
		r.mu.Unlock()
	}
}

func (r *relay) deliver(d heldDatagram) {
	r.passed++
	if d.toPod {
		_, _ = r.back.WriteToUDPAddrPort(d.b, r.to)
	} else if d.peerAt.IsValid() {
		_, _ = r.front.WriteToUDPAddrPort(d.b, d.peerAt)
	}
}

// set switches the mode; leaving "hold" delivers what was held, in order.
func (r *relay) set(mode string) time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.mode == "hold" && mode != "hold" {
		for _, d := range r.held {
			if mode == "pass" {
				r.deliver(d)
			}
		}
		r.held = nil
	}
	r.mode = mode
	return time.Now()
}

func (r *relay) String() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return fmt.Sprintf("relay %s mode %s, %d passed, %d held", strings.TrimSpace(r.front.LocalAddr().String()), r.mode, r.passed, len(r.held))
}
