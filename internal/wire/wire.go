package wire

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"time"
	"unicode/utf8"
)

// Version is the only version this package encodes or accepts. Version 2
// added the role lease (TTLMillis, Echo, Nonce, Lease and StatusRetry): an
// active role now expires unless renewed, which changes what "active" means
// to a receiver, hence the bump.
const Version = 2

// MaxSize bounds a datagram. A message is a few hundred bytes; the bound
// keeps receive buffers fixed and lets receivers drop junk before parsing.
const MaxSize = 1024

// MaxEpoch is the highest epoch on the wire: the controller keeps epochs
// in a Lease's int32 and stops there (EpochsExhausted). A higher one can
// only be forged or corrupt, and one such datagram accepted would fence a
// listener against every real epoch for good, so it is malformed.
const MaxEpoch = 1<<31 - 1

// MaxTTLMillis bounds a lease's TTL (one hour), so that a TTL in
// milliseconds always fits a time.Duration.
const MaxTTLMillis = 3_600_000

// Type tells a role message from an ack.
type Type string

// Message types.
const (
	TypeRole Type = "role" // controller to pod
	TypeAck  Type = "ack"  // pod to controller
)

// Role values carried in Message.Role.
const (
	RoleActive  = "active"
	RoleStandby = "standby"
)

// Ack statuses carried in Message.Status.
const (
	StatusOK       = "ok"        // the role is recorded (possibly a duplicate)
	StatusStale    = "stale"     // the listener already holds a newer epoch, or refused active over standby at the same epoch
	StatusWrongPod = "wrong-pod" // addressed to another pod UID, pod name or group
	// StatusRetry answers an active role message whose Echo is not a nonce
	// the listener issued within the TTL: nothing was applied, and the
	// sender should send again echoing the ack's Nonce. It is how a lease is
	// granted (a fresh listener knows no nonce yet) and how a lapsed one is
	// renewed.
	StatusRetry = "retry"
)

// Sentinel errors returned (wrapped) by Decode and Encode, so that callers can
// count drops by kind with errors.Is.
var (
	ErrOversized = errors.New("wire: message larger than MaxSize")
	ErrMalformed = errors.New("wire: malformed message")
	ErrVersion   = errors.New("wire: unsupported version")
)

// Message is one datagram. Role messages and acks share the struct so that an
// ack can echo the fields the sender matches on (UID, Epoch, Seq).
type Message struct {
	Version int    `json:"v"`
	Type    Type   `json:"type"`
	Group   string `json:"group"` // namespace/groupname
	Pod     string `json:"pod"`   // pod the role message is addressed to, or the ack is sent from
	UID     string `json:"uid"`   // pod UID; fences a reused pod IP
	Role    string `json:"role"`  // RoleActive or RoleStandby
	Epoch   uint64 `json:"epoch"` // per-group promotion counter
	Seq     uint64 `json:"seq"`   // sender-chosen, echoed by the ack
	// TTLMillis is the lease an active role message grants, measured by
	// the listener from the moment it sent the ack carrying Echo. Required
	// (1..MaxTTLMillis) on active role messages, absent on standby ones.
	TTLMillis uint64 `json:"ttl_ms,omitempty"`
	// Echo is a Nonce from one of the listener's earlier acks (active role
	// messages only; 0 for none).
	Echo   uint64 `json:"echo,omitempty"`
	Status string `json:"status,omitempty"` // ack only
	// Nonce is fresh in every ack of a message addressed to the listener
	// (ack only; required with StatusRetry). The listener remembers when it
	// sent it.
	Nonce uint64 `json:"nonce,omitempty"`
	// Lease, in an ack, says the listener enforces the TTL: it stops
	// holding the active role when the TTL runs out without a renewal.
	Lease bool `json:"lease,omitempty"`

	// The authentication fields (auth.go), set by Seal's caller on every
	// datagram of a sender that has keys, absent otherwise; all four or
	// none. They are the sender's own, never echoed: an ack carries the
	// listener's.
	//
	// Kid names the key the datagram's MAC is made with.
	Kid string `json:"kid,omitempty"`
	// Boot is random per sender process (or listener), Ctr strictly
	// increasing within it: together they let a receiver refuse a replay.
	Boot uint64 `json:"boot,omitempty"`
	Ctr  uint64 `json:"ctr,omitempty"`
	// TS is the sender's wall clock in Unix milliseconds when it sent the
	// datagram: receivers refuse one outside their freshness window, which
	// bounds how long they must remember a Boot's counters.
	TS uint64 `json:"ts,omitempty"`
}

// Encode validates m and returns its datagram. A zero Version is encoded as
// Version, so callers need not set it.
func Encode(m Message) ([]byte, error) {
	if m.Version == 0 {
		m.Version = Version
	}
	if m.Version != Version {
		return nil, fmt.Errorf("%w: %d", ErrVersion, m.Version)
	}
	if err := validate(m); err != nil {
		return nil, err
	}
	if b, ok := fastEncode(make([]byte, 0, 320), m); ok {
		if len(b) > MaxSize {
			return nil, fmt.Errorf("%w: %d bytes", ErrOversized, len(b))
		}
		return b, nil
	}
	return encodeJSON(m)
}

// encodeJSON is Encode's general path: encoding/json, for strings that
// need escaping.
func encodeJSON(m Message) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	// HTML escaping would only make datagrams larger and harder to read.
	enc.SetEscapeHTML(false)
	if err := enc.Encode(m); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	b := bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
	if len(b) > MaxSize {
		return nil, fmt.Errorf("%w: %d bytes", ErrOversized, len(b))
	}
	return b, nil
}

// Decode parses and validates one datagram. Errors wrap ErrOversized,
// ErrMalformed or ErrVersion.
func Decode(b []byte) (Message, error) {
	if len(b) > MaxSize {
		return Message{}, fmt.Errorf("%w: %d bytes", ErrOversized, len(b))
	}
	// encoding/json would silently replace invalid UTF-8; a datagram that is
	// not valid JSON text should count as malformed, not be repaired.
	if !utf8.Valid(b) {
		return Message{}, fmt.Errorf("%w: invalid UTF-8", ErrMalformed)
	}
	m, ok := fastDecode(b)
	if ok && m.Version != Version {
		return Message{}, fmt.Errorf("%w: %d", ErrVersion, m.Version)
	}
	if !ok {
		var err error
		if m, err = decodeJSON(b); err != nil {
			return Message{}, err
		}
	}
	if err := validate(m); err != nil {
		return Message{}, err
	}
	return m, nil
}

// decodeJSON is Decode's general path, before validation: encoding/json,
// for anything but the canonical form.
func decodeJSON(b []byte) (Message, error) {
	// One pass reads "v" and the fields. "v" shadows Message.Version
	// (the outer field wins), so that its absence can be told from 0.
	var d struct {
		Version *int `json:"v"`
		Message
	}
	if err := json.Unmarshal(b, &d); err != nil {
		// A future version may change the other fields' types: that must
		// count as a version mismatch, not as garbage, so "v" is read on
		// its own ("v" is an integer in every version).
		var probe struct {
			Version *int `json:"v"`
		}
		if perr := json.Unmarshal(b, &probe); perr == nil && probe.Version != nil && *probe.Version != Version {
			return Message{}, fmt.Errorf("%w: %d", ErrVersion, *probe.Version)
		}
		return Message{}, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	if d.Version == nil {
		return Message{}, fmt.Errorf("%w: no version", ErrMalformed)
	}
	if *d.Version != Version {
		return Message{}, fmt.Errorf("%w: %d", ErrVersion, *d.Version)
	}
	if err := checkMembers(b); err != nil {
		return Message{}, err
	}
	m := d.Message
	m.Version = *d.Version
	return m, nil
}

// memberNames is every member name the protocol defines, as spelled.
var memberNames = func() map[string]bool {
	names := map[string]bool{"mac": true}
	t := reflect.TypeFor[Message]()
	for i := range t.NumField() {
		if name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ","); name != "" && name != "-" {
			names[name] = true
		}
	}
	return names
}()

// checkMembers refuses a datagram (a JSON object) that names a member
// twice, or names one of the protocol's members in another case.
// encoding/json matches names case-insensitively and keeps the last of
// two, so {"seq":1,"Seq":2} would read as seq 2 here and as seq 1 (or
// malformed) in a stricter implementation: the protocol's names are exact,
// and every implementation must read a datagram the same way.
func checkMembers(b []byte) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return fmt.Errorf("%w: not a JSON object", ErrMalformed)
	}
	seen := map[string]bool{}
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return fmt.Errorf("%w: %w", ErrMalformed, err)
		}
		name, _ := t.(string)
		if seen[name] {
			return fmt.Errorf("%w: member %s twice", ErrMalformed, quote(name))
		}
		seen[name] = true
		if !memberNames[name] {
			for known := range memberNames {
				if strings.EqualFold(known, name) {
					return fmt.Errorf("%w: member %s, not %s", ErrMalformed, quote(name), quote(known))
				}
			}
		}
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return fmt.Errorf("%w: %w", ErrMalformed, err)
		}
	}
	return nil
}

func validate(m Message) error {
	bad := func(what string) error { return fmt.Errorf("%w: %s", ErrMalformed, what) }
	switch m.Role {
	case RoleActive, RoleStandby:
	default:
		return bad("unknown role " + quote(m.Role))
	}
	switch m.Type {
	case TypeRole:
		switch {
		case m.Status != "":
			return bad("status set on a role message")
		case m.Nonce != 0 || m.Lease:
			return bad("nonce or lease set on a role message")
		}
	case TypeAck:
		switch m.Status {
		case StatusOK, StatusStale, StatusWrongPod:
		case StatusRetry:
			if m.Role != RoleActive || m.Nonce == 0 {
				return bad("retry ack without a nonce or not for an active role")
			}
		default:
			return bad("unknown ack status " + quote(m.Status))
		}
	default:
		return bad("unknown type " + quote(string(m.Type)))
	}
	// The lease fields of the role message, which an ack echoes.
	switch {
	case m.Role == RoleActive && (m.TTLMillis == 0 || m.TTLMillis > MaxTTLMillis):
		return bad(fmt.Sprintf("active role with ttl_ms %d, want 1..%d", m.TTLMillis, MaxTTLMillis))
	case m.Role == RoleStandby && (m.TTLMillis != 0 || m.Echo != 0):
		return bad("ttl_ms or echo set on a standby role")
	}
	if m.Epoch > MaxEpoch {
		return bad(fmt.Sprintf("epoch %d above %d", m.Epoch, uint64(MaxEpoch)))
	}
	if err := validateAuth(m); err != nil {
		return err
	}
	// UID is required because it is half of how an ack is matched to its
	// Send and how a reused pod IP is told apart from the intended pod.
	switch {
	case m.Group == "":
		return bad("no group")
	case m.Pod == "":
		return bad("no pod")
	case m.UID == "":
		return bad("no uid")
	}
	return nil
}

// quote keeps error messages bounded when fed hostile input.
func quote(s string) string {
	const limit = 32
	if len(s) > limit {
		s = s[:limit] + "..."
	}
	return fmt.Sprintf("%q", s)
}

// TTL is the message's TTLMillis as a duration.
func (m Message) TTL() time.Duration { return time.Duration(m.TTLMillis) * time.Millisecond }

// TTLMillisOf rounds a TTL up to whole milliseconds, the unit on the wire:
// rounding down would grant less than the sender accounts for, which is
// safe, but surprising.
func TTLMillisOf(d time.Duration) uint64 {
	if d <= 0 {
		return 0
	}
	return uint64((d + time.Millisecond - 1) / time.Millisecond)
}
