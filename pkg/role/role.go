package role

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hapod/hapod/internal/rolekey"
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
	Role  Role
	Epoch uint64
	Group string // namespace/groupname the message was for
	// Changed is when the listener accepted the state; for a lapse
	// (Fenced), the moment the lease ran out.
	Changed time.Time
	// Fenced means Role is Standby because the lease of the active role
	// at Epoch ran out without a renewal: the controller may already have
	// made another pod active. A renewal (a fresh lease from the
	// controller) at the same Epoch, or a promotion at a higher one, makes
	// the listener Active again; being told Standby clears Fenced.
	Fenced bool
	// Expiry is, while Role is Active, when the lease ends on this
	// process's clock unless renewed; for a Fenced state, when it ended;
	// after Close released an active lease, when that lease would have
	// ended; otherwise zero. Renewals move it without a notification, so a State
	// received from Changes or OnChange has the expiry of that moment: to
	// check before acting, use Listener.Active or Listener.State.
	Expiry time.Time
}

// ActiveAt reports whether s holds the active role with a lease that has
// not run out at t (a time on this process's clock, such as time.Now()).
func (s State) ActiveAt(t time.Time) bool { return s.Role == Active && t.Before(s.Expiry) }

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
	// Group, if set ("namespace/name", as the controller names groups),
	// refuses messages for any other group (acked "wrong-pod"). Without
	// it the listener serves the first group it accepts a message for, so
	// setting it also keeps a stray first datagram from binding the
	// listener to a group that is not its own.
	Group string
	// OnChange, if set, is called from the listener goroutine, in order, for
	// every applied change (after the ack has been sent) and every lapse.
	OnChange func(State)

	// KeyDir, if set, is a directory of this group's role-message keys
	// (the Secret the controller's -print-group-keys output makes,
	// mounted as a volume; docs/protocol.md, "Authentication"): every
	// message must then carry a valid MAC under one of them, be fresh and
	// not be a replay, or it is dropped unanswered and counted; acks are
	// signed. An empty directory (an optional Secret volume whose Secret
	// does not exist) means unauthenticated until keys appear in it; once
	// keys were loaded, an emptied directory keeps them. The directory is
	// read again every KeyPoll and when a message names an unknown key
	// (at most once a second), so a mounted Secret's update is picked up
	// without a restart.
	KeyDir string
	// KeyPoll is how often KeyDir is read again; default 10s.
	KeyPoll time.Duration
	// Freshness is how far a message's timestamp may be from this
	// process's wall clock; default 30s (wire.DefaultFreshness).
	Freshness time.Duration

	// now is the clock; time.Now unless a test sets it.
	now func() time.Time
}

// Stats counts datagrams by outcome. Received counts every datagram read;
// each one is then counted in exactly one other field. Lapsed counts
// events, not datagrams.
type Stats struct {
	Received  uint64
	Accepted  uint64 // applied: the state changed
	Renewed   uint64 // an active role at the held epoch with a valid echo: the lease extended, acked "ok"
	Retry     uint64 // an active role without a valid echo: nothing applied, acked "retry" with a nonce to echo
	Stale     uint64 // refused as older than the held state, acked "stale"
	Malformed uint64 // dropped without reply: oversized, unknown version, malformed, or not a role message
	WrongPod  uint64 // addressed to another UID, pod name or group, acked "wrong-pod"
	Duplicate uint64 // same role and epoch as held (standby), acked "ok"

	// Refused without reply because it could not be verified (only with
	// Config.KeyDir holding keys): it changes nothing, so a listener that
	// cannot verify its renewals lapses to standby.
	Unauthenticated uint64 // no MAC or no authentication fields
	UnknownKey      uint64 // a key id the listener does not have, even after reading KeyDir again
	BadMAC          uint64 // forged, or made with another group's key
	Expired         uint64 // timestamp outside the freshness window
	Replayed        uint64 // a (boot, counter) already seen, or too old to tell

	Lapsed uint64 // leases that ran out: the listener fenced itself
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

	mu     sync.Mutex
	state  State
	nonces nonceRing
	// The last active message applied or renewed and its sender: where
	// Close releases the lease to.
	held wire.Message
	peer netip.AddrPort

	received, accepted, renewed, retry, stale, malformed, wrongPod, duplicate, lapsed atomic.Uint64
	unauthenticated, unknownKey, badMAC, expired, replayed                            atomic.Uint64

	// Authentication, nil keys without KeyDir. replays is the serving
	// goroutine's only; boot and ctr number the acks this process sends.
	keys    *rolekey.Source
	replays *wire.Replays
	boot    uint64
	ctr     atomic.Uint64
}

// Listen binds cfg.Addr and serves role messages until ctx is done or Close
// is called. It returns once the socket is bound, so a message sent after
// Listen returns is not lost to a startup race.
func Listen(ctx context.Context, cfg Config) (*Listener, error) {
	addr := cfg.Addr
	if addr == "" {
		addr = fmt.Sprintf(":%d", DefaultPort)
	}
	if cfg.now == nil {
		cfg.now = time.Now
	}
	if cfg.Freshness <= 0 {
		cfg.Freshness = wire.DefaultFreshness
	}
	var keys *rolekey.Source
	if cfg.KeyDir != "" {
		var err error
		if keys, err = rolekey.Open(cfg.KeyDir, cfg.KeyPoll, 0); err != nil {
			return nil, fmt.Errorf("role: keys: %w", err)
		}
	}
	var lc net.ListenConfig
	pc, err := lc.ListenPacket(ctx, "udp", addr)
	if err != nil {
		return nil, fmt.Errorf("role: listen: %w", err)
	}
	l := newListener(pc.(*net.UDPConn), cfg, keys)
	// The hook closes the socket itself rather than through Close: Close
	// reads stopCtx, which this goroutine is still writing when a ctx that
	// is already done runs the hook at once.
	l.stopCtx = context.AfterFunc(ctx, func() { _ = l.shutdown() })
	go l.serve()
	return l, nil
}

// newListener is a Listener on conn that does not serve yet; cfg has its
// defaults. Tests drive its handle directly.
func newListener(conn *net.UDPConn, cfg Config, keys *rolekey.Source) *Listener {
	return &Listener{
		conn:    conn,
		cfg:     cfg,
		changes: make(chan State, 1),
		done:    make(chan struct{}),
		keys:    keys,
		replays: wire.NewReplays(cfg.Freshness),
		boot:    nonZeroRandom(),
	}
}

// State returns the state last accepted, or the Fenced state if the lease
// of an active one has run out (even if the listener has not yet delivered
// that change).
func (l *Listener) State() State {
	l.mu.Lock()
	defer l.mu.Unlock()
	s, _ := lapse(l.state, l.cfg.now())
	return s
}

// Active reports whether the listener holds the active role with a lease
// that has not run out: the check to make right before an action that only
// the active pod may take.
func (l *Listener) Active() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.state.ActiveAt(l.cfg.now())
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
		Renewed:   l.renewed.Load(),
		Retry:     l.retry.Load(),
		Stale:     l.stale.Load(),
		Malformed: l.malformed.Load(),
		WrongPod:  l.wrongPod.Load(),
		Duplicate: l.duplicate.Load(),
		Lapsed:    l.lapsed.Load(),

		Unauthenticated: l.unauthenticated.Load(),
		UnknownKey:      l.unknownKey.Load(),
		BadMAC:          l.badMAC.Load(),
		Expired:         l.expired.Load(),
		Replayed:        l.replayed.Load(),
	}
}

// KeyError is the last failure to read Config.KeyDir again, nil if the
// last read succeeded. The keys read before stay in use meanwhile.
func (l *Listener) KeyError() error {
	if l.keys == nil {
		return nil
	}
	return l.keys.Err()
}

// Authenticated reports whether the listener holds keys: it then accepts
// only messages it can verify.
func (l *Listener) Authenticated() bool {
	return l.keys != nil && !l.keys.Ring(l.cfg.now()).Empty()
}

// Close closes the socket. If the listener holds the active role, it first
// releases it: it tells the controller that last renewed it that the pod is
// standby, so that a successor need not wait for the lease to run out (a
// pod deleted gracefully fails over within a round trip), and State reports
// Standby from then on; the application must not act as the active one once
// it has called Close. Canceling Listen's ctx does the same. Close does not
// wait for an OnChange call in progress, so it may be called from OnChange;
// the listener goroutine exits, and closes Changes, once that call returns.
// Calling Close again returns the first result.
func (l *Listener) Close() error {
	l.stopCtx()
	return l.shutdown()
}

func (l *Listener) shutdown() error {
	l.once.Do(func() {
		l.release()
		l.closeErr = l.conn.Close()
	})
	return l.closeErr
}

// release gives up an active lease: the listener holds Standby at its epoch
// (no renewal at that epoch can make it active again) and sends the
// controller an unsolicited standby ack (seq 0) saying so.
func (l *Listener) release() {
	l.mu.Lock()
	now := l.cfg.now()
	if !l.state.ActiveAt(now) || !l.peer.IsValid() {
		l.mu.Unlock()
		return
	}
	s := l.state
	l.state = State{Role: Standby, Epoch: s.Epoch, Group: s.Group, Changed: now, Expiry: s.Expiry}
	m := l.held
	m.Type, m.Role, m.Status, m.Seq, m.TTLMillis, m.Echo = wire.TypeAck, wire.RoleStandby, wire.StatusOK, 0, 0, 0
	m.Nonce, m.Lease = l.nonces.issue(now), true
	if l.cfg.PodName != "" {
		m.Pod = l.cfg.PodName
	}
	to, kid := l.peer, l.held.Kid
	l.mu.Unlock()
	if b, err := l.seal(m, kid, now); err == nil {
		_, _ = l.conn.WriteToUDPAddrPort(b, to)
	}
}

func (l *Listener) serve() {
	defer close(l.done)
	defer close(l.changes)
	// One byte more than MaxSize, so an oversized datagram is seen as such
	// instead of being silently truncated into something that might parse.
	buf := make([]byte, wire.MaxSize+1)
	// The lease's end is the socket's read deadline, so that this goroutine
	// (the only one that changes the state and notifies) wakes up to fence
	// the listener, without a timer goroutine of its own.
	var armed time.Time
	rearm := true // the socket's deadline may not be armed; set it
	for {
		l.expire()
		if d := l.deadline(); rearm || !d.Equal(armed) {
			_ = l.conn.SetReadDeadline(d)
			armed, rearm = d, false
		}
		n, from, err := l.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			switch {
			case errors.Is(err, net.ErrClosed):
				return
			case errors.Is(err, os.ErrDeadlineExceeded):
				// The deadline stays exceeded until it is set again (also
				// when it was not ours: a test's poke).
				rearm = true
				continue
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

// deadline is the real-time read deadline for the held lease's end; zero
// when no lease is held. The lease is measured on cfg.now, which is
// time.Now outside tests.
func (l *Listener) deadline() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.state.Role != Active {
		return time.Time{}
	}
	return time.Now().Add(l.state.Expiry.Sub(l.cfg.now()))
}

// expire fences the listener if its lease has run out.
func (l *Listener) expire() {
	l.mu.Lock()
	s, ok := lapse(l.state, l.cfg.now())
	if ok {
		l.state = s
		l.lapsed.Add(1)
	}
	l.mu.Unlock()
	if ok {
		l.notify(s)
	}
}

// verdict is what a role message does to the held state.
type verdict int

const (
	apply verdict = iota
	duplicate
	stale
	// renew: an active role at the held epoch while active; it extends the
	// lease if its echo is valid.
	renew
)

// decide is the epoch fencing rule, kept pure so that it can be tested as a
// table. See the package documentation for why each case is what it is.
// An apply or renew of the active role further needs a valid echo (see
// handle).
func decide(cur State, r Role, epoch uint64) verdict {
	switch {
	case epoch > cur.Epoch:
		return apply
	case epoch < cur.Epoch:
		return stale
	case r == Active && cur.Role == Active:
		return renew
	case r == Active && cur.Fenced:
		// A lapsed lease renewed at the same epoch: safe because the
		// renewal needs a nonce issued after the lapse, which the
		// controller only echoes while it still holds this pod to be the
		// active one (docs/protocol.md).
		return apply
	case r == cur.Role && !cur.Fenced:
		return duplicate
	case cur.Role == Unknown, r == Standby:
		return apply
	default: // Active over a Standby it was told at the same epoch.
		return stale
	}
}

func (l *Listener) handle(b []byte, from netip.AddrPort) {
	body, sum := wire.Open(b)
	m, err := wire.Decode(body)
	if err != nil || m.Type != wire.TypeRole {
		// No reply: the sender is not a controller of this version, and
		// answering garbage would make the listener a reflector.
		l.malformed.Add(1)
		return
	}
	if err := l.verify(m, body, sum); err != nil {
		// No reply either: an ack would tell a forger what it got right,
		// and nothing unverified may leave a trace in the state (a first
		// forged datagram must not bind the listener to a group or an
		// epoch).
		l.countRefusal(err)
		return
	}

	status := wire.StatusOK
	var changes [2]State // a lapse noticed now, then the message's change
	nchanges := 0
	var nonce uint64
	l.mu.Lock()
	now := l.cfg.now()
	if s, ok := lapse(l.state, now); ok {
		l.state = s
		l.lapsed.Add(1)
		changes[nchanges], nchanges = s, nchanges+1
	}
	switch {
	case l.cfg.PodUID != "" && m.UID != l.cfg.PodUID,
		l.cfg.PodName != "" && m.Pod != l.cfg.PodName,
		l.cfg.Group != "" && m.Group != l.cfg.Group,
		l.state.Group != "" && m.Group != l.state.Group:
		status = wire.StatusWrongPod
		l.wrongPod.Add(1)
	default:
		v := decide(l.state, Role(m.Role), m.Epoch)
		switch {
		case v == stale:
			status = wire.StatusStale
			l.stale.Add(1)
		case v == duplicate:
			l.duplicate.Add(1)
		case Role(m.Role) == Standby:
			l.state = State{Role: Standby, Epoch: m.Epoch, Group: m.Group, Changed: now}
			changes[nchanges], nchanges = l.state, nchanges+1
			l.accepted.Add(1)
		default: // the active role, granted or renewed
			end, ok := l.nonces.leaseEnd(m.Echo, m.TTL(), now)
			switch {
			case !ok:
				status = wire.StatusRetry
				l.retry.Add(1)
			case v == renew:
				if end.After(l.state.Expiry) {
					l.state.Expiry = end
				}
				l.held, l.peer = m, from
				l.renewed.Add(1)
			default:
				l.state = State{Role: Active, Epoch: m.Epoch, Group: m.Group, Changed: now, Expiry: end}
				l.held, l.peer = m, from
				changes[nchanges], nchanges = l.state, nchanges+1
				l.accepted.Add(1)
			}
		}
	}
	if status != wire.StatusWrongPod {
		// Read the clock for the nonce last, right before the ack goes out:
		// the lease a later echo of it grants is measured from here.
		nonce = l.nonces.issue(l.cfg.now())
	}
	l.mu.Unlock()

	l.ack(m, status, nonce, from, now)
	for _, s := range changes[:nchanges] {
		l.notify(s)
	}
}

// ack echoes UID, Epoch and Seq, which is what the sender matches acks on,
// and carries a fresh nonce for the next renewal to echo.
func (l *Listener) ack(m wire.Message, status string, nonce uint64, to netip.AddrPort, now time.Time) {
	a := m
	a.Type, a.Status, a.Nonce, a.Lease = wire.TypeAck, status, nonce, true
	if l.cfg.PodName != "" {
		a.Pod = l.cfg.PodName
	}
	b, err := l.seal(a, m.Kid, now)
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

// verify authenticates m (decoded from body, with MAC sum) when the
// listener has keys; nil means go on. A message naming a key the listener
// lacks, or whose MAC fails, makes it read KeyDir again (rate-limited)
// first: the controller may have picked up a rotated Secret before this
// pod's kubelet updated its volume.
func (l *Listener) verify(m wire.Message, body, sum []byte) error {
	if l.keys == nil {
		return nil
	}
	now := l.cfg.now()
	ring := l.keys.Ring(now)
	if ring.Empty() {
		return nil // no keys (yet): unauthenticated, as without KeyDir
	}
	err := ring.Verify(m, body, sum, now, l.cfg.Freshness)
	if errors.Is(err, wire.ErrUnknownKey) || errors.Is(err, wire.ErrBadMAC) {
		if fresh := l.keys.Refresh(now); fresh != ring {
			err = fresh.Verify(m, body, sum, now, l.cfg.Freshness)
		}
	}
	if err != nil {
		return err
	}
	if !l.replays.Accept(m.Boot, m.Ctr, now) {
		return wire.ErrReplayed
	}
	return nil
}

func (l *Listener) countRefusal(err error) {
	switch {
	case errors.Is(err, wire.ErrUnauthenticated):
		l.unauthenticated.Add(1)
	case errors.Is(err, wire.ErrUnknownKey):
		l.unknownKey.Add(1)
	case errors.Is(err, wire.ErrBadMAC):
		l.badMAC.Add(1)
	case errors.Is(err, wire.ErrExpired):
		l.expired.Add(1)
	default:
		l.replayed.Add(1)
	}
}

// seal encodes an ack, signed with the key kid names (the key of the
// message it answers, which the controller certainly has) when the
// listener has keys; unsigned, and without the message's authentication
// fields, otherwise.
func (l *Listener) seal(a wire.Message, kid string, now time.Time) ([]byte, error) {
	a.Kid, a.Boot, a.Ctr, a.TS = "", 0, 0, 0
	if l.keys == nil {
		return wire.Encode(a)
	}
	key, ok := l.keys.Ring(now).Key(kid)
	if !ok {
		// Unauthenticated mode (no keys yet, and kid is ""), or the key
		// went away since the message was verified: unsigned, which the
		// controller refuses if it has keys.
		return wire.Encode(a)
	}
	a.Kid, a.Boot, a.Ctr, a.TS = kid, l.boot, l.ctr.Add(1), wire.StampMillis(now)
	b, err := wire.Encode(a)
	if err != nil {
		return nil, err
	}
	return wire.Seal(b, key)
}

// nonZeroRandom is a boot id: random, so that a restarted listener's
// counters are never taken for replays of its predecessor's, and non-zero
// (zero means absent on the wire).
func nonZeroRandom() uint64 {
	for {
		if n := rand.Uint64(); n != 0 {
			return n
		}
	}
}
