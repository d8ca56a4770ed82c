package notify

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

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

	mu      sync.Mutex
	waiters map[key]chan ack
	// onAck receives the acks no Send waits for (renew.go).
	onAck atomic.Pointer[func(Ack) bool]

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
		waiters:    make(map[key]chan ack),
		closed:     make(chan struct{}),
		readerDone: make(chan struct{}),
	}
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
	b, k, err := n.encode(t, echo)
	if err != nil {
		return Result{Err: fmt.Errorf("notify: invalid target: %w", err)}
	}

	// Buffered so the reader never blocks on a Send that has just given up.
	ch := make(chan ack, 1)
	n.wait(k, ch)
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
	resend := false
	for {
		res.Attempts++
		if resend {
			n.metrics.retries.Inc()
		}
		if _, err := n.conn.WriteToUDPAddrPort(b, t.Addr); err != nil {
			// Kept for the timeout's error: a failing route or a full
			// buffer may clear before the deadline, so keep retrying.
			lastErr = err
			n.metrics.sendErrors.Inc()
		}
		wait := min(backoff, time.Until(deadline))
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
				if b, k, err = n.encode(t, echo); err != nil {
					res.Err = fmt.Errorf("notify: invalid target: %w", err)
					return res
				}
				n.wait(k, ch)
				// The backoff goes on where it was: a pod slow to answer the
				// first round (a burst) gets no faster resends of the second.
				resend = false
				continue
			}
			res.Status = a.status
			res.Acked = a.status == wire.StatusOK
			res.Latency = a.at.Sub(start)
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
			resend = true
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
// matched on.
func (n *Notifier) encode(t Target, echo uint64) ([]byte, key, error) {
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
	b, err := wire.Encode(m)
	return b, key{uid: t.UID, epoch: t.Epoch, seq: seq}, err
}

func (n *Notifier) wait(k key, ch chan ack) {
	n.mu.Lock()
	n.waiters[k] = ch
	n.mu.Unlock()
}

func (n *Notifier) unwait(k key) {
	n.mu.Lock()
	delete(n.waiters, k)
	n.mu.Unlock()
}

func (n *Notifier) read() {
	defer close(n.readerDone)
	// One byte over MaxSize so that an oversized ack is seen as such.
	buf := make([]byte, wire.MaxSize+1)
	for {
		sz, _, err := n.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// An unconnected UDP socket reports no ICMP errors on Linux,
			// so this is unexpected; pause so it cannot spin a core.
			time.Sleep(time.Millisecond)
			continue
		}
		at := time.Now()
		m, err := wire.Decode(buf[:sz])
		if err != nil {
			n.metrics.malformed.WithLabelValues(reason(err)).Inc()
			continue
		}
		if m.Type != wire.TypeAck {
			n.metrics.malformed.WithLabelValues(reasonNotAck).Inc()
			continue
		}
		k := key{uid: m.UID, epoch: m.Epoch, seq: m.Seq}
		// Deleted on the first match, so the ack of a retry that crossed
		// the first ack counts as unmatched and ch never holds two.
		n.mu.Lock()
		ch, ok := n.waiters[k]
		delete(n.waiters, k)
		n.mu.Unlock()
		if !ok {
			n.unmatchedAck(m, at) // renewals' acks among them
			continue
		}
		ch <- ack{status: m.Status, nonce: m.Nonce, lease: m.Lease, at: at}
	}
}
