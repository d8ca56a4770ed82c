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
)

// Target is one pod to tell its role.
type Target struct {
	Addr  netip.AddrPort // pod IP and role port
	Group string         // namespace/groupname
	Pod   string
	UID   string
	Role  string // wire.RoleActive or wire.RoleStandby
	Epoch uint64
}

// Result is how one Send ended. Err is nil whenever an ack arrived, whatever
// its Status; a caller that wants "the pod took it" checks Acked.
type Result struct {
	Acked    bool          // an ack with status "ok" arrived
	Status   string        // the ack's status, "" if none arrived
	Attempts int           // datagrams sent
	Latency  time.Duration // first send to ack received; 0 without an ack
	Err      error         // ErrTimeout, ErrClosed, ctx.Err(), or an invalid Target
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
// doubling the wait up to MaxBackoff.
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
	seq := n.seq.Add(1)
	b, err := wire.Encode(wire.Message{
		Type: wire.TypeRole, Group: t.Group, Pod: t.Pod, UID: t.UID,
		Role: t.Role, Epoch: t.Epoch, Seq: seq,
	})
	if err != nil {
		return Result{Err: fmt.Errorf("notify: invalid target: %w", err)}
	}

	k := key{uid: t.UID, epoch: t.Epoch, seq: seq}
	// Buffered so the reader never blocks on a Send that has just given up.
	ch := make(chan ack, 1)
	n.mu.Lock()
	n.waiters[k] = ch
	n.mu.Unlock()
	defer func() {
		n.mu.Lock()
		delete(n.waiters, k)
		n.mu.Unlock()
	}()

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
	for {
		res.Attempts++
		if res.Attempts > 1 {
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
			res.Status = a.status
			res.Acked = a.status == wire.StatusOK
			res.Latency = a.at.Sub(start)
			n.metrics.acks.WithLabelValues(a.status).Inc()
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
			n.metrics.unmatched.Inc()
			continue
		}
		ch <- ack{status: m.Status, at: at}
	}
}
