package notify

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hapod/hapod/internal/rolekey"
	"github.com/hapod/hapod/internal/wire"
)

// Errors in Result.Err.
var (
	// ErrTimeout means no ack arrived before Config.Deadline.
	ErrTimeout = errors.New("notify: no ack before deadline")
	// ErrClosed means the Notifier was closed before or during Send.
	ErrClosed = errors.New("notify: notifier closed")
	// ErrRevoked means Target.Grant refused to grant the lease: the Send
	// ended before echoing a nonce.
	ErrRevoked = errors.New("notify: lease grant revoked")
)

// Target is one pod to tell its role.
type Target struct {
	Addr  netip.AddrPort // pod IP and role port
	Group string         // namespace/groupname
	Pod   string
	UID   string
	Role  string // wire.RoleActive or wire.RoleStandby
	Epoch uint64
	// TTL is the lease an active role grants (DefaultLeaseTTL if zero);
	// unused for standby.
	TTL time.Duration
	// Grant, if set, is called before each datagram that echoes a nonce,
	// that is before each datagram that may grant the lease, with the time
	// the ack carrying that nonce was received (the lease the pod may then
	// hold ends, on the pod's clock, less than TTL after a moment that
	// precedes it) and whether that ack said the pod enforces the TTL.
	// Returning false ends the Send with ErrRevoked, and nothing is
	// echoed. Grant runs on the Send's goroutine.
	Grant func(nonceAt time.Time, lease bool) bool
}

// Result is how one Send ended. Err is nil whenever an ack arrived, whatever
// its Status; a caller that wants "the pod took it" checks Acked.
type Result struct {
	Acked    bool          // an ack with status "ok" arrived
	Status   string        // the ack's status, "" if none arrived
	Attempts int           // datagrams sent
	Latency  time.Duration // first send to ack received; 0 without an ack
	Err      error         // ErrTimeout, ErrClosed, ErrRevoked, ctx.Err(), or an invalid Target

	// The lease, for an active role. Nonce and NonceAt are the final ack's
	// (for the first renewal to echo), Lease what it said about enforcing
	// the TTL. Echoed is when the ack carrying the latest nonce this Send
	// echoed was received (zero if none): the pod may hold a lease from it
	// even if no ack followed.
	Nonce   uint64
	NonceAt time.Time
	Lease   bool
	Echoed  time.Time
}

// Config configures New. Zero fields take the defaults.
type Config struct {
	// ListenAddr is the local UDP address, default "0.0.0.0:0". Go opens a
	// wildcard address as a dual-stack socket, so IPv6 pod IPs work too.
	ListenAddr     string
	InitialBackoff time.Duration // first wait before a resend, default 5ms; doubles each retry
	MaxBackoff     time.Duration // cap on the wait, default 200ms
	Deadline       time.Duration // per Send, default 3s
	// Registerer, if set, receives the hapod_notify_* metrics.
	Registerer prometheus.Registerer
	// Keys, if set and not empty, authenticates role messages
	// (docs/protocol.md, "Authentication"): the master keys, from which
	// each group's subkeys are derived. Every datagram is signed with the
	// current key's subkey, and acks that do not verify, are not fresh,
	// are replays or come from another address than the pod's are
	// refused and counted. Without keys nothing is signed or checked but
	// the source address.
	Keys *rolekey.Source
	// Freshness is how far an ack's timestamp may be from this process's
	// wall clock; default wire.DefaultFreshness.
	Freshness time.Duration
}

// Defaults for Config.
const (
	DefaultListenAddr     = "0.0.0.0:0"
	DefaultInitialBackoff = 5 * time.Millisecond
	DefaultMaxBackoff     = 200 * time.Millisecond
	DefaultDeadline       = 3 * time.Second
	DefaultLeaseTTL       = 150 * time.Millisecond
)

// sockBuf is the socket buffer size asked for. Acks from a mass failover
// arrive together; the kernel's default UDP buffer holds only a few hundred,
// and every ack dropped there costs a retry. The kernel caps the request at
// net.core.rmem_max/wmem_max without error.
const sockBuf = 4 << 20

// Notifier sends role messages and matches their acks. Its methods are safe
// for concurrent use.
type Notifier struct {
	conn    *net.UDPConn
	cfg     Config
	metrics *metrics
	seq     atomic.Uint64

	// Authentication: boot and ctr number this process's datagrams;
	// replays is the reading goroutine's only.
	boot    uint64
	ctr     atomic.Uint64
	subkeys groupKeys
	replays *wire.Replays

	mu      sync.Mutex
	waiters map[key]waiter
	// onAck receives the acks no Send waits for (renew.go).
	onAck atomic.Pointer[func(Ack) AckVerdict]

	// rtt paces resends by how long acks take to be read (resendWait);
	// queue tells whether the reader is behind (resendUseful).
	rtt   rttEstimator
	queue readerQueue

	closed     chan struct{}
	readerDone chan struct{}
	closeOnce  sync.Once
	closeErr   error
}

type key struct {
	uid   string
	epoch uint64
	seq   uint64
}

// waiter is a waiting Send: where its ack goes, and where it must come
// from (the pod's address: an ack from elsewhere is not the pod's).
type waiter struct {
	ch   chan ack
	from netip.AddrPort
}

type ack struct {
	status string
	nonce  uint64
	lease  bool
	at     time.Time // when the reader got it, so Latency excludes scheduling of the sender
}

// New opens the socket, registers metrics and starts the reading goroutine.
func New(cfg Config) (*Notifier, error) {
	if cfg.ListenAddr == "" {
		cfg.ListenAddr = DefaultListenAddr
	}
	if cfg.InitialBackoff <= 0 {
		cfg.InitialBackoff = DefaultInitialBackoff
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = DefaultMaxBackoff
	}
	if cfg.MaxBackoff < cfg.InitialBackoff {
		cfg.MaxBackoff = cfg.InitialBackoff
	}
	if cfg.Deadline <= 0 {
		cfg.Deadline = DefaultDeadline
	}
	if cfg.Freshness <= 0 {
		cfg.Freshness = wire.DefaultFreshness
	}
	laddr, err := net.ResolveUDPAddr("udp", cfg.ListenAddr)
	if err != nil {
		return nil, fmt.Errorf("notify: listen address: %w", err)
	}
	conn, err := net.ListenUDP("udp", laddr)
	if err != nil {
		return nil, fmt.Errorf("notify: listen: %w", err)
	}
	if err := errors.Join(conn.SetReadBuffer(sockBuf), conn.SetWriteBuffer(sockBuf)); err != nil {
		_ = conn.Close()
		return nil, fmt.Errorf("notify: socket buffers: %w", err)
	}
	m := newMetrics()
	if cfg.Registerer != nil {
		if err := m.register(cfg.Registerer); err != nil {
			_ = conn.Close()
			return nil, fmt.Errorf("notify: register metrics: %w", err)
		}
	}
	n := &Notifier{
		conn:       conn,
		cfg:        cfg,
		metrics:    m,
		waiters:    make(map[key]waiter),
		boot:       randomNonZero(),
		replays:    wire.NewReplays(cfg.Freshness),
		closed:     make(chan struct{}),
		readerDone: make(chan struct{}),
	}
	// Sequence numbers start at a random point, so that an ack replayed
	// from a previous process (whose numbers started elsewhere) matches
	// no Send of this one.
	n.seq.Store(randomNonZero() >> 2)
	n.queue.base = time.Now()
	n.queue.markEmpty()
	go n.read()
	return n, nil
}

// Addr returns the socket's local address, the source of role messages.
func (n *Notifier) Addr() net.Addr { return n.conn.LocalAddr() }

// Close closes the socket and ends every Send in progress with ErrClosed.
func (n *Notifier) Close() error {
	n.closeOnce.Do(func() {
		close(n.closed)
		n.closeErr = n.conn.Close()
		<-n.readerDone
	})
	return n.closeErr
}

// Send tells t its role and blocks until the pod acks, the Deadline passes,
// ctx is done or the Notifier is closed. It resends after InitialBackoff,
// doubling the wait up to MaxBackoff. An active role is a lease grant: the
// pod answers the first message "retry" with a nonce, and Send at once
// sends the message again echoing it (docs/protocol.md).
func (n *Notifier) Send(ctx context.Context, t Target) Result {
	select {
	case <-n.closed:
		return Result{Err: ErrClosed}
	default:
	}
	if err := ctx.Err(); err != nil {
		return Result{Err: err}
	}
	if !t.Addr.IsValid() || t.Addr.Port() == 0 {
		return Result{Err: fmt.Errorf("notify: invalid target address %q", t.Addr)}
	}
	var echo uint64
	msg, k, err := n.encode(t, echo)
	if err != nil {
		return Result{Err: fmt.Errorf("notify: invalid target: %w", err)}
	}

	// Buffered so the reader never blocks on a Send that has just given up.
	ch := make(chan ack, 1)
	n.wait(k, waiter{ch: ch, from: t.Addr})
	defer func() { n.unwait(k) }()

	n.metrics.sends.Inc()
	var res Result
	var lastErr error
	start := time.Now()
	deadline := start.Add(n.cfg.Deadline)
	backoff := n.cfg.InitialBackoff
	// One timer serves both the backoff and the deadline: a Send holds no
	// more than this while it waits.
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	var lastSent time.Time
	// send: a datagram goes out this turn; resend: it is a repeat of the
	// last one (counted as a retry), not the first of a round.
	send, resend := true, false
	for {
		if send {
			res.Attempts++
			if resend {
				n.metrics.retries.Inc()
			}
			lastSent = time.Now()
			if err := n.write(msg, t.Addr, lastSent); err != nil {
				// Kept for the timeout's error: a failing route or a full
				// buffer may clear before the deadline, so keep retrying.
				lastErr = err
				n.metrics.sendErrors.Inc()
			}
		}
		wait := min(resendWait(backoff, n.rtt.timeout(), n.cfg.Deadline), time.Until(deadline))
		timer.Reset(wait)
		select {
		case a := <-ch:
			n.metrics.acks.WithLabelValues(a.status).Inc()
			if a.status == wire.StatusRetry && t.Role == wire.RoleActive {
				// Answer at once, echoing the nonce: that grants the lease.
				if t.Grant != nil && !t.Grant(a.at, a.lease) {
					res.Err = ErrRevoked
					return res
				}
				echo, res.Echoed = a.nonce, a.at
				n.unwait(k)
				if msg, k, err = n.encode(t, echo); err != nil {
					res.Err = fmt.Errorf("notify: invalid target: %w", err)
					return res
				}
				n.wait(k, waiter{ch: ch, from: t.Addr})
				// The backoff goes on where it was: a pod slow to answer the
				// first round (a burst) gets no faster resends of the second.
				send, resend = true, false
				continue
			}
			res.Status = a.status
			res.Acked = a.status == wire.StatusOK
			res.Latency = a.at.Sub(start)
			n.rtt.observe(res.Latency)
			res.Nonce, res.NonceAt, res.Lease = a.nonce, a.at, a.lease
			n.metrics.latency.Observe(res.Latency.Seconds())
			return res
		case <-timer.C:
			if !time.Now().Before(deadline) {
				n.metrics.timeouts.Inc()
				res.Err = ErrTimeout
				if lastErr != nil {
					res.Err = fmt.Errorf("%w (last send error: %w)", ErrTimeout, lastErr)
				}
				return res
			}
			backoff = min(2*backoff, n.cfg.MaxBackoff)
			send = resendUseful(n.queue.drainedSince(lastSent), time.Since(lastSent), n.cfg.Deadline)
			resend = send
			if !send {
				n.metrics.deferred.Inc()
			}
		case <-ctx.Done():
			n.metrics.canceled.Inc()
			res.Err = ctx.Err()
			return res
		case <-n.closed:
			n.metrics.canceled.Inc()
			res.Err = ErrClosed
			return res
		}
	}
}

// encode builds t's role message with a fresh seq, and the key its ack is
// matched on; it validates it as Encode does.
func (n *Notifier) encode(t Target, echo uint64) (wire.Message, key, error) {
	seq := n.seq.Add(1)
	m := wire.Message{
		Type: wire.TypeRole, Group: t.Group, Pod: t.Pod, UID: t.UID,
		Role: t.Role, Epoch: t.Epoch, Seq: seq,
	}
	if t.Role == wire.RoleActive {
		ttl := t.TTL
		if ttl <= 0 {
			ttl = DefaultLeaseTTL
		}
		m.TTLMillis, m.Echo = wire.TTLMillisOf(ttl), echo
	}
	_, err := wire.Encode(m)
	return m, key{uid: t.UID, epoch: t.Epoch, seq: seq}, err
}

// write sends m to addr as one datagram: signed, with a fresh counter and
// timestamp, when the Notifier has keys. A resend is therefore a new
// datagram, not a replay a listener would refuse.
func (n *Notifier) write(m wire.Message, addr netip.AddrPort, now time.Time) error {
	b, err := n.datagram(m, now)
	if err != nil {
		return err
	}
	_, err = n.conn.WriteToUDPAddrPort(b, addr)
	return err
}

func (n *Notifier) datagram(m wire.Message, now time.Time) ([]byte, error) {
	ring := n.ring(now)
	if ring.Empty() {
		return wire.Encode(m)
	}
	kid := ring.Current()
	key, _ := n.subkeys.get(ring, m.Group, true).Key(kid)
	m.Kid, m.Boot, m.Ctr, m.TS = kid, n.boot, n.ctr.Add(1), wire.StampMillis(now)
	b, err := wire.Encode(m)
	if err != nil {
		return nil, err
	}
	return wire.Seal(b, key)
}

// ring is the master keys; nil (unauthenticated) without Config.Keys.
func (n *Notifier) ring(now time.Time) *rolekey.Ring {
	if n.cfg.Keys == nil {
		return nil
	}
	return n.cfg.Keys.Ring(now)
}

// Authenticated reports whether role messages are signed and acks
// verified.
func (n *Notifier) Authenticated() bool { return !n.ring(time.Now()).Empty() }

func (n *Notifier) wait(k key, w waiter) {
	n.mu.Lock()
	n.waiters[k] = w
	n.mu.Unlock()
}

func (n *Notifier) unwait(k key) {
	n.mu.Lock()
	delete(n.waiters, k)
	n.mu.Unlock()
}

// readPortable reads through net.UDPConn, for platforms (or sockets)
// without a raw read; it leaves readerQueue marked empty.
func (n *Notifier) readPortable() {
	// One byte over MaxSize so that an oversized ack is seen as such.
	buf := make([]byte, wire.MaxSize+1)
	for {
		sz, from, err := n.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// An unconnected UDP socket reports no ICMP errors on Linux,
			// so this is unexpected; pause so it cannot spin a core.
			time.Sleep(time.Millisecond)
			continue
		}
		n.handle(buf[:sz], from, time.Now())
	}
}

// handle matches one datagram from from, read at at, to its waiting Send.
func (n *Notifier) handle(b []byte, from netip.AddrPort, at time.Time) {
	body, sum := wire.Open(b)
	m, err := wire.Decode(body)
	if err != nil {
		n.metrics.malformed.WithLabelValues(reason(err)).Inc()
		return
	}
	if m.Type != wire.TypeAck {
		n.metrics.malformed.WithLabelValues(reasonNotAck).Inc()
		return
	}
	if err := n.verify(m, body, sum, at); err != nil {
		n.metrics.refused.WithLabelValues(refusal(err)).Inc()
		return
	}
	k := key{uid: m.UID, epoch: m.Epoch, seq: m.Seq}
	// Deleted on the first match, so the ack of a retry that crossed the
	// first ack counts as unmatched and ch never holds two. An ack from
	// another address than the pod's is not the pod's (another pod of the
	// group holds the same subkey): refused, and the Send waits on.
	n.mu.Lock()
	w, ok := n.waiters[k]
	if ok && !SameAddr(w.from, from) {
		n.mu.Unlock()
		n.metrics.refused.WithLabelValues(refusedWrongSource).Inc()
		return
	}
	delete(n.waiters, k)
	n.mu.Unlock()
	if !ok {
		n.unmatchedAck(m, from, at) // renewals' acks among them
		return
	}
	w.ch <- ack{status: m.Status, nonce: m.Nonce, lease: m.Lease, at: at}
}

// verify authenticates an ack when the Notifier has keys: its MAC under
// its group's subkey, its freshness, and that it is no replay (only then
// is it recorded). nil means go on.
func (n *Notifier) verify(m wire.Message, body, sum []byte, at time.Time) error {
	ring := n.ring(at)
	if ring.Empty() {
		return nil
	}
	now := at // the read time: the clock the freshness window is checked on
	// Not cached: the group is not verified yet, and a forger must not be
	// able to fill the cache with groups of its choosing.
	err := n.subkeys.get(ring, m.Group, false).Verify(m, body, sum, now, n.cfg.Freshness)
	if errors.Is(err, wire.ErrUnknownKey) || errors.Is(err, wire.ErrBadMAC) {
		// The directory may have changed since the last poll (rate-limited
		// by the Source, so a forger cannot make it read more than once a
		// second).
		if fresh := n.cfg.Keys.Refresh(now); fresh != ring && !fresh.Empty() {
			err = n.subkeys.get(fresh, m.Group, false).Verify(m, body, sum, now, n.cfg.Freshness)
		}
	}
	if err != nil {
		return err
	}
	if !n.replays.Accept(m.Boot, m.Ctr, now) {
		return wire.ErrReplayed
	}
	return nil
}

// SameAddr reports whether a and b are the same address and port, an
// IPv4 address and its IPv4-mapped IPv6 form alike (a dual-stack socket
// reports IPv4 peers in the mapped form).
func SameAddr(a, b netip.AddrPort) bool {
	return a.Port() == b.Port() && a.Addr().Unmap() == b.Addr().Unmap()
}

// groupKeys caches each group's subkeys for the current master keys.
type groupKeys struct {
	mu      sync.Mutex
	base    *rolekey.Ring
	byGroup map[string]*rolekey.Ring
}

// get returns group's subkeys of ring, caching them if keep.
func (g *groupKeys) get(ring *rolekey.Ring, group string, keep bool) *rolekey.Ring {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.base != ring {
		g.base, g.byGroup = ring, map[string]*rolekey.Ring{}
	}
	if r, ok := g.byGroup[group]; ok {
		return r
	}
	r := ring.ForGroup(group)
	if keep {
		g.byGroup[group] = r
	}
	return r
}

// randomNonZero is a boot id or a starting sequence number.
func randomNonZero() uint64 {
	for {
		if v := rand.Uint64(); v != 0 {
			return v
		}
	}
}

// readerQueue records when the single reader last found the socket's
// receive queue empty. A Send whose ack has not arrived uses it to tell "the
// ack is lost" (the reader emptied the queue since the datagram went out,
// and the ack was not in it: resend) from "the ack may be waiting behind
// others in our own queue" (resending would only queue one more duplicate
// ack in front of the acks other Sends wait for: wait instead).
type readerQueue struct {
	base    time.Time    // monotonic origin of drained
	drained atomic.Int64 // since base, when the reader last found the queue empty
	empty   atomic.Bool  // the reader is waiting on an empty queue now
}

func (q *readerQueue) markEmpty() {
	q.drained.Store(int64(time.Since(q.base)))
	q.empty.Store(true)
}

func (q *readerQueue) markRead() { q.empty.Store(false) }

// drainedSince reports whether the queue was empty at some moment after t:
// every ack that had arrived by then has been read.
func (q *readerQueue) drainedSince(t time.Time) bool {
	return q.empty.Load() || time.Duration(q.drained.Load()) > t.Sub(q.base)
}

// resendUseful decides whether a Send whose backoff ran out resends now.
// Normally yes. While the reader has not emptied its queue since the last
// datagram went out (drained false) the ack may be in that queue, so the
// resend is held back; but for no more than a quarter of the deadline, so
// that a reader kept busy without end (a flood of junk datagrams) cannot
// stop lost datagrams from being repaired.
func resendUseful(drained bool, sinceLastSend, deadline time.Duration) bool {
	return drained || sinceLastSend >= deadline/4
}

// rttEstimator keeps the smoothed round trip of the Notifier's acks, as
// TCP does for its retransmission timeout (RFC 6298): srtt and rttvar move
// by 1/8 and 1/4 of each sample's difference.
//
// Why: a round trip is measured to the moment the single reader reads the
// ack, so it includes the time the ack waited in the socket's queue. In a
// mass failover on a busy machine (1,000 Sends, two cores taken by other
// work, -race) that queue grew to ~5 MB and seconds of backlog, no
// datagram was dropped, yet hundreds of Sends timed out: every resend after
// 5, 15, 35 ms... made its pod send one more (duplicate) ack, which queued
// in front of the acks still awaited, so the reader spent most of its
// share of the CPU on duplicates. With the wait stretched to the measured
// round trip, a slow reader makes Sends resend less instead of more.
//
// A sample is the time from a Send's first datagram to its ack, even when
// the ack answered a resend (Karn's rule would drop those): it can only
// overstate the round trip, which errs towards fewer resends.
type rttEstimator struct {
	mu           sync.Mutex
	srtt, rttvar time.Duration
	samples      bool
}

func (e *rttEstimator) observe(sample time.Duration) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if !e.samples {
		e.srtt, e.rttvar, e.samples = sample, sample/2, true
		return
	}
	diff := e.srtt - sample
	if diff < 0 {
		diff = -diff
	}
	e.rttvar += (diff - e.rttvar) / 4
	e.srtt += (sample - e.srtt) / 8
}

// timeout is how long an ack may take before a resend is worth its cost;
// zero before the first ack.
func (e *rttEstimator) timeout() time.Duration {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.srtt + 4*e.rttvar
}

// resendWait is how long a Send waits for an ack before it resends: its
// exponential backoff, or longer when acks are measured to take longer
// (rto), but never more than a quarter of the deadline, so that a Send
// still makes a few attempts against real loss however slow acks were.
func resendWait(backoff, rto, deadline time.Duration) time.Duration {
	return max(backoff, min(rto, deadline/4))
}
