package controller

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/util/uuid"
	coordinationv1client "k8s.io/client-go/kubernetes/typed/coordination/v1"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
)

// errNotLeader ends a switch when this replica can no longer be sure it
// is the leader: another replica may already be acting on the group.
var errNotLeader = errors.New("not certainly leader any more")

// LeaderGate tells whether this replica is still certainly the leader.
// client-go's elector only learns that it lost the lease when a renew
// fails, up to RenewDeadline later; a process paused (GC, SIGSTOP, an
// overloaded node) can wake up after another replica took over and carry
// on writing. The gate instead trusts a lease only until
//
//	start of the last successful acquire/renew + LeaseDuration*(1-Drift) - Margin
//
// because another candidate waits at least LeaseDuration from when it saw
// that renew, which was after the renew started. A nil *LeaderGate is
// always open: a single replica runs without leader election.
type LeaderGate struct {
	// LeaseDuration is the leader election's; Drift the fraction of it the
	// clocks may disagree by (rates, not offsets: every time is local);
	// Margin covers a write that leaves before the deadline and lands
	// after it.
	LeaseDuration time.Duration
	Drift         float64
	Margin        time.Duration
	// Now is the clock; default time.Now.
	Now func() time.Time

	mu    sync.Mutex
	start time.Time // of the last successful acquire/renew; zero: not leader
}

// NewLeaderGate returns a gate for leases of this duration, closed until
// the first acquire: 5% drift, and a margin of 500 ms (a tenth of the
// lease for leases under 5 s, so a short lease still leaves time to act).
func NewLeaderGate(leaseDuration time.Duration) *LeaderGate {
	return &LeaderGate{LeaseDuration: leaseDuration, Drift: 0.05, Margin: min(500*time.Millisecond, leaseDuration/10)}
}

func (g *LeaderGate) now() time.Time {
	if g.Now == nil {
		return time.Now()
	}
	return g.Now()
}

// Remaining is how long this replica is still certainly leader; ok is
// false once that time has run out. A nil gate returns (0, true): no limit.
func (g *LeaderGate) Remaining() (d time.Duration, ok bool) {
	if g == nil {
		return 0, true
	}
	g.mu.Lock()
	start := g.start
	g.mu.Unlock()
	if start.IsZero() {
		return 0, false
	}
	return leaseLeft(start, g.now(), g.LeaseDuration, g.Drift, g.Margin)
}

// leaseLeft is the gate's rule, pure.
func leaseLeft(start, now time.Time, lease time.Duration, drift float64, margin time.Duration) (time.Duration, bool) {
	until := start.Add(time.Duration(float64(lease)*(1-drift)) - margin)
	left := until.Sub(now)
	return left, left > 0
}

// renewed records a successful acquire or renew that started at start.
func (g *LeaderGate) renewed(start time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if start.After(g.start) {
		g.start = start
	}
}

// released closes the gate: the lease was given up.
func (g *LeaderGate) released() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.start = time.Time{}
}

// Lock wraps the leader election's lock so that every successful acquire
// and renew opens the gate for one lease from its start.
func (g *LeaderGate) Lock(l resourcelock.Interface) resourcelock.Interface {
	return &gatedLock{Interface: l, gate: g}
}

type gatedLock struct {
	resourcelock.Interface
	gate *LeaderGate
}

func (l *gatedLock) Create(ctx context.Context, ler resourcelock.LeaderElectionRecord) error {
	return l.write(ctx, ler, l.Interface.Create)
}

func (l *gatedLock) Update(ctx context.Context, ler resourcelock.LeaderElectionRecord) error {
	return l.write(ctx, ler, l.Interface.Update)
}

func (l *gatedLock) write(ctx context.Context, ler resourcelock.LeaderElectionRecord, do func(context.Context, resourcelock.LeaderElectionRecord) error) error {
	mine := ler.HolderIdentity == l.Identity()
	if !mine {
		// A release (the elector writes an empty holder): from here on
		// another replica may take over at once. Closed before the write,
		// since it may commit even if it returns an error.
		l.gate.released()
	}
	start := l.gate.now()
	err := do(ctx, ler)
	if err == nil && mine {
		l.gate.renewed(start)
	}
	return err
}

// LeaderLock builds the Lease lock controller-runtime would build for
// leader election (same identity scheme, same client timeout), wrapped by
// gate. An empty namespace means the pod's own.
func LeaderLock(rc *rest.Config, namespace, id string, renewDeadline time.Duration, gate *LeaderGate) (resourcelock.Interface, error) {
	if namespace == "" {
		b, err := os.ReadFile("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
		if err != nil {
			return nil, fmt.Errorf("leader election namespace not set and not running in a cluster: %w", err)
		}
		namespace = strings.TrimSpace(string(b))
	}
	host, err := os.Hostname()
	if err != nil {
		return nil, err
	}
	rc = rest.AddUserAgent(rest.CopyConfig(rc), "leader-election")
	// A hung renew must not cost the lease (as controller-runtime does).
	rc.Timeout = max(renewDeadline/2, time.Second)
	core, err := corev1client.NewForConfig(rc)
	if err != nil {
		return nil, err
	}
	coord, err := coordinationv1client.NewForConfig(rc)
	if err != nil {
		return nil, err
	}
	l, err := resourcelock.New(resourcelock.LeasesResourceLock, namespace, id, core, coord,
		resourcelock.ResourceLockConfig{Identity: host + "_" + string(uuid.NewUUID())})
	if err != nil {
		return nil, err
	}
	return gate.Lock(l), nil
}
