package role

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hapod/hapod/internal/wire"
)

// DefaultPort is the UDP port the controller sends role messages to unless
// the group says otherwise.
const DefaultPort = 7477

// Role is what the controller has made this pod.
type Role string

// Roles. Unknown means no message has been accepted yet; treat it as Standby.
const (
	Unknown Role = ""
	Active  Role = wire.RoleActive
	Standby Role = wire.RoleStandby
)

// State is the role last accepted and the epoch it came with.
type State struct {
	Role    Role
	Epoch   uint64
	Group   string    // namespace/groupname the message was for
	Changed time.Time // when the listener accepted it
}

// Config configures Listen. The zero value listens on DefaultPort on all
// addresses and accepts messages addressed to any pod.
type Config struct {
	// Addr is the UDP address to listen on; default ":7477".
	Addr string
	// PodUID, if set, refuses messages addressed to another pod UID (acked
	// "wrong-pod"). Pass the downward-API metadata.uid: it is what keeps a
	// message meant for a deleted pod from steering a new pod that got its IP.
	PodUID string
	// PodName, if set, refuses messages addressed to another pod name.
	PodName string
	// OnChange, if set, is called from the listener goroutine, in order, for
	// every applied change, after the ack has been sent.
	OnChange func(State)
}

// Stats counts datagrams by outcome. Received counts every datagram read;
// each one is then counted in exactly one other field.
type Stats struct {
	Received  uint64
	Accepted  uint64 // applied: the state changed
	Stale     uint64 // refused as older than the held state, acked "stale"
	Malformed uint64 // dropped without reply: oversized, unknown version, malformed, or not a role message
	WrongPod  uint64 // addressed to another UID, pod name or group, acked "wrong-pod"
	Duplicate uint64 // same role and epoch as held, acked "ok"
}

// Listener receives role messages on one UDP socket. Its methods are safe for
// concurrent use.
type Listener struct {
	conn     *net.UDPConn
	cfg      Config
	changes  chan State
	done     chan struct{} // closed when serve returns
	stopCtx  func() bool
	closeErr error
	once     sync.Once

	mu    sync.Mutex
	state State

	received, accepted, stale, malformed, wrongPod, duplicate atomic.Uint64
}

// Listen binds cfg.Addr and serves role messages until ctx is done or Close
// is called. It returns once the socket is bound, so a message sent after
// Listen returns is not lost to a startup race.
func Listen(ctx context.Context, cfg Config) (*Listener, error) {
	addr := cfg.Addr
	if addr == "" {
		addr = fmt.Sprintf(":%d", DefaultPort)
	}
	var lc net.ListenConfig
	pc, err := lc.ListenPacket(ctx, "udp", addr)
	if err != nil {
		return nil, fmt.Errorf("role: listen: %w", err)
	}
	l := &Listener{
		conn:    pc.(*net.UDPConn),
		cfg:     cfg,
		changes: make(chan State, 1),
		done:    make(chan struct{}),
	}
	// The hook closes the socket itself rather than through Close: Close
	// reads stopCtx, which this goroutine is still writing when a ctx that
	// is already done runs the hook at once.
	l.stopCtx = context.AfterFunc(ctx, func() { _ = l.shutdown() })
	go l.serve()
	return l, nil
}

// State returns the state last accepted.
func (l *Listener) State() State {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.state
}

// Changes returns a channel that receives the state after each applied
// change. It holds only the newest state: the listener replaces an unread one
// rather than wait. It is closed after the listener stops, so ranging over it
// ends when ctx is done or Close is called.
func (l *Listener) Changes() <-chan State { return l.changes }

// Addr returns the bound address, useful with a ":0" Addr.
func (l *Listener) Addr() net.Addr { return l.conn.LocalAddr() }

// Stats returns the counters so far. Fields are read one by one, so a
// snapshot taken under load need not add up exactly.
func (l *Listener) Stats() Stats {
	return Stats{
		Received:  l.received.Load(),
		Accepted:  l.accepted.Load(),
		Stale:     l.stale.Load(),
		Malformed: l.malformed.Load(),
		WrongPod:  l.wrongPod.Load(),
		Duplicate: l.duplicate.Load(),
	}
}

// Close closes the socket. It does not wait for an OnChange call in progress,
// so it may be called from OnChange; the listener goroutine exits, and closes
// Changes, once that call returns. Calling Close again returns the first
// result.
func (l *Listener) Close() error {
	l.stopCtx()
	return l.shutdown()
}

func (l *Listener) shutdown() error {
	l.once.Do(func() { l.closeErr = l.conn.Close() })
	return l.closeErr
}

func (l *Listener) serve() {
	defer close(l.done)
	defer close(l.changes)
	// One byte more than MaxSize, so an oversized datagram is seen as such
	// instead of being silently truncated into something that might parse.
	buf := make([]byte, wire.MaxSize+1)
	for {
		n, from, err := l.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Nothing else is expected from an unconnected UDP socket; pause
			// so that an unforeseen persistent error cannot spin a core.
			time.Sleep(10 * time.Millisecond)
			continue
		}
		l.received.Add(1)
		l.handle(buf[:n], from)
	}
}

// verdict is what a role message does to the held state.
type verdict int

const (
	apply verdict = iota
	duplicate
	stale
)

// decide is the epoch fencing rule, kept pure so that it can be tested as a
// table. See the package documentation for why each case is what it is.
func decide(cur State, r Role, epoch uint64) verdict {
	switch {
	case epoch > cur.Epoch:
		return apply
	case epoch < cur.Epoch:
		return stale
	case r == cur.Role:
		return duplicate
	case cur.Role == Unknown, r == Standby:
		return apply
	default: // Active over Standby at the same epoch.
		return stale
	}
}

func (l *Listener) handle(b []byte, from netip.AddrPort) {
	m, err := wire.Decode(b)
	if err != nil || m.Type != wire.TypeRole {
		// No reply: the sender is not a controller of this version, and
		// answering garbage would make the listener a reflector.
		l.malformed.Add(1)
		return
	}

	status := wire.StatusOK
	var changed bool
	var next State
	l.mu.Lock()
	switch {
	case l.cfg.PodUID != "" && m.UID != l.cfg.PodUID,
		l.cfg.PodName != "" && m.Pod != l.cfg.PodName,
		l.state.Group != "" && m.Group != l.state.Group:
		status = wire.StatusWrongPod
		l.wrongPod.Add(1)
	default:
		switch decide(l.state, Role(m.Role), m.Epoch) {
		case apply:
			l.state = State{Role: Role(m.Role), Epoch: m.Epoch, Group: m.Group, Changed: time.Now()}
			next, changed = l.state, true
			l.accepted.Add(1)
		case duplicate:
			l.duplicate.Add(1)
		case stale:
			status = wire.StatusStale
			l.stale.Add(1)
		}
	}
	l.mu.Unlock()

	l.ack(m, status, from)
	if changed {
		l.notify(next)
	}
}

// ack echoes UID, Epoch and Seq, which is what the sender matches acks on.
func (l *Listener) ack(m wire.Message, status string, to netip.AddrPort) {
	a := m
	a.Type, a.Status = wire.TypeAck, status
	if l.cfg.PodName != "" {
		a.Pod = l.cfg.PodName
	}
	b, err := wire.Encode(a)
	if err != nil {
		// Cannot happen for a message that decoded; if it does, the
		// controller's retry and deadline report it.
		return
	}
	// A lost ack is repaired by the controller's retry, which is answered
	// as a duplicate, so a failed write needs no handling here.
	_, _ = l.conn.WriteToUDPAddrPort(b, to)
}

func (l *Listener) notify(s State) {
	if l.cfg.OnChange != nil {
		l.cfg.OnChange(s)
	}
	// Only this goroutine sends on changes, so after dropping an unread
	// value there is room and the second send cannot block.
	select {
	case l.changes <- s:
	default:
		select {
		case <-l.changes:
		default:
		}
		l.changes <- s
	}
}
