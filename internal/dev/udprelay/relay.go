package udprelay

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Direction is which way a datagram goes, or which ways a fault applies.
type Direction uint8

// Directions. Both is for SetFaults.
const (
	ToApp        Direction = 1 << iota // controller → application: role messages
	ToController                       // application → controller: acks
	Both         = ToApp | ToController
)

func (d Direction) String() string {
	switch d {
	case ToApp:
		return "to-app"
	case ToController:
		return "to-controller"
	case Both:
		return "both"
	}
	return fmt.Sprintf("Direction(%d)", uint8(d))
}

// index is d's slot in per-direction arrays; d is ToApp or ToController.
func (d Direction) index() int {
	if d == ToController {
		return 1
	}
	return 0
}

// Faults are what one direction does to the datagrams that cross it. The
// zero value is a clean network.
type Faults struct {
	Loss    float64 // probability that a datagram is dropped, 0..1
	Dup     float64 // probability that it is written twice, 0..1
	Reorder float64 // probability that it is held back (see the package doc), 0..1
	// ReorderMax bounds how long a held datagram waits for a later one
	// before it is released anyway; DefaultReorderMax if zero.
	ReorderMax time.Duration
	// Delay is added to every datagram, so a constant delay keeps the
	// order.
	Delay time.Duration
}

func (f Faults) validate() error {
	for _, p := range []float64{f.Loss, f.Dup, f.Reorder} {
		if !(p >= 0 && p <= 1) { // also refuses NaN
			return fmt.Errorf("udprelay: probability %v outside 0..1", p)
		}
	}
	if f.ReorderMax < 0 || f.Delay < 0 {
		return errors.New("udprelay: negative duration")
	}
	return nil
}

// Defaults.
const (
	// DefaultReorderMax is Faults.ReorderMax when zero: about a renewal
	// interval of the controller's (50ms by default), so that a held
	// renewal is usually overtaken by the next one.
	DefaultReorderMax = 20 * time.Millisecond
	// DefaultCapture is how many controller→app datagrams are kept for
	// Replay when Config.Capture is zero.
	DefaultCapture = 64
)

// maxPeers bounds the controller addresses the relay keeps an upstream
// socket for; the least recently seen one is closed to make room. A chaos
// run has one or two controllers at a time, and restarts each a few times.
const maxPeers = 8

// maxDatagram is the read buffer: any UDP payload, so that oversized or
// garbage datagrams reach the receiver as sent, for it to refuse.
const maxDatagram = 64 << 10

// anyPort is where the relay's own sockets bind: loopback only, a port the
// kernel picks.
var anyPort = netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), 0)

// ErrClosed is returned by the methods of a closed Relay.
var ErrClosed = errors.New("udprelay: relay closed")

// Config configures New.
type Config struct {
	// App is the application's role socket (its role.Config.Addr, bound);
	// it must be a loopback address.
	App netip.AddrPort
	// Front is the address the controller is given, default 127.0.0.1
	// with a port the kernel picks; it must be a loopback address.
	Front netip.AddrPort
	// Seed seeds every random choice the relay makes.
	Seed uint64
	// Capture is how many controller→app datagrams are kept for Replay
	// and Captured; DefaultCapture if zero.
	Capture int
}

// Counters count one direction's datagrams.
type Counters struct {
	Received   uint64 // read from the sender, counted once the faults have decided its fate
	Forwarded  uint64 // written to the receiver (a duplicate's second copy counts in Duplicated)
	Dropped    uint64 // lost, or cut (also while already in flight)
	Duplicated uint64 // second copies written
	Reordered  uint64 // held back to be released after a later datagram
	Replayed   uint64 // ToApp only: captured datagrams written again by Replay
	Forged     uint64 // ToApp only: datagrams written by SendToApp
	Errors     uint64 // writes that failed (a socket closed by Close or evicted)
}

// Stats are both directions' counters.
type Stats struct {
	ToApp, ToController Counters
}

// counters is Counters, updated concurrently.
type counters struct {
	received, forwarded, dropped, duplicated, reordered, replayed, forged, errors atomic.Uint64
}

func (c *counters) snapshot() Counters {
	return Counters{
		Received: c.received.Load(), Forwarded: c.forwarded.Load(), Dropped: c.dropped.Load(),
		Duplicated: c.duplicated.Load(), Reordered: c.reordered.Load(), Replayed: c.replayed.Load(),
		Forged: c.forged.Load(), Errors: c.errors.Load(),
	}
}

// Relay is a faulty UDP path between a controller and one application. Its
// methods are safe for concurrent use.
type Relay struct {
	app   netip.AddrPort
	front *net.UDPConn
	forge *net.UDPConn
	cut   atomic.Bool
	stats [2]counters
	queue queue

	mu      sync.Mutex
	faults  [2]Faults
	rng     *rand.Rand
	peers   map[netip.AddrPort]*peer
	seen    uint64 // datagrams from controllers so far: the peers' recency
	capture []captured
	next    int // capture's next slot once it is full
	size    int
	closed  bool

	forgeMu sync.Mutex // one ForgedReply at a time: they share the socket's deadline

	wg        sync.WaitGroup
	done      chan struct{}
	closeOnce sync.Once
	closeErr  error
}

// peer is one controller address and the upstream socket its datagrams
// leave from, whose replies go back to it.
type peer struct {
	addr netip.AddrPort
	conn *net.UDPConn
	used uint64
}

// captured is a controller→app datagram and the peer it came through, so
// that a replay leaves from the same upstream socket.
type captured struct {
	b []byte
	p *peer
}

// New binds the front socket and the forging socket and starts relaying.
func New(cfg Config) (*Relay, error) {
	if !cfg.App.IsValid() || cfg.App.Port() == 0 || !cfg.App.Addr().Unmap().IsLoopback() {
		return nil, fmt.Errorf("udprelay: application address %s is not a loopback address and port", cfg.App)
	}
	front := cfg.Front
	if !front.IsValid() {
		front = anyPort
	}
	if !front.Addr().Unmap().IsLoopback() {
		return nil, fmt.Errorf("udprelay: front address %s is not a loopback address", front)
	}
	if cfg.Capture <= 0 {
		cfg.Capture = DefaultCapture
	}
	fc, err := listen(front)
	if err != nil {
		return nil, err
	}
	gc, err := listen(anyPort)
	if err != nil {
		_ = fc.Close()
		return nil, err
	}
	r := &Relay{
		app:     netip.AddrPortFrom(cfg.App.Addr().Unmap(), cfg.App.Port()),
		front:   fc,
		forge:   gc,
		rng:     rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0x9e3779b97f4a7c15)),
		peers:   map[netip.AddrPort]*peer{},
		capture: make([]captured, cfg.Capture),
		done:    make(chan struct{}),
	}
	r.queue.wake = make(chan struct{}, 1)
	r.wg.Add(2)
	go r.read(r.front, r.fromController)
	go r.deliver()
	return r, nil
}

func listen(a netip.AddrPort) (*net.UDPConn, error) {
	c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(a))
	if err != nil {
		return nil, fmt.Errorf("udprelay: listen: %w", err)
	}
	// Bursts (a test's, or a mass failover's) must not be lost in the
	// relay's own buffers, only where a fault says so; the kernel caps
	// the request without error.
	_ = c.SetReadBuffer(1 << 20)
	return c, nil
}

// Addr is the front address: what the controller must be given as the
// pod's role address.
func (r *Relay) Addr() netip.AddrPort { return r.front.LocalAddr().(*net.UDPAddr).AddrPort() }

// App is the application's address, where datagrams go.
func (r *Relay) App() netip.AddrPort { return r.app }

// SetFaults sets the faults of d (ToApp, ToController or Both). It affects
// datagrams read from then on; those already delayed or held keep their
// time.
func (r *Relay) SetFaults(d Direction, f Faults) error {
	if d&Both == 0 || d&^Both != 0 {
		return fmt.Errorf("udprelay: invalid direction %s", d)
	}
	if err := f.validate(); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, one := range []Direction{ToApp, ToController} {
		if d&one != 0 {
			r.faults[one.index()] = f
		}
	}
	return nil
}

// Faults returns the faults of d, ToApp or ToController (Both: ToApp's).
func (r *Relay) Faults(d Direction) Faults {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.faults[d.index()]
}

// Cut partitions the pod (true): every datagram both ways is dropped,
// those already in flight too, until Cut(false). Replay and SendToApp
// still reach the application (the attacker is on the pod's side), but
// its answers to a replay do not cross.
func (r *Relay) Cut(cut bool) { r.cut.Store(cut) }

// Reset restores a clean network: no faults either way, not cut.
func (r *Relay) Reset() {
	r.mu.Lock()
	r.faults = [2]Faults{}
	r.mu.Unlock()
	r.cut.Store(false)
}

// Stats returns the counters so far, read one by one.
func (r *Relay) Stats() Stats {
	return Stats{ToApp: r.stats[0].snapshot(), ToController: r.stats[1].snapshot()}
}

// Captured returns copies of the controller→app datagrams kept, oldest
// first: every one read, those then dropped by a fault included (an
// eavesdropper sees them before the loss).
func (r *Relay) Captured() [][]byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out [][]byte
	for _, c := range r.captures() {
		out = append(out, slices.Clone(c.b))
	}
	return out
}

// captures is the capture ring, oldest first; r.mu held.
func (r *Relay) captures() []captured {
	if r.size < len(r.capture) {
		return r.capture[:r.size]
	}
	return append(slices.Clone(r.capture[r.next:]), r.capture[:r.next]...)
}

// Replay writes up to k of the captured datagrams to the application
// again, chosen at random and in an order other than the one they first
// came in, each from the upstream socket it first left from (so the
// application's answers go to that controller, through the faults), or
// from the forging socket if that one is gone. It returns how many it
// wrote.
func (r *Relay) Replay(k int) (int, error) {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return 0, ErrClosed
	}
	caps := r.captures()
	idx := r.rng.Perm(len(caps))[:min(max(k, 0), len(caps))]
	if len(idx) > 1 && slices.IsSorted(idx) {
		// A permutation may keep the original order; an attacker
		// replaying later need not.
		slices.Reverse(idx)
	}
	type send struct {
		b    []byte
		conn *net.UDPConn
	}
	sends := make([]send, 0, len(idx))
	for _, i := range idx {
		c := caps[i]
		conn := r.forge
		if r.peers[c.p.addr] == c.p {
			conn = c.p.conn
		}
		sends = append(sends, send{c.b, conn})
	}
	r.mu.Unlock()
	st := &r.stats[ToApp.index()]
	n := 0
	var errs []error
	for _, s := range sends {
		if _, err := s.conn.WriteToUDPAddrPort(s.b, r.app); err != nil {
			st.errors.Add(1)
			errs = append(errs, err)
			continue
		}
		st.replayed.Add(1)
		n++
	}
	return n, errors.Join(errs...)
}

// SendToApp writes b to the application from the relay's forging socket,
// past the faults: a datagram from an attacker next to the pod.
func (r *Relay) SendToApp(b []byte) error {
	if _, err := r.forge.WriteToUDPAddrPort(b, r.app); err != nil {
		r.stats[ToApp.index()].errors.Add(1)
		return forgeErr(err)
	}
	r.stats[ToApp.index()].forged.Add(1)
	return nil
}

// ForgedReply waits for the next datagram the application sent to the
// forging socket (an answer to SendToApp) until ctx is done.
func (r *Relay) ForgedReply(ctx context.Context) ([]byte, error) {
	r.forgeMu.Lock()
	defer r.forgeMu.Unlock()
	dl, _ := ctx.Deadline() // zero: no deadline
	if err := r.forge.SetReadDeadline(dl); err != nil {
		return nil, forgeErr(err)
	}
	// Cancellation moves the deadline to the past; wait for that to have
	// happened before returning, or it could cut the next call short.
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		_ = r.forge.SetReadDeadline(time.Unix(1, 0))
		close(fired)
	})
	defer func() {
		if !stop() {
			<-fired
		}
	}()
	buf := make([]byte, maxDatagram)
	n, _, err := r.forge.ReadFromUDPAddrPort(buf)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, forgeErr(err)
	}
	return buf[:n], nil
}

func forgeErr(err error) error {
	if errors.Is(err, net.ErrClosed) {
		return ErrClosed
	}
	return fmt.Errorf("udprelay: forge: %w", err)
}

// Close stops the relay: it closes every socket and returns once all of
// its goroutines have ended. Datagrams still delayed or held are dropped.
func (r *Relay) Close() error {
	r.closeOnce.Do(func() {
		r.mu.Lock()
		r.closed = true
		conns := []*net.UDPConn{r.front, r.forge}
		for _, p := range r.peers {
			conns = append(conns, p.conn)
		}
		r.mu.Unlock()
		close(r.done)
		var errs []error
		for _, c := range conns {
			errs = append(errs, c.Close())
		}
		r.wg.Wait()
		r.closeErr = errors.Join(errs...)
	})
	return r.closeErr
}

// read reads conn until it is closed, and hands each datagram (a copy) to
// handle.
func (r *Relay) read(conn *net.UDPConn, handle func(b []byte, from netip.AddrPort)) {
	defer r.wg.Done()
	buf := make([]byte, maxDatagram)
	for {
		n, from, err := conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if !r.pause(err) {
				return
			}
			continue
		}
		handle(slices.Clone(buf[:n]), from)
	}
}

// fromController handles a datagram a controller sent to the front socket.
func (r *Relay) fromController(b []byte, from netip.AddrPort) {
	st := &r.stats[ToApp.index()]
	p, err := r.peer(from, b)
	if err != nil {
		st.errors.Add(1)
		return
	}
	r.route(ToApp, b, p.conn, r.app)
	// Counted once its fate is decided, so that a caller who sees it
	// counted may change the faults without changing that fate.
	st.received.Add(1)
}

// fromApp handles what the application sent to p's upstream socket: it
// goes on to p's controller.
func (r *Relay) fromApp(p *peer) func(b []byte, from netip.AddrPort) {
	return func(b []byte, from netip.AddrPort) {
		if from.Addr().Unmap() != r.app.Addr() || from.Port() != r.app.Port() {
			// Only the application is behind the relay, as a NAT
			// filters by endpoint: anything else is not relayed.
			return
		}
		r.route(ToController, b, r.front, p.addr)
		r.stats[ToController.index()].received.Add(1)
	}
}

// pause decides what a reader does after err: false means stop (the
// socket is closed). Otherwise it pauses briefly, so that an unexpected
// persistent error cannot spin a core.
func (r *Relay) pause(err error) bool {
	if errors.Is(err, net.ErrClosed) {
		return false
	}
	t := time.NewTimer(time.Millisecond)
	defer t.Stop()
	select {
	case <-r.done:
		return false
	case <-t.C:
		return true
	}
}

// peer returns the peer for a controller address, with a new upstream
// socket if it has none, and captures b, its datagram.
func (r *Relay) peer(from netip.AddrPort, b []byte) (*peer, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil, ErrClosed
	}
	r.seen++
	p, ok := r.peers[from]
	if !ok {
		if len(r.peers) >= maxPeers {
			r.evict()
		}
		conn, err := listen(anyPort)
		if err != nil {
			return nil, err
		}
		p = &peer{addr: from, conn: conn}
		r.peers[from] = p
		r.wg.Add(1)
		go r.read(p.conn, r.fromApp(p))
	}
	p.used = r.seen
	r.capture[r.next] = captured{b: b, p: p}
	r.next = (r.next + 1) % len(r.capture)
	r.size = min(r.size+1, len(r.capture))
	return p, nil
}

// evict closes the upstream socket of the least recently seen controller
// address; r.mu held.
func (r *Relay) evict() {
	var oldest *peer
	for _, p := range r.peers {
		if oldest == nil || p.used < oldest.used {
			oldest = p
		}
	}
	delete(r.peers, oldest.addr)
	_ = oldest.conn.Close()
}

// route applies d's faults to b, read from its sender, and queues what is
// left of it for conn to write to to.
func (r *Relay) route(d Direction, b []byte, conn *net.UDPConn, to netip.AddrPort) {
	st := &r.stats[d.index()]
	if r.cut.Load() {
		st.dropped.Add(1)
		return
	}
	r.mu.Lock()
	f := r.faults[d.index()]
	lost := f.Loss > 0 && r.rng.Float64() < f.Loss
	dup := !lost && f.Dup > 0 && r.rng.Float64() < f.Dup
	hold := !lost && f.Reorder > 0 && r.rng.Float64() < f.Reorder
	var held time.Duration
	if hold {
		bound := f.ReorderMax
		if bound <= 0 {
			bound = DefaultReorderMax
		}
		held = 1 + time.Duration(r.rng.Int64N(int64(bound)))
	}
	r.mu.Unlock()
	if lost {
		st.dropped.Add(1)
		return
	}
	due := time.Now().Add(f.Delay)
	it := &item{due: due.Add(held), dir: d, b: b, conn: conn, to: to, held: hold}
	if hold {
		st.reordered.Add(1)
	}
	its := []*item{it}
	if dup {
		// The copy goes at the plain time: when the original is held,
		// the copy arrives first and the original after it.
		its = append(its, &item{due: due, dir: d, b: b, conn: conn, to: to, dup: true})
	}
	r.queue.push(its...)
}

// deliver writes queued datagrams when they are due.
func (r *Relay) deliver() {
	defer r.wg.Done()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		ready, next := r.queue.due(time.Now())
		for _, it := range ready {
			r.write(it)
		}
		if len(ready) > 0 {
			continue // writing took time: more may be due
		}
		wait := time.Hour
		if !next.IsZero() {
			wait = time.Until(next)
		}
		timer.Reset(wait)
		select {
		case <-r.done:
			return
		case <-r.queue.wake:
		case <-timer.C:
		}
	}
}

func (r *Relay) write(it *item) {
	st := &r.stats[it.dir.index()]
	if r.cut.Load() {
		st.dropped.Add(1)
		return
	}
	if _, err := it.conn.WriteToUDPAddrPort(it.b, it.to); err != nil {
		st.errors.Add(1)
		return
	}
	if it.dup {
		st.duplicated.Add(1)
	} else {
		st.forwarded.Add(1)
	}
}
