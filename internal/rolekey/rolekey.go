// Package rolekey loads the keys that authenticate role messages
// (docs/protocol.md, "Authentication") from a directory, such as a
// Kubernetes Secret mounted as a volume, and derives the per-group
// subkeys. Standard library only: pkg/role uses it.
//
// The directory holds one file per key, named by its key id (a Secret's
// data key) and holding the key in base64; an optional file "current"
// names the key a sender signs with (default: the greatest key id). Every
// key present is accepted, so a rotation is: add the new key everywhere,
// then make it current, then remove the old one.
package rolekey

import (
	"bytes"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hapod/hapod/internal/wire"
)

// CurrentFile is the file that names the signing key.
const CurrentFile = "current"

// MinKeyLen is the shortest key accepted, decoded: HMAC-SHA256 gains
// nothing from more than 32 bytes and is weak with much fewer.
const MinKeyLen = 16

// Ring is one snapshot of a key directory. Its zero value (and nil) has no
// keys: unauthenticated.
type Ring struct {
	keys    map[string][]byte
	current string
}

// NewRing returns a ring of keys (by key id) signing with current (the
// greatest id if empty). For tests and for derived rings.
func NewRing(keys map[string][]byte, current string) (*Ring, error) {
	r := &Ring{keys: maps.Clone(keys), current: current}
	for kid, k := range keys {
		if !wire.ValidKid(kid) || kid == CurrentFile {
			return nil, fmt.Errorf("rolekey: %q is not a key id", kid)
		}
		if len(k) < MinKeyLen {
			return nil, fmt.Errorf("rolekey: key %q has %d bytes, want at least %d", kid, len(k), MinKeyLen)
		}
	}
	if len(keys) == 0 {
		if current != "" {
			return nil, fmt.Errorf("rolekey: current key %q but no keys", current)
		}
		return r, nil
	}
	if current == "" {
		r.current = slices.Max(slices.Collect(maps.Keys(keys)))
	} else if _, ok := keys[current]; !ok {
		return nil, fmt.Errorf("rolekey: current key %q is not among the keys %v", current, r.IDs())
	}
	return r, nil
}

// Empty reports whether the ring has no keys (unauthenticated mode).
func (r *Ring) Empty() bool { return r == nil || len(r.keys) == 0 }

// Key returns the key named kid.
func (r *Ring) Key(kid string) ([]byte, bool) {
	if r == nil {
		return nil, false
	}
	k, ok := r.keys[kid]
	return k, ok
}

// Current is the key id senders sign with; "" when Empty.
func (r *Ring) Current() string {
	if r == nil {
		return ""
	}
	return r.current
}

// IDs lists the key ids, sorted.
func (r *Ring) IDs() []string {
	if r == nil {
		return nil
	}
	return slices.Sorted(maps.Keys(r.keys))
}

// Equal reports whether two rings hold the same keys and current key.
func (r *Ring) Equal(o *Ring) bool {
	if r.Empty() || o.Empty() {
		return r.Empty() == o.Empty()
	}
	return r.current == o.current && maps.EqualFunc(r.keys, o.keys, bytes.Equal)
}

// ForGroup returns the ring of group's subkeys (same ids and current key).
func (r *Ring) ForGroup(group string) *Ring {
	g := &Ring{keys: make(map[string][]byte, len(r.keys)), current: r.Current()}
	for kid, k := range r.keys {
		g.keys[kid] = GroupKey(k, group)
	}
	return g
}

// GroupKey derives group's subkey (32 bytes) from a master key with HKDF
// (RFC 5869, SHA-256; the group name, namespace/name, in the info): one
// group's subkey tells nothing about another's or the master key, so a
// pod given only its group's subkeys cannot steer another group.
func GroupKey(master []byte, group string) []byte {
	k, err := hkdf.Key(sha256.New, master, nil, "hapod role messages, group "+group, sha256.Size)
	if err != nil {
		panic(err) // only for a length HKDF cannot produce, and 32 bytes it can
	}
	return k
}

// Encode is a key as a key file holds it.
func Encode(k []byte) string { return base64.StdEncoding.EncodeToString(k) }

// LoadDir reads a key directory. A kubelet-managed volume (a "..data"
// symlink to a timestamped directory, swapped atomically on update) is
// read through that symlink once, so that a read racing the swap sees one
// version, never a mix. Entries starting with "." are not keys. An empty
// directory gives an empty ring: that is how an optional Secret volume
// whose Secret does not exist is mounted.
func LoadDir(dir string) (*Ring, error) {
	if target, err := filepath.EvalSymlinks(filepath.Join(dir, "..data")); err == nil {
		dir = target
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("rolekey: %w", err)
	}
	keys := map[string][]byte{}
	current := ""
	for _, e := range entries {
		name := e.Name()
		if strings.HasPrefix(name, ".") || e.IsDir() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			return nil, fmt.Errorf("rolekey: %w", err)
		}
		text := strings.TrimSpace(string(b))
		if name == CurrentFile {
			current = text
			continue
		}
		k, err := base64.StdEncoding.DecodeString(text)
		if err != nil {
			return nil, fmt.Errorf("rolekey: key file %s: not base64: %w", name, err)
		}
		keys[name] = k
	}
	return NewRing(keys, current)
}

// Source is a key directory kept fresh (a nil Source has no keys): it is read again when the ring is
// asked for and the last read is older than the poll interval, or on
// request (Refresh, after a message named an unknown key) at most once
// per refresh interval. Reading lazily needs no goroutine, and a receiver
// that gets nothing needs no fresh keys. A read that fails keeps the ring
// it had: a Secret being rewritten must not drop the keys in use. Safe
// for concurrent use; one caller at a time reads, the others get the
// ring as it is.
type Source struct {
	dir           string
	poll, refresh time.Duration
	ring          atomic.Pointer[Ring]
	loaded        atomic.Int64 // when last read, UnixNano
	forced        atomic.Int64 // when last read by Refresh, UnixNano
	reading       sync.Mutex
	lastErr       atomic.Pointer[error]
	loads         atomic.Uint64
}

// Default intervals of a Source: the kubelet takes up to a minute or two to
// update a Secret volume anyway.
const (
	DefaultPoll    = 10 * time.Second
	DefaultRefresh = time.Second
)

// Open reads dir once (an error here is the caller's to report: a typo in a
// flag must not silently disable authentication) and returns its Source.
// Zero intervals take the defaults; refresh is at most poll.
func Open(dir string, poll, refresh time.Duration) (*Source, error) {
	r, err := LoadDir(dir)
	if err != nil {
		return nil, err
	}
	if poll <= 0 {
		poll = DefaultPoll
	}
	if refresh <= 0 {
		refresh = DefaultRefresh
	}
	s := &Source{dir: dir, poll: poll, refresh: min(refresh, poll)}
	s.ring.Store(r)
	s.loaded.Store(time.Now().UnixNano())
	s.loads.Store(1)
	return s, nil
}

// Ring returns the keys, read again first if the last read is older than
// the poll interval.
func (s *Source) Ring(now time.Time) *Ring {
	if s == nil {
		return nil
	}
	s.maybeLoad(now, s.poll)
	return s.ring.Load()
}

// Refresh reads the directory again unless Refresh did within the refresh
// interval, and returns the ring. The limit is on Refresh's own reads, not
// the polls: right after a poll that came too early for an update, the
// first message under the new key still gets the update read at once.
func (s *Source) Refresh(now time.Time) *Ring {
	if s == nil {
		return nil
	}
	if now.UnixNano()-s.forced.Load() < int64(s.refresh) || !s.reading.TryLock() {
		return s.ring.Load()
	}
	defer s.reading.Unlock()
	s.forced.Store(now.UnixNano())
	s.load(now)
	return s.ring.Load()
}

// Loads counts the reads of the directory that succeeded.
func (s *Source) Loads() uint64 { return s.loads.Load() }

// Err is the last read's error, nil if it succeeded.
func (s *Source) Err() error {
	if e := s.lastErr.Load(); e != nil {
		return *e
	}
	return nil
}

// Dir is the directory read.
func (s *Source) Dir() string { return s.dir }

func (s *Source) maybeLoad(now time.Time, every time.Duration) {
	if now.UnixNano()-s.loaded.Load() < int64(every) || !s.reading.TryLock() {
		return
	}
	defer s.reading.Unlock()
	if now.UnixNano()-s.loaded.Load() < int64(every) {
		return
	}
	s.load(now)
}

// load reads the directory; s.reading is held.
func (s *Source) load(now time.Time) {
	s.loaded.Store(now.UnixNano())
	r, err := LoadDir(s.dir)
	if err != nil {
		s.lastErr.Store(&err)
		return
	}
	old := s.ring.Load()
	if r.Empty() && !old.Empty() {
		// Authentication is never turned off by a Secret that went empty
		// (deleted, or rewritten without keys): that would let whoever
		// can empty it forge role messages. Restart to turn it off.
		err := errors.New("rolekey: the key directory has no keys any more; keeping the keys loaded")
		s.lastErr.Store(&err)
		return
	}
	s.lastErr.Store(nil)
	s.loads.Add(1)
	if !r.Equal(old) {
		s.ring.Store(r)
	}
}

// Verify checks an authenticated datagram's body (m, decoded from it) and
// MAC against the ring, at now with the freshness window, and returns nil
// or the reason of refusal (wire.ErrUnauthenticated, ErrUnknownKey,
// ErrBadMAC, ErrExpired). The MAC is checked before anything else is
// believed; the replay check is the caller's, after this one, so that only
// verified datagrams leave state behind.
func (r *Ring) Verify(m wire.Message, body, sum []byte, now time.Time, window time.Duration) error {
	switch {
	case sum == nil || !m.Authenticated():
		return wire.ErrUnauthenticated
	}
	k, ok := r.Key(m.Kid)
	switch {
	case !ok:
		return fmt.Errorf("%w %q", wire.ErrUnknownKey, m.Kid)
	case !wire.Verify(k, body, sum):
		return wire.ErrBadMAC
	case !wire.Fresh(m.TS, now, window):
		return wire.ErrExpired
	}
	return nil
}
