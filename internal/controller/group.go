package controller

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"sync"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"

	"github.com/hapod/hapod/api/v1alpha1"
	"github.com/hapod/hapod/internal/election"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"
)

// groupState is what the controller remembers of one group between
// reconciles. Everything here can be rebuilt from the API after a restart;
// it exists so that the controller does not act twice on a cache that lags
// its own writes, and so that notifications are not resent needlessly.
type groupState struct {
	mu sync.Mutex

	loaded bool // lease read from the API since start (or since a conflict)
	lease  *coordinationv1.Lease
	// epoch is the highest epoch handed out; reserved the highest the
	// Lease allows (epoch <= reserved).
	epoch    uint64
	reserved uint64
	// active is the pod last known active, to tell "the active vanished"
	// from "the group never had one".
	active     types.UID
	activeName string
	// activePod is the active's pod as last seen, so that an active whose
	// pod vanished (force-deleted: its app may still run) can still be
	// told standby at its last address.
	activePod *corev1.Pod

	// written overlays the role labels this controller patched until the
	// cache shows them (or they expire), so a lagging cache cannot make it
	// elect twice.
	written map[types.UID]written
	// told tracks the role each pod has been told over UDP.
	told map[types.UID]*told
	// warned holds pods already warned about, per warning, to avoid
	// repeating the same Event on every reconcile.
	warned      map[warning]bool
	noStandbyAt uint64 // epoch at which "no standby" was last reported, +1
	// plainWarned: the group's plain-mode Warning was recorded (plain.go).
	plainWarned bool

	// pending is a promotion whose app was told active but whose label is
	// not known to be written: a retry promotes the same pod at the same
	// epoch, and promoting another pod first tells this one standby at a
	// higher epoch. Never "undone" by telling it standby at its own epoch.
	pending *pending
	// stuckAt is the epoch whose stuck switch was last reported.
	stuckAt uint64
	// switchover is the HAGroup's last switchover request, as carried out
	// (hagroup.go).
	switchover *v1alpha1.SwitchoverStatus
	// switchoverID is the request the switch under way carries out, written
	// with the new active's label (role.SwitchoverAnnotation).
	switchoverID string
	// podsAtSwitch are the pods present at the last promotion, for the
	// status's replacement (hagroup.go).
	podsAtSwitch []string
	// lastPods are the pods of the group's last reconcile.
	lastPods []string
	// plannedMove is a switchover (or a move off a cordoned node) that the
	// lease gate held back until the old active acks standby.
	plannedMove *plannedMove
}

type plannedMove struct {
	from   string // the old active's UID
	reason election.Fault
	// at is when the gate told the old active standby: the start of the
	// switchover's gap (a live app acks within a millisecond).
	at time.Time
}

type pending struct {
	uid   types.UID
	name  string
	epoch uint64
	promo *promotion
	// reported: the promotion's report rides on the first message sent.
	reported bool
}

// warning is one warning about one pod.
type warning struct {
	uid    types.UID
	reason string
}

type written struct {
	role  string
	epoch uint64
	at    time.Time
}

type told struct {
	role     string
	epoch    uint64
	inflight bool
	acked    bool
	failedAt time.Time
	giveUp   bool // a pod being deleted gets one try only
	// restarts is a plain-mode active's container restarts when it was
	// told: a restart in place is told again (plain.go).
	restarts int32
}

// writtenTTL bounds how long an own write may mask what the cache shows;
// the cache normally catches up within milliseconds.
const writtenTTL = 10 * time.Second

func newGroupState() *groupState {
	return &groupState{written: map[types.UID]written{}, told: map[types.UID]*told{}, warned: map[warning]bool{}}
}

// forget drops memory of pods that no longer exist.
func (g *groupState) forget(present map[types.UID]bool) {
	for uid := range g.written {
		if !present[uid] {
			delete(g.written, uid)
		}
	}
	for uid := range g.told {
		if !present[uid] {
			delete(g.told, uid)
		}
	}
	for w := range g.warned {
		if !present[w.uid] {
			delete(g.warned, w)
		}
	}
}

// states is the set of groups, created on first use.
type states struct {
	mu sync.Mutex
	m  map[types.NamespacedName]*groupState
}

func (s *states) get(key types.NamespacedName) *groupState {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = map[types.NamespacedName]*groupState{}
	}
	g, ok := s.m[key]
	if !ok {
		g = newGroupState()
		s.m[key] = g
	}
	return g
}

func (s *states) drop(key types.NamespacedName) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.m, key)
}

// LeaseName is the name of the Lease that keeps a group's epoch. Group
// names are label values, which may hold what object names may not (upper
// case, "_", "a..b", "a.-b"): such a value is mapped to lower-case letters,
// digits and "-", and a hash of the value keeps distinct groups distinct.
// A value that already makes a valid name is used as is, so the Leases of
// existing groups keep their names.
func LeaseName(prefix, group string) string {
	name := prefix + group
	if len(validation.IsDNS1123Subdomain(name)) == 0 {
		return name
	}
	clean := strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
			return r
		case r >= 'A' && r <= 'Z':
			return r + ('a' - 'A')
		default:
			// Dots too: "." next to "." or "-" is what makes "a..b" and
			// "a.-b" invalid.
			return '-'
		}
	}, group)
	sum := sha256.Sum256([]byte(group))
	suffix := "-" + hex.EncodeToString(sum[:4])
	// The prefix was validated (with one character after it); the mapped
	// value is cut so that the whole stays within the 253 characters of a
	// name, which a 63-character label value never reaches with a sane
	// prefix.
	base := strings.TrimRight(prefix+strings.Trim(clean, "-"), "-.")
	if maxBase := validation.DNS1123SubdomainMaxLength - len(suffix); len(base) > maxBase {
		base = strings.TrimRight(base[:maxBase], "-.")
	}
	return base + suffix
}
