package wire

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"unicode/utf8"
)

// Version is the only version this package encodes or accepts.
const Version = 1

// MaxSize bounds a datagram. A v1 message is a few hundred bytes; the bound
// keeps receive buffers fixed and lets receivers drop junk before parsing.
const MaxSize = 1024

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
	Group   string `json:"group"`            // namespace/groupname
	Pod     string `json:"pod"`              // pod the role message is addressed to, or the ack is sent from
	UID     string `json:"uid"`              // pod UID; fences a reused pod IP
	Role    string `json:"role"`             // RoleActive or RoleStandby
	Epoch   uint64 `json:"epoch"`            // per-group promotion counter
	Seq     uint64 `json:"seq"`              // sender-chosen, echoed by the ack
	Status  string `json:"status,omitempty"` // ack only
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
	// The version is read on its own first: a future version may change the
	// other fields' types, and that must count as a version mismatch, not as
	// garbage. "v" is therefore an integer in every version.
	var probe struct {
		Version *int `json:"v"`
	}
	if err := json.Unmarshal(b, &probe); err != nil {
		return Message{}, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	if probe.Version == nil {
		return Message{}, fmt.Errorf("%w: no version", ErrMalformed)
	}
	if *probe.Version != Version {
		return Message{}, fmt.Errorf("%w: %d", ErrVersion, *probe.Version)
	}
	var m Message
	if err := json.Unmarshal(b, &m); err != nil {
		return Message{}, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	if err := validate(m); err != nil {
		return Message{}, err
	}
	return m, nil
}

func validate(m Message) error {
	bad := func(what string) error { return fmt.Errorf("%w: %s", ErrMalformed, what) }
	switch m.Type {
	case TypeRole:
		if m.Status != "" {
			return bad("status set on a role message")
		}
	case TypeAck:
		switch m.Status {
		case StatusOK, StatusStale, StatusWrongPod:
		default:
			return bad("unknown ack status " + quote(m.Status))
		}
	default:
		return bad("unknown type " + quote(string(m.Type)))
	}
	switch m.Role {
	case RoleActive, RoleStandby:
	default:
		return bad("unknown role " + quote(m.Role))
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
