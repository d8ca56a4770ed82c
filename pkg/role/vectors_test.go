package role

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/hapod/hapod/internal/dev/keydir"
	"github.com/hapod/hapod/internal/rolekey"
	"github.com/hapod/hapod/internal/wire"
)

// The protocol's test vectors, docs/protocol-vectors.json: a file another
// implementation of the listener (or of the controller's ack check) can be
// checked against. This test generates it from the cases below, checking
// as it goes that the real listener decides each step as the case says;
// without -update it fails if the checked-in file differs from what it
// generates, then runs every listener case of the file against the
// listener. The controller cases are run by internal/notify's tests.
//
//	go test ./pkg/role -run TestVectors -update

var update = flag.Bool("update", false, "rewrite docs/protocol-vectors.json")

const vectorsFile = "../../docs/protocol-vectors.json"

// The file's format. Field comments are in the file's own "about".
type vectors struct {
	About        []string         `json:"about"`
	Version      int              `json:"version"`
	MaxSize      int              `json:"max_size"`
	MaxEpoch     uint64           `json:"max_epoch"`
	MaxTTLMillis uint64           `json:"max_ttl_ms"`
	FreshnessMS  uint64           `json:"freshness_ms"`
	NonceSlots   int              `json:"nonce_slots"`
	ReplayWindow int              `json:"replay_window"`
	HKDFInfo     string           `json:"hkdf_info_prefix"`
	Keys         []vecKey         `json:"keys"`
	Listener     []listenerCase   `json:"listener_cases"`
	Controller   []controllerCase `json:"controller_cases"`
}

type vecKey struct {
	Kid       string      `json:"kid"`
	MasterHex string      `json:"master_hex"`
	Subkeys   []vecSubkey `json:"subkeys"`
}

type vecSubkey struct {
	Group     string `json:"group"`
	SubkeyHex string `json:"subkey_hex"`
}

type listenerCase struct {
	Name    string         `json:"name"`
	Comment string         `json:"comment"`
	Config  listenerConfig `json:"config"`
	Steps   []listenerStep `json:"steps"`
}

type listenerConfig struct {
	PodName     string            `json:"pod_name,omitempty"`
	PodUID      string            `json:"pod_uid,omitempty"`
	Group       string            `json:"group,omitempty"`
	Keys        map[string]string `json:"keys,omitempty"`
	FreshnessMS uint64            `json:"freshness_ms"`
	Boot        uint64            `json:"boot"`
	Nonces      []uint64          `json:"nonces"`
}

type listenerStep struct {
	Comment   string     `json:"comment,omitempty"`
	AtMS      uint64     `json:"at_ms"`
	Datagram  []byte     `json:"datagram,omitempty"`
	Text      string     `json:"text,omitempty"`
	Outcome   string     `json:"outcome"`
	Reason    string     `json:"reason,omitempty"`
	Decision  string     `json:"decision"`
	AckStatus string     `json:"ack_status"`
	Ack       *vecAck    `json:"ack"`
	Notify    []vecState `json:"notify"`
	State     vecState   `json:"state"`
}

type vecAck struct {
	Message  json.RawMessage `json:"message"`
	Signed   bool            `json:"signed"`
	Datagram []byte          `json:"datagram"`
	Text     string          `json:"text"`
}

type vecState struct {
	Role     string `json:"role"`
	Epoch    uint64 `json:"epoch"`
	Group    string `json:"group"`
	Fenced   bool   `json:"fenced"`
	ExpiryMS uint64 `json:"expiry_ms"`
}

type controllerCase struct {
	Name    string           `json:"name"`
	Comment string           `json:"comment"`
	Config  controllerConfig `json:"config"`
	Pending []pendingSend    `json:"pending"`
	Steps   []controllerStep `json:"steps"`
}

type controllerConfig struct {
	Keys        map[string]string `json:"keys,omitempty"`
	FreshnessMS uint64            `json:"freshness_ms"`
}

type pendingSend struct {
	To    string `json:"to"`
	UID   string `json:"uid"`
	Epoch uint64 `json:"epoch"`
	Seq   uint64 `json:"seq"`
}

type controllerStep struct {
	Comment  string `json:"comment,omitempty"`
	AtMS     uint64 `json:"at_ms"`
	From     string `json:"from"`
	Datagram []byte `json:"datagram"`
	Text     string `json:"text,omitempty"`
	Accept   bool   `json:"accept"`
	Outcome  string `json:"outcome"`
	Reason   string `json:"reason,omitempty"`
}

// The fixed inputs.
const (
	vT0       = uint64(1764630000000) // 2025-12-01T23:00:00Z, every case's clock starts here
	vGroup    = "shop/db"
	vOther    = "shop/cache"
	vPod      = "db-0"
	vUID      = "0b7c3f6e-5d2a-4c1e-9f3b-2a6d8e1c4b70"
	vTTL      = uint64(150)
	vCtlBoot  = uint64(5183319473093841210)
	vLisBoot  = uint64(14503381145633204071) // above 2^63: a signed 64-bit integer cannot hold it
	vSeq0     = uint64(4611686018427387904)  // the controller's first seq (2^62), above 2^53 too
	vFreshMS  = uint64(30000)
	vPodAddr  = "10.1.2.3:7477"
	vElseAddr = "10.1.2.4:7477"
)

var (
	vMasters = map[string][]byte{"k1": seqBytes(0x00, 32), "k2": seqBytes(0x40, 32)}
	vGroups  = []string{vGroup, vOther}
)

func seqBytes(from byte, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = from + byte(i)
	}
	return b
}

func subkey(kid, group string) []byte { return rolekey.GroupKey(vMasters[kid], group) }

func subkeysHex(group string, kids ...string) map[string]string {
	m := map[string]string{}
	for _, k := range kids {
		m[k] = hex.EncodeToString(subkey(k, group))
	}
	return m
}

func mastersHex(kids ...string) map[string]string {
	m := map[string]string{}
	for _, k := range kids {
		m[k] = hex.EncodeToString(vMasters[k])
	}
	return m
}

// vsender plays the controller: it numbers its role messages (seq) and
// datagrams (ctr) and signs them as internal/notify does.
type vsender struct {
	kid      string // "" sends unsigned
	seq, ctr uint64
}

func newSender(kid string) *vsender { return &vsender{kid: kid, seq: vSeq0} }

// msg builds a role message for the listener under test.
func msg(role string, epoch uint64, echo uint64) wire.Message {
	m := wire.Message{Type: wire.TypeRole, Group: vGroup, Pod: vPod, UID: vUID, Role: role, Epoch: epoch}
	if role == wire.RoleActive {
		m.TTLMillis, m.Echo = vTTL, echo
	}
	return m
}

// send is the datagram of m sent at at: a fresh seq unless m has one, a
// fresh ctr, and signed with the group's subkey if the sender has a key.
func (s *vsender) send(m wire.Message, at uint64) []byte {
	return s.sendWith(m, at, func(*wire.Message) {}, nil)
}

// sendWith is send with edit applied to the message before it is encoded
// and, if key is set, the MAC made with key instead of the group's subkey.
func (s *vsender) sendWith(m wire.Message, at uint64, edit func(*wire.Message), key []byte) []byte {
	if m.Seq == 0 {
		s.seq++
		m.Seq = s.seq
	}
	if s.kid != "" {
		s.ctr++
		m.Kid, m.Boot, m.Ctr, m.TS = s.kid, vCtlBoot, s.ctr, at
	}
	edit(&m)
	b, err := wire.Encode(m)
	if err != nil {
		panic(err)
	}
	if m.Kid == "" {
		return b
	}
	if key == nil {
		key = subkey(m.Kid, m.Group)
	}
	d, err := wire.Seal(b, key)
	if err != nil {
		panic(err)
	}
	return d
}

// withMember inserts a member before b's closing brace (b unsigned).
func withMember(b []byte, member string) []byte {
	return append(append(append([]byte{}, b[:len(b)-1]...), member...), '}')
}

// stepSpec is one step of a listener case as written here: what is sent
// (built when the step runs, from what the listener answered before), and
// what the real listener must decide.
type stepSpec struct {
	comment string
	at      uint64 // ms after vT0
	dgram   func(h *history) []byte
	outcome string // "tick": no datagram, the clock moves
	role    Role
	epoch   uint64
	fenced  bool
}

// history is what the case's steps saw so far.
type history struct {
	nonces []uint64 // the nonces of the acks, in order
}

// last is the nonce of the latest ack that carried one.
func (h *history) last() uint64 {
	if len(h.nonces) == 0 {
		panic("no nonce yet")
	}
	return h.nonces[len(h.nonces)-1]
}

type caseSpec struct {
	name, comment string
	cfg           listenerConfig // Boot, FreshnessMS and Nonces are filled in
	steps         []stepSpec
}

// later is a step whose datagram does not depend on the history; it is
// built when the step runs, so that the sender's seq and ctr increase in
// the order of the steps.
func later(f func() []byte) func(*history) []byte { return func(*history) []byte { return f() } }

func listenerSpecs() []caseSpec {
	k1 := subkeysHex(vGroup, "k1")
	keyed := listenerConfig{PodName: vPod, PodUID: vUID, Keys: k1}
	unkeyed := listenerConfig{PodName: vPod, PodUID: vUID}
	active, standby := wire.RoleActive, wire.RoleStandby

	// grant is the two steps of a lease grant at epoch, at t and t+1.
	grant := func(s *vsender, epoch, t uint64) []stepSpec {
		return []stepSpec{
			{"grant, first round: no echo, nothing applied, a nonce to echo", t,
				func(*history) []byte { return s.send(msg(active, epoch, 0), vT0+t) }, "retry", Unknown, 0, false},
			{"grant, second round: echoes the retry's nonce, applied; the lease ends at the nonce's send time + ttl_ms", t + 1,
				func(h *history) []byte { return s.send(msg(active, epoch, h.last()), vT0+t+1) }, "accepted", Active, epoch, false},
		}
	}
	var specs []caseSpec
	add := func(c caseSpec) { specs = append(specs, c) }

	// Decisions, with keys.
	{
		s := newSender("k1")
		add(caseSpec{"promote", "a fresh listener granted the active role: the two rounds of a grant", keyed, grant(s, 1, 0)})
	}
	{
		s := newSender("k1")
		steps := grant(s, 1, 0)
		steps = append(steps,
			stepSpec{"renewal echoing the latest nonce: the lease extends to that nonce's send time + ttl_ms, nothing is notified", 50,
				func(h *history) []byte { return s.send(msg(active, 1, h.last()), vT0+50) }, "renewed", Active, 1, false},
			stepSpec{"the same echo again (a resend: fresh seq and ctr): renewed, but the lease cannot extend past what that nonce allows", 60,
				func(h *history) []byte { return s.send(msg(active, 1, h.nonces[len(h.nonces)-2]), vT0+60) }, "renewed", Active, 1, false},
			stepSpec{"a renewal echoing a nonce the listener never issued: retry, the lease is unchanged", 70,
				later(func() []byte { return s.send(msg(active, 1, 12345), vT0+70) }), "retry", Active, 1, false},
		)
		add(caseSpec{"renewal", "renewals of a held lease, valid and not", keyed, steps})
	}
	{
		s := newSender("k1")
		steps := grant(s, 1, 0)
		steps = append(steps,
			stepSpec{"no renewal: the clock passes the lease's end (sent(nonce) + ttl_ms = at 150): fenced, standby at the same epoch, notified", 150,
				nil, "tick", Standby, 1, true},
			stepSpec{"a late renewal echoing the nonce of before the lapse: retry, still fenced", 200,
				func(h *history) []byte { return s.send(msg(active, 1, h.nonces[len(h.nonces)-1]), vT0+200) }, "retry", Standby, 1, true},
			stepSpec{"the renewal round: echoes the retry's nonce, active again at the same epoch", 201,
				func(h *history) []byte { return s.send(msg(active, 1, h.last()), vT0+201) }, "accepted", Active, 1, false},
			stepSpec{"the new lease runs out too", 351, nil, "tick", Standby, 1, true},
			stepSpec{"told standby at the epoch after a lapse: applied, Fenced cleared", 360,
				later(func() []byte { return s.send(msg(standby, 1, 0), vT0+360) }), "accepted", Standby, 1, false},
			stepSpec{"then active at that epoch, even echoing a fresh nonce: stale (told standby at 1, only a higher epoch can promote)", 361,
				func(h *history) []byte { return s.send(msg(active, 1, h.last()), vT0+361) }, "stale", Standby, 1, false},
		)
		add(caseSpec{"lease lapse", "an active listener that hears no renewal fences itself; a renewal round revives it", keyed, steps})
	}
	{
		s := newSender("k1")
		steps := grant(s, 1, 0)
		steps = append(steps,
			stepSpec{"demoted at a new epoch", 10, later(func() []byte { return s.send(msg(standby, 2, 0), vT0+10) }), "accepted", Standby, 2, false},
			stepSpec{"the controller's resend of it (same seq, fresh ctr): a duplicate, acked ok, nothing notified", 11,
				func(*history) []byte {
					m := msg(standby, 2, 0)
					m.Seq = s.seq
					return s.send(m, vT0+11)
				}, "duplicate", Standby, 2, false},
			stepSpec{"active over standby at the same epoch: stale", 12,
				func(h *history) []byte { return s.send(msg(active, 2, h.last()), vT0+12) }, "stale", Standby, 2, false},
		)
		add(caseSpec{"demote", "the active told standby at a higher epoch, then its resend and a conflicting active", keyed, steps})
	}
	{
		s := newSender("k1")
		steps := grant(s, 3, 0)
		steps = append(steps,
			stepSpec{"standby at the same epoch as the held active: applied (two actives are worse than none)", 10,
				later(func() []byte { return s.send(msg(standby, 3, 0), vT0+10) }), "accepted", Standby, 3, false},
		)
		add(caseSpec{"standby over active at the same epoch", "conflicting roles at one epoch: standby wins", keyed, steps})
	}
	{
		s := newSender("k1")
		add(caseSpec{"stale epoch", "a delayed message of an older epoch never undoes a later decision", keyed, []stepSpec{
			{"standby at epoch 5", 0, later(func() []byte { return s.send(msg(standby, 5, 0), vT0) }), "accepted", Standby, 5, false},
			{"active at epoch 4: stale", 1, later(func() []byte { return s.send(msg(active, 4, 0), vT0+1) }), "stale", Standby, 5, false},
			{"standby at epoch 4: stale", 2, later(func() []byte { return s.send(msg(standby, 4, 0), vT0+2) }), "stale", Standby, 5, false},
			{"standby at epoch 0: stale", 3, later(func() []byte { return s.send(msg(standby, 0, 0), vT0+3) }), "stale", Standby, 5, false},
		}})
	}
	{
		s := newSender("")
		add(caseSpec{"fresh listener at epoch 0", "a fresh listener takes standby at epoch 0 (a group that never promoted)", unkeyed, []stepSpec{
			{"standby at epoch 0", 0, later(func() []byte { return s.send(msg(standby, 0, 0), vT0) }), "accepted", Standby, 0, false},
		}})
	}
	{
		s := newSender("k1")
		first := s.send(msg(standby, 1, 0), vT0)
		add(caseSpec{"replayed datagram", "a datagram received twice: the (boot, ctr) pair is spent", keyed, []stepSpec{
			{"standby at 1", 0, later(func() []byte { return first }), "accepted", Standby, 1, false},
			{"the same bytes again: dropped without reply", 1, later(func() []byte { return first }), "replayed", Standby, 1, false},
			{"the same message with a fresh ctr (how the controller resends): a duplicate, acked", 2,
				func(*history) []byte {
					m := msg(standby, 1, 0)
					m.Seq = s.seq
					return s.send(m, vT0+2)
				}, "duplicate", Standby, 1, false},
		}})
	}
	{
		s := newSender("k1")
		at := func(ctr uint64, m wire.Message, t uint64) []byte {
			return s.sendWith(m, vT0+t, func(m *wire.Message) { m.Ctr = ctr }, nil)
		}
		add(caseSpec{"counter going backwards", "ctr strictly increases per boot; the receiver keeps a window of 64 below the highest seen (datagrams may be reordered)", keyed, []stepSpec{
			{"ctr 100", 0, later(func() []byte { return at(100, msg(standby, 1, 0), 0) }), "accepted", Standby, 1, false},
			{"ctr 99, never seen, inside the window: accepted (a reordered datagram)", 1, later(func() []byte { return at(99, msg(standby, 2, 0), 1) }), "accepted", Standby, 2, false},
			{"ctr 37, 63 below the highest: still inside the window", 2, later(func() []byte { return at(37, msg(standby, 3, 0), 2) }), "accepted", Standby, 3, false},
			{"ctr 36, 64 below the highest: too old to tell, dropped as replayed", 3, later(func() []byte { return at(36, msg(standby, 4, 0), 3) }), "replayed", Standby, 3, false},
			{"ctr 99 again: replayed", 4, later(func() []byte { return at(99, msg(standby, 4, 0), 4) }), "replayed", Standby, 3, false},
			{"ctr 200: accepted", 5, later(func() []byte { return at(200, msg(standby, 4, 0), 5) }), "accepted", Standby, 4, false},
			{"ctr 100, now 100 below the highest: replayed", 6, later(func() []byte { return at(100, msg(standby, 5, 0), 6) }), "replayed", Standby, 4, false},
		}})
	}
	{
		s := newSender("k1")
		wrong := func(edit func(*wire.Message), t uint64) []byte {
			m := msg(standby, 7, 0)
			edit(&m)
			return s.send(m, vT0+t)
		}
		cfg := keyed
		cfg.Group = vGroup
		add(caseSpec{"addressing", "a message for another pod name, UID or group is refused, acked wrong-pod (no nonce; the ack's pod is the listener's own name)", cfg, []stepSpec{
			{"another pod name", 0, later(func() []byte { return wrong(func(m *wire.Message) { m.Pod = "db-1" }, 0) }), "wrong-pod", Unknown, 0, false},
			{"another UID (a deleted pod whose IP was reused)", 1, later(func() []byte {
				return wrong(func(m *wire.Message) { m.UID = "7d1e0c55-0000-4000-8000-000000000001" }, 1)
			}), "wrong-pod", Unknown, 0, false},
			{"another group, validly signed with that group's subkey (which this listener lacks: bad MAC)", 2,
				later(func() []byte { return wrong(func(m *wire.Message) { m.Group = vOther }, 2) }), "bad-mac", Unknown, 0, false},
			{"the right pod: accepted", 3, later(func() []byte { return wrong(func(*wire.Message) {}, 3) }), "accepted", Standby, 7, false},
		}})
	}
	{
		s := newSender("")
		cfg := unkeyed
		cfg.Group = vGroup
		add(caseSpec{"wrong group, configured", "without keys, a listener told its group refuses any other, even first", cfg, []stepSpec{
			{"another group", 0, later(func() []byte {
				return s.send(func() wire.Message { m := msg(standby, 2, 0); m.Group = vOther; return m }(), vT0)
			}), "wrong-pod", Unknown, 0, false},
			{"its group", 1, later(func() []byte { return s.send(msg(standby, 1, 0), vT0+1) }), "accepted", Standby, 1, false},
		}})
	}
	{
		s := newSender("")
		cfg := unkeyed
		add(caseSpec{"wrong group, first served", "without a configured group the listener serves the first group it accepts; another is wrong-pod (epochs of groups cannot be compared)", cfg, []stepSpec{
			{"standby for shop/db at 1: binds the listener to it", 0, later(func() []byte { return s.send(msg(standby, 1, 0), vT0) }), "accepted", Standby, 1, false},
			{"standby for shop/cache at 9", 1, later(func() []byte {
				return s.send(func() wire.Message { m := msg(standby, 9, 0); m.Group = vOther; return m }(), vT0+1)
			}), "wrong-pod", Standby, 1, false},
		}})
	}

	// Malformed, oversized, unknown versions: dropped before anything is
	// authenticated.
	{
		s := newSender("k1")
		raw := func(text string) func(*history) []byte { return later(func() []byte { return []byte(text) }) }
		base := `"type":"role","group":"shop/db","pod":"db-0","uid":"` + vUID + `"`
		steps := []stepSpec{
			{"not JSON", 0, raw(`hello`), "malformed", Unknown, 0, false},
			{"a JSON array", 1, raw(`[2,"role"]`), "malformed", Unknown, 0, false},
			{"truncated", 2, raw(`{"v":2,` + base + `,"role":"standby","epoch":1,"seq":1`), "malformed", Unknown, 0, false},
			{"no v", 3, raw(`{` + base + `,"role":"standby","epoch":1,"seq":1}`), "malformed", Unknown, 0, false},
			{"v a string", 4, raw(`{"v":"2",` + base + `,"role":"standby","epoch":1,"seq":1}`), "malformed", Unknown, 0, false},
			{"invalid UTF-8", 5, later(func() []byte {
				return append([]byte(`{"v":2,`+base+`,"role":"standby","epoch":1,"seq":1,"x":"`), 0xff, '"', '}')
			}), "malformed", Unknown, 0, false},
			{"epoch a string", 6, raw(`{"v":2,` + base + `,"role":"standby","epoch":"1","seq":1}`), "malformed", Unknown, 0, false},
			{"epoch negative", 7, raw(`{"v":2,` + base + `,"role":"standby","epoch":-1,"seq":1}`), "malformed", Unknown, 0, false},
			{"epoch a fraction", 8, raw(`{"v":2,` + base + `,"role":"standby","epoch":1.5,"seq":1}`), "malformed", Unknown, 0, false},
			{"epoch above 2^31-1 (max_epoch)", 9, raw(`{"v":2,` + base + `,"role":"standby","epoch":2147483648,"seq":1}`), "malformed", Unknown, 0, false},
			{"unknown role", 10, raw(`{"v":2,` + base + `,"role":"leader","epoch":1,"seq":1}`), "malformed", Unknown, 0, false},
			{"unknown type", 11, raw(`{"v":2,"type":"hello","group":"shop/db","pod":"db-0","uid":"` + vUID + `","role":"standby","epoch":1,"seq":1}`), "malformed", Unknown, 0, false},
			{"an ack sent to the listener", 12, raw(`{"v":2,"type":"ack","group":"shop/db","pod":"db-0","uid":"` + vUID + `","role":"standby","epoch":1,"seq":1,"status":"ok"}`), "malformed", Unknown, 0, false},
			{"no uid", 13, raw(`{"v":2,"type":"role","group":"shop/db","pod":"db-0","role":"standby","epoch":1,"seq":1}`), "malformed", Unknown, 0, false},
			{"empty group", 14, raw(`{"v":2,"type":"role","group":"","pod":"db-0","uid":"` + vUID + `","role":"standby","epoch":1,"seq":1}`), "malformed", Unknown, 0, false},
			{"active without ttl_ms", 15, raw(`{"v":2,` + base + `,"role":"active","epoch":1,"seq":1}`), "malformed", Unknown, 0, false},
			{"active with ttl_ms above 3600000", 16, raw(`{"v":2,` + base + `,"role":"active","epoch":1,"seq":1,"ttl_ms":3600001}`), "malformed", Unknown, 0, false},
			{"standby with ttl_ms", 17, raw(`{"v":2,` + base + `,"role":"standby","epoch":1,"seq":1,"ttl_ms":150}`), "malformed", Unknown, 0, false},
			{"standby with echo", 18, raw(`{"v":2,` + base + `,"role":"standby","epoch":1,"seq":1,"echo":5}`), "malformed", Unknown, 0, false},
			{"status on a role message", 19, raw(`{"v":2,` + base + `,"role":"standby","epoch":1,"seq":1,"status":"ok"}`), "malformed", Unknown, 0, false},
			{"nonce on a role message", 20, raw(`{"v":2,` + base + `,"role":"standby","epoch":1,"seq":1,"nonce":5}`), "malformed", Unknown, 0, false},
			{"kid without boot, ctr and ts", 21, raw(`{"v":2,` + base + `,"role":"standby","epoch":1,"seq":1,"kid":"k1"}`), "malformed", Unknown, 0, false},
			{"a kid with a character outside [A-Za-z0-9._-]", 22, raw(`{"v":2,` + base + `,"role":"standby","epoch":1,"seq":1,"kid":"k/1","boot":1,"ctr":1,"ts":1764630000022}`), "malformed", Unknown, 0, false},
			{"trailing data after the object", 23, raw(`{"v":2,` + base + `,"role":"standby","epoch":1,"seq":1} {}`), "malformed", Unknown, 0, false},
			{"a member named twice", 24, raw(`{"v":2,` + base + `,"role":"standby","epoch":1,"seq":1,"seq":2}`), "malformed", Unknown, 0, false},
			{"a member's name in another case (Seq for seq): names are exact", 25, raw(`{"v":2,` + base + `,"role":"standby","epoch":1,"Seq":1}`), "malformed", Unknown, 0, false},
			{"a valid message after all that: nothing was wedged", 26, later(func() []byte { return s.send(msg(standby, 1, 0), vT0+26) }), "accepted", Standby, 1, false},
		}
		add(caseSpec{"malformed", "datagrams that are not valid v2 role messages: dropped without reply, changing nothing", keyed, steps})
	}
	{
		s := newSender("k1")
		// A signed message padded with an unknown member to exactly
		// max_size bytes with its MAC, and one byte more.
		padded := func(total int, t uint64) []byte {
			m := msg(standby, 1, 0)
			s.seq++
			s.ctr++
			m.Seq, m.Kid, m.Boot, m.Ctr, m.TS = s.seq, "k1", vCtlBoot, s.ctr, vT0+t
			b, err := wire.Encode(m)
			if err != nil {
				panic(err)
			}
			const macLen = len(`,"mac":""`) + 43
			pad := total - macLen - len(b) - len(`,"pad":""`)
			body := withMember(b, `,"pad":"`+strings.Repeat("x", pad)+`"`)
			d, err := wire.Seal(body, subkey("k1", vGroup))
			if err != nil {
				panic(err)
			}
			if len(d) != total {
				panic(fmt.Sprintf("padded to %d, want %d", len(d), total))
			}
			return d
		}
		add(caseSpec{"size", "max_size is 1024 bytes, the MAC included", keyed, []stepSpec{
			{"1025 bytes, unsigned: oversized, dropped", 0, later(func() []byte {
				return func() []byte {
					b, err := wire.Encode(func() wire.Message { m := msg(standby, 1, 0); m.Seq = 1; return m }())
					if err != nil {
						panic(err)
					}
					return withMember(b, `,"pad":"`+strings.Repeat("x", wire.MaxSize+1-len(b)-len(`,"pad":""`))+`"`)
				}()
			}), "malformed", Unknown, 0, false},
			{"exactly 1024 bytes, an unknown member padding it: accepted (unknown members are ignored, and covered by the MAC)", 1, later(func() []byte { return padded(wire.MaxSize, 1) }), "accepted", Standby, 1, false},
		}})
	}
	{
		s := newSender("k1")
		base := `"type":"role","group":"shop/db","pod":"db-0","uid":"` + vUID + `","role":"standby","epoch":1,"seq":1`
		v := func(s string) func(*history) []byte { return later(func() []byte { return []byte(s) }) }
		add(caseSpec{"unknown version", "a receiver decodes v first and drops any version it does not speak, without reply", keyed, []stepSpec{
			{"v 1", 0, v(`{"v":1,` + base + `}`), "malformed", Unknown, 0, false},
			{"v 3", 1, v(`{"v":3,` + base + `}`), "malformed", Unknown, 0, false},
			{"v 3 whose other fields have types v2 does not know: still a version mismatch", 2, v(`{"v":3,"type":{"kind":"role"},"epoch":[1]}`), "malformed", Unknown, 0, false},
			{"v 2, signed: accepted", 3, later(func() []byte { return s.send(msg(standby, 1, 0), vT0+3) }), "accepted", Standby, 1, false},
		}})
	}

	// Authentication.
	{
		s := newSender("k1")
		u := newSender("")
		other := seqBytes(0x90, 32)
		add(caseSpec{"authentication refused", "with keys, every datagram that cannot be verified is dropped without reply and changes nothing", keyed, []stepSpec{
			{"no MAC and no authentication fields", 0, later(func() []byte { return u.send(msg(standby, 5, 0), vT0) }), "unauthenticated", Unknown, 0, false},
			{"authentication fields but no MAC", 1, later(func() []byte {
				return func() []byte {
					b := s.send(msg(standby, 5, 0), vT0+1)
					body, _ := wire.Open(b)
					return body
				}()
			}), "unauthenticated", Unknown, 0, false},
			{"a MAC but no authentication fields", 2, later(func() []byte {
				return func() []byte {
					b, _ := wire.Encode(func() wire.Message { m := msg(standby, 5, 0); m.Seq = 9; return m }())
					d, _ := wire.Seal(b, subkey("k1", vGroup))
					return d
				}()
			}), "unauthenticated", Unknown, 0, false},
			{"a MAC that is not the last member", 3, later(func() []byte {
				return func() []byte {
					b := s.send(msg(standby, 5, 0), vT0+3)
					body, sum := wire.Open(b)
					i := bytes.Index(body, []byte(`,"kid"`))
					return []byte(string(body[:i]) + `,"mac":"` + b64url(sum) + `"` + string(body[i:]))
				}()
			}), "unauthenticated", Unknown, 0, false},
			{"a forged MAC (made with a key the listener does not have, under kid k1)", 4,
				later(func() []byte { return s.sendWith(msg(standby, 5, 0), vT0+4, func(*wire.Message) {}, other) }), "bad-mac", Unknown, 0, false},
			{"made with the master key itself, not the group's subkey", 5,
				later(func() []byte { return s.sendWith(msg(standby, 5, 0), vT0+5, func(*wire.Message) {}, vMasters["k1"]) }), "bad-mac", Unknown, 0, false},
			{"made with another group's subkey (a pod of shop/cache steering shop/db)", 6,
				later(func() []byte {
					return s.sendWith(msg(standby, 5, 0), vT0+6, func(*wire.Message) {}, subkey("k1", vOther))
				}), "bad-mac", Unknown, 0, false},
			{"a valid datagram with one byte changed after signing (epoch 5 to 6)", 7, later(func() []byte {
				return func() []byte {
					b := s.send(msg(standby, 5, 0), vT0+7)
					return bytes.Replace(b, []byte(`"epoch":5`), []byte(`"epoch":6`), 1)
				}()
			}), "bad-mac", Unknown, 0, false},
			{"an unknown kid (k9)", 8, later(func() []byte {
				return func() []byte {
					k := newSender("k9")
					k.seq, k.ctr = s.seq, s.ctr
					return k.sendWith(msg(standby, 5, 0), vT0+8, func(*wire.Message) {}, other)
				}()
			}), "unknown-key", Unknown, 0, false},
			{"a valid datagram: accepted, nothing above left a trace", 9, later(func() []byte { return s.send(msg(standby, 1, 0), vT0+9) }), "accepted", Standby, 1, false},
		}})
	}
	{
		s := newSender("k1")
		stamp := func(ts uint64, epoch uint64, t uint64) []byte {
			return s.sendWith(msg(standby, epoch, 0), vT0+t, func(m *wire.Message) { m.TS = ts }, nil)
		}
		add(caseSpec{"freshness", "ts (the sender's wall clock, Unix ms) must be within freshness_ms of the receiver's, either way", keyed, []stepSpec{
			{"ts 30001 ms behind: expired", 0, later(func() []byte { return stamp(vT0-30001, 1, 0) }), "expired", Unknown, 0, false},
			{"ts 30001 ms ahead: expired", 1, later(func() []byte { return stamp(vT0+1+30001, 1, 1) }), "expired", Unknown, 0, false},
			{"ts exactly 30000 ms behind: accepted (the bound is inclusive)", 2, later(func() []byte { return stamp(vT0+2-30000, 1, 2) }), "accepted", Standby, 1, false},
			{"ts exactly 30000 ms ahead: accepted", 3, later(func() []byte { return stamp(vT0+3+30000, 2, 3) }), "accepted", Standby, 2, false},
		}})
	}
	{
		s1, s2 := newSender("k1"), newSender("k2")
		s2.seq, s2.ctr = vSeq0+100, 1000
		s1.seq, s1.ctr = vSeq0+200, 1001 // one controller boot: one counter, whatever the key
		cfg := keyed
		cfg.Keys = subkeysHex(vGroup, "k1", "k2")
		add(caseSpec{"key rotation", "every key present is accepted; an ack is signed with the key of the message it answers", cfg, []stepSpec{
			{"under the new key k2", 0, later(func() []byte { return s2.send(msg(standby, 1, 0), vT0) }), "accepted", Standby, 1, false},
			{"under the previous key k1, still mounted: accepted, acked under k1", 1, later(func() []byte { return s1.send(msg(standby, 2, 0), vT0+1) }), "accepted", Standby, 2, false},
		}})
	}
	{
		s := newSender("k1")
		add(caseSpec{"signed message, unkeyed listener", "a listener without keys ignores the MAC and the authentication fields, and acks unsigned", unkeyed, []stepSpec{
			{"signed standby", 0, later(func() []byte { return s.send(msg(standby, 1, 0), vT0) }), "accepted", Standby, 1, false},
		}})
	}
	{
		s := newSender("")
		add(caseSpec{"promote, unkeyed", "the grant without keys: nothing is signed", unkeyed, grant(s, 1, 0)})
	}

	// The regression of issue 10: one bogus first datagram must not fence
	// a fresh listener for good.
	hugeEpoch := []byte(`{"v":2,"type":"role","group":"shop/db","pod":"db-0","uid":"` + vUID + `","role":"standby","epoch":18446744073709551615,"seq":1}`)
	for _, c := range []struct {
		name string
		cfg  listenerConfig
		kid  string
	}{{"MaxUint64 epoch first, keyed", keyed, "k1"}, {"MaxUint64 epoch first, unkeyed", unkeyed, ""}} {
		s := newSender(c.kid)
		add(caseSpec{c.name, "an unauthenticated first datagram at epoch 2^64-1 is malformed (above max_epoch): dropped, the listener stays fresh", c.cfg, []stepSpec{
			{"epoch 18446744073709551615, no MAC", 0, later(func() []byte { return hugeEpoch }), "malformed", Unknown, 0, false},
			{"the controller's standby at epoch 3: accepted", 1, later(func() []byte { return s.send(msg(standby, 3, 0), vT0+1) }), "accepted", Standby, 3, false},
		}})
	}
	{
		s := newSender("k1")
		u := newSender("")
		add(caseSpec{"bogus group first, keyed", "an unsigned first datagram for another group at max_epoch cannot bind a keyed listener", keyed, []stepSpec{
			{"standby for evil/x at 2147483647, no MAC", 0, later(func() []byte {
				return u.send(func() wire.Message {
					m := msg(standby, wire.MaxEpoch, 0)
					m.Group = "evil/x"
					return m
				}(), vT0)
			}), "unauthenticated", Unknown, 0, false},
			{"the controller's standby at epoch 3: accepted", 1, later(func() []byte { return s.send(msg(standby, 3, 0), vT0+1) }), "accepted", Standby, 3, false},
		}})
	}
	return specs
}

func b64url(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

// vectorListener is the real Listener, not serving: the test hands it each
// datagram (handle) and moves its clock.
type vectorListener struct {
	t       *testing.T
	l       *Listener
	peer    *net.UDPConn
	from    netip.AddrPort
	clock   time.Time
	nonces  []uint64
	used    int
	changed []State
}

func newVectorListener(t *testing.T, cfg listenerConfig) *vectorListener {
	t.Helper()
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	peer, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close(); _ = peer.Close() })
	v := &vectorListener{t: t, peer: peer, from: peer.LocalAddr().(*net.UDPAddr).AddrPort(), nonces: cfg.Nonces}
	var keys *rolekey.Source
	if len(cfg.Keys) > 0 {
		raw := map[string][]byte{}
		for kid, h := range cfg.Keys {
			if raw[kid], err = hex.DecodeString(h); err != nil {
				t.Fatal(err)
			}
		}
		dir := t.TempDir()
		if err := keydir.Write(dir, raw, ""); err != nil {
			t.Fatal(err)
		}
		if keys, err = rolekey.Open(dir, 0, 0); err != nil {
			t.Fatal(err)
		}
	}
	c := Config{
		PodName: cfg.PodName, PodUID: cfg.PodUID, Group: cfg.Group,
		Freshness: time.Duration(cfg.FreshnessMS) * time.Millisecond,
		OnChange:  func(s State) { v.changed = append(v.changed, s) },
		now:       func() time.Time { return v.clock },
	}
	v.l = newListener(conn, c, keys)
	v.l.boot = cfg.Boot
	v.l.nonces.random = func() uint64 {
		if v.used >= len(v.nonces) {
			t.Fatalf("the listener issued more than the %d nonces of the case", len(v.nonces))
		}
		v.used++
		return v.nonces[v.used-1]
	}
	return v
}

// step runs one datagram (nil: the clock moves only, and the listener
// looks at its lease as its serving loop does) at at, and returns what it
// did.
func (v *vectorListener) step(at uint64, dgram []byte) listenerStep {
	v.t.Helper()
	v.clock = time.UnixMilli(int64(at))
	v.changed = nil
	before := v.l.Stats()
	out := listenerStep{AtMS: at, Datagram: dgram}
	if dgram == nil {
		v.l.expire()
		out.Outcome = "tick"
	} else {
		v.l.handle(dgram, v.from)
		out.Outcome = outcome(before, v.l.Stats())
		if utf8.Valid(dgram) {
			out.Text = string(dgram)
		}
	}
	// A marker from the listener's socket after the step: loopback keeps
	// one socket's datagrams in order, so what comes before it is the
	// step's ack, and the marker alone means none.
	if _, err := v.l.conn.WriteToUDPAddrPort([]byte("marker"), v.from); err != nil {
		v.t.Fatal(err)
	}
	buf := make([]byte, wire.MaxSize+1)
	for {
		_ = v.peer.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, err := v.peer.Read(buf)
		if err != nil {
			v.t.Fatal(err)
		}
		if string(buf[:n]) == "marker" {
			break
		}
		if out.Ack != nil {
			v.t.Fatalf("two acks for one datagram")
		}
		out.Ack = ackOf(v.t, bytes.Clone(buf[:n]))
	}
	if out.Outcome == "malformed" {
		out.Reason = dropReason(dgram)
	}
	out.Decision = decisionOf(out.Outcome)
	out.AckStatus = "none"
	if out.Ack != nil {
		var a wire.Message
		if err := json.Unmarshal(out.Ack.Message, &a); err != nil {
			v.t.Fatal(err)
		}
		out.AckStatus = a.Status
	}
	out.Notify = []vecState{}
	for _, s := range v.changed {
		out.Notify = append(out.Notify, stateOf(s))
	}
	// What the listener holds now; expire has fenced a lapsed lease (in
	// handle too), so State and the stored state agree.
	out.State = stateOf(v.l.State())
	return out
}

func ackOf(t *testing.T, b []byte) *vecAck {
	body, sum := wire.Open(b)
	if _, err := wire.Decode(body); err != nil {
		t.Fatalf("the listener sent an undecodable ack %q: %v", b, err)
	}
	return &vecAck{Message: json.RawMessage(body), Signed: sum != nil, Datagram: b, Text: string(b)}
}

func outcome(b, a Stats) string {
	for _, c := range []struct {
		name          string
		before, after uint64
	}{
		{"accepted", b.Accepted, a.Accepted}, {"renewed", b.Renewed, a.Renewed}, {"retry", b.Retry, a.Retry},
		{"duplicate", b.Duplicate, a.Duplicate}, {"stale", b.Stale, a.Stale}, {"wrong-pod", b.WrongPod, a.WrongPod},
		{"malformed", b.Malformed, a.Malformed}, {"unauthenticated", b.Unauthenticated, a.Unauthenticated},
		{"unknown-key", b.UnknownKey, a.UnknownKey}, {"bad-mac", b.BadMAC, a.BadMAC},
		{"expired", b.Expired, a.Expired}, {"replayed", b.Replayed, a.Replayed},
	} {
		if c.after != c.before {
			return c.name
		}
	}
	return "none"
}

// dropReason is which check a malformed datagram failed, as the
// controller's metrics name it.
func dropReason(b []byte) string {
	body, _ := wire.Open(b)
	_, err := wire.Decode(body)
	switch {
	case errors.Is(err, wire.ErrOversized):
		return "oversized"
	case errors.Is(err, wire.ErrVersion):
		return "version"
	case err == nil:
		return "not-role" // an ack, say
	}
	return "malformed"
}

func decisionOf(outcome string) string {
	switch outcome {
	case "accepted", "renewed":
		return "applied"
	case "duplicate":
		return "unchanged"
	case "retry", "stale", "wrong-pod":
		return "refused"
	case "tick":
		return "none"
	}
	return "dropped"
}

func stateOf(s State) vecState {
	v := vecState{Role: string(s.Role), Epoch: s.Epoch, Group: s.Group, Fenced: s.Fenced}
	if v.Role == "" {
		v.Role = "unknown"
	}
	if !s.Expiry.IsZero() {
		v.ExpiryMS = uint64(s.Expiry.UnixMilli())
	}
	return v
}

// generate builds the vectors, checking every step's outcome and state
// against its case.
func generate(t *testing.T) *vectors {
	t.Helper()
	v := &vectors{
		About: []string{
			"Test vectors of the hapod role protocol (docs/protocol.md, section \"Test vectors and other implementations\").",
			"Generated by `go test ./pkg/role -run TestVectors -update` from pkg/role/vectors_test.go: do not edit.",
			"Byte strings (datagram) are standard base64; text is the same bytes when they are UTF-8. All times are Unix milliseconds: at_ms is the listener's clock, both its wall clock (for ts and freshness) and its monotonic clock (for the lease).",
			"keys: the master keys and the subkeys HKDF-SHA256(master, no salt, info hkdf_info_prefix + group, 32 bytes) derived from them.",
			"listener_cases: a fresh listener with config (keys: kid -> subkey hex, the listener's key directory; none: unauthenticated mode; boot: the listener's own boot, in its signed acks; nonces: the nonces it issues, in order, one per ack except wrong-pod), then steps. A step hands the listener one datagram at at_ms (or none: the clock moves to at_ms and the listener checks its lease) and expects: outcome (accepted, renewed, retry, duplicate, stale, wrong-pod; dropped without reply: malformed (reason oversized, version, malformed, not-role), unauthenticated, unknown-key, bad-mac, expired, replayed; tick), decision (applied, unchanged, refused, dropped, none), the ack (ack_status, or none), the states notified to the application in order, and the state held after it.",
			"An implementation's ack must decode to exactly ack.message (the same members and values; ts is at_ms, ctr counts the listener's signed acks from 1) and, if ack.signed, carry a MAC under the subkey named by its kid; ack.datagram is the Go listener's bytes, in the canonical member order, which an implementation need not match byte for byte.",
			"controller_cases: a controller with config (keys: kid -> master key hex; none: unauthenticated) waiting for the acks of pending sends (to: the address the role message went to); each step hands it one datagram from the address from at at_ms and expects accept (the ack ends the pending send it matches) or not, with outcome matched, unmatched (verified, but no pending send has its uid, epoch and seq: a renewal's ack, or a late one), refused (reason unauthenticated, unknown-key, bad-mac, expired, replayed, wrong-source) or dropped (reason oversized, version, malformed, not-ack).",
		},
		Version:      wire.Version,
		MaxSize:      wire.MaxSize,
		MaxEpoch:     wire.MaxEpoch,
		MaxTTLMillis: wire.MaxTTLMillis,
		FreshnessMS:  vFreshMS,
		NonceSlots:   nonceSlots,
		ReplayWindow: 64,
		HKDFInfo:     "hapod role messages, group ",
	}
	for _, kid := range []string{"k1", "k2"} {
		k := vecKey{Kid: kid, MasterHex: hex.EncodeToString(vMasters[kid])}
		for _, g := range vGroups {
			k.Subkeys = append(k.Subkeys, vecSubkey{Group: g, SubkeyHex: hex.EncodeToString(subkey(kid, g))})
		}
		v.Keys = append(v.Keys, k)
	}
	for i, spec := range listenerSpecs() {
		cfg := spec.cfg
		cfg.FreshnessMS, cfg.Boot = vFreshMS, vLisBoot
		cfg.Nonces = make([]uint64, 32)
		for j := range cfg.Nonces {
			// Above 2^63 as well, and distinct across cases.
			cfg.Nonces[j] = 0x8000_0000_0000_0000 + uint64(i+1)<<32 + uint64(j+1)
		}
		vl := newVectorListener(t, cfg)
		c := listenerCase{Name: spec.name, Comment: spec.comment}
		h := &history{}
		for _, st := range spec.steps {
			var dgram []byte
			if st.dgram != nil {
				dgram = st.dgram(h)
			}
			out := vl.step(vT0+st.at, dgram)
			out.Comment = st.comment
			want := vecState{Role: string(st.role), Epoch: st.epoch, Fenced: st.fenced}
			if want.Role == "" {
				want.Role = "unknown"
			}
			if out.Outcome != st.outcome || out.State.Role != want.Role || out.State.Epoch != want.Epoch || out.State.Fenced != want.Fenced {
				t.Fatalf("%s: step %q: outcome %s, state %+v; the case says %s, %+v", spec.name, st.comment, out.Outcome, out.State, st.outcome, want)
			}
			if out.Ack != nil {
				var a wire.Message
				_ = json.Unmarshal(out.Ack.Message, &a)
				if a.Nonce != 0 {
					h.nonces = append(h.nonces, a.Nonce)
				}
			}
			c.Steps = append(c.Steps, out)
		}
		cfg.Nonces = cfg.Nonces[:vl.used]
		c.Config = cfg
		v.Listener = append(v.Listener, c)
	}
	v.Controller = controllerCases(t)
	return v
}

// controllerCases are the acks a controller waiting for a send checks.
// The valid ack is the real listener's answer to the controller's message.
func controllerCases(t *testing.T) []controllerCase {
	t.Helper()
	// The pending send: standby at epoch 4, the controller's seq.
	s := newSender("k1")
	role := msg(wire.RoleStandby, 4, 0)
	cfgL := listenerConfig{PodName: vPod, PodUID: vUID, Keys: subkeysHex(vGroup, "k1", "k2"), FreshnessMS: vFreshMS, Boot: vLisBoot, Nonces: []uint64{0x9000_0000_0000_0001, 0x9000_0000_0000_0002}}
	vl := newVectorListener(t, cfgL)
	at := vT0 + 5
	out := vl.step(at, s.send(role, vT0))
	if out.Ack == nil || out.AckStatus != wire.StatusOK {
		t.Fatalf("no ok ack: %+v", out)
	}
	valid := out.Ack.Datagram
	var ack wire.Message
	if err := json.Unmarshal(out.Ack.Message, &ack); err != nil {
		t.Fatal(err)
	}
	pending := pendingSend{To: vPodAddr, UID: vUID, Epoch: 4, Seq: s.seq}

	// reseal is the ack edited and signed with key under kid.
	reseal := func(edit func(*wire.Message), key []byte) []byte {
		a := ack
		edit(&a)
		b, err := wire.Encode(a)
		if err != nil {
			t.Fatal(err)
		}
		if a.Kid == "" {
			return b
		}
		if key == nil {
			key = subkey(a.Kid, a.Group)
		}
		d, err := wire.Seal(b, key)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	nextCtr := func(m *wire.Message) { m.Ctr += 10 }
	keyed := controllerConfig{Keys: mastersHex("k1"), FreshnessMS: vFreshMS}
	step := func(comment, from string, d []byte, accept bool, outcome, reason string) controllerStep {
		st := controllerStep{Comment: comment, AtMS: at, From: from, Datagram: d, Accept: accept, Outcome: outcome, Reason: reason}
		if utf8.Valid(d) {
			st.Text = string(d)
		}
		return st
	}
	mappedPod := "[::ffff:10.1.2.3]:7477"
	unsigned := reseal(func(m *wire.Message) { m.Kid, m.Boot, m.Ctr, m.TS = "", 0, 0, 0 }, nil)
	roleAsAck, _ := wire.Open(s.send(role, vT0))
	return []controllerCase{
		{Name: "valid ack", Comment: "the listener's ack of the pending send, from the pod's address", Config: keyed, Pending: []pendingSend{pending}, Steps: []controllerStep{
			step("the ack: matched, the send ends", vPodAddr, valid, true, "matched", ""),
			step("the same datagram again: replayed", vPodAddr, valid, false, "refused", "replayed"),
		}},
		{Name: "ipv4-mapped source", Comment: "a dual-stack socket reports an IPv4 peer as IPv4-mapped IPv6: the same address", Config: keyed, Pending: []pendingSend{pending}, Steps: []controllerStep{
			step("from ::ffff:10.1.2.3", mappedPod, valid, true, "matched", ""),
		}},
		{Name: "wrong source", Comment: "an ack must come from the address the message went to (another pod of the group holds the same subkey)", Config: keyed, Pending: []pendingSend{pending}, Steps: []controllerStep{
			step("from another pod's address", vElseAddr, valid, false, "refused", "wrong-source"),
			step("then the pod's own ack (a fresh ctr: the refused one was verified, so its ctr is spent), from its address: matched", vPodAddr, reseal(nextCtr, nil), true, "matched", ""),
		}},
		{Name: "not the pending send", Comment: "acks are matched on uid, epoch and seq: one that matches no pending send ends none", Config: keyed, Pending: []pendingSend{pending}, Steps: []controllerStep{
			step("another seq", vPodAddr, reseal(func(m *wire.Message) { m.Seq++; m.Ctr++ }, nil), false, "unmatched", ""),
			step("another epoch", vPodAddr, reseal(func(m *wire.Message) { m.Epoch = 3; m.Ctr += 2 }, nil), false, "unmatched", ""),
			step("another uid", vPodAddr, reseal(func(m *wire.Message) { m.UID = "7d1e0c55-0000-4000-8000-000000000001"; m.Ctr += 3 }, nil), false, "unmatched", ""),
		}},
		{Name: "ack authentication refused", Comment: "a controller with keys refuses every ack it cannot verify; the send waits on", Config: keyed, Pending: []pendingSend{pending}, Steps: []controllerStep{
			step("unsigned", vPodAddr, unsigned, false, "refused", "unauthenticated"),
			step("forged MAC", vPodAddr, reseal(func(m *wire.Message) { m.Ctr++ }, seqBytes(0x90, 32)), false, "refused", "bad-mac"),
			step("made with another group's subkey", vPodAddr, reseal(func(m *wire.Message) { m.Ctr += 2 }, subkey("k1", vOther)), false, "refused", "bad-mac"),
			step("made with the master key", vPodAddr, reseal(func(m *wire.Message) { m.Ctr += 3 }, vMasters["k1"]), false, "refused", "bad-mac"),
			step("status changed after signing (ok to stale)", vPodAddr, bytes.Replace(valid, []byte(`"status":"ok"`), []byte(`"status":"stale"`), 1), false, "refused", "bad-mac"),
			step("unknown kid k2 (the controller has k1 only)", vPodAddr, reseal(func(m *wire.Message) { m.Kid = "k2"; m.Ctr += 4 }, nil), false, "refused", "unknown-key"),
			step("ts 30001 ms behind", vPodAddr, reseal(func(m *wire.Message) { m.TS = at - 30001; m.Ctr += 5 }, nil), false, "refused", "expired"),
			step("a role message, not an ack", vPodAddr, roleAsAck, false, "dropped", "not-ack"),
			step("oversized", vPodAddr, append(bytes.Clone(unsigned[:len(unsigned)-1]), []byte(`,"pad":"`+strings.Repeat("x", wire.MaxSize)+`"}`)...), false, "dropped", "oversized"),
			step("the valid ack, at last: matched", vPodAddr, valid, true, "matched", ""),
		}},
		{Name: "rotation", Comment: "a controller holding k1 and k2 (signing with k2) accepts an ack under k1, the key of the message it answers", Config: controllerConfig{Keys: mastersHex("k1", "k2"), FreshnessMS: vFreshMS}, Pending: []pendingSend{pending}, Steps: []controllerStep{
			step("ack under k1", vPodAddr, valid, true, "matched", ""),
		}},
		{Name: "unkeyed", Comment: "a controller without keys checks no MAC but still the source address", Config: controllerConfig{FreshnessMS: vFreshMS}, Pending: []pendingSend{pending}, Steps: []controllerStep{
			step("an unsigned ack from another address", vElseAddr, unsigned, false, "refused", "wrong-source"),
			step("the unsigned ack from the pod", vPodAddr, unsigned, true, "matched", ""),
		}},
	}
}

func marshalVectors(t *testing.T, v *vectors) []byte {
	t.Helper()
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return append(b, '\n')
}

func TestVectors(t *testing.T) {
	generated := marshalVectors(t, generate(t))
	if *update {
		if err := os.WriteFile(vectorsFile, generated, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	onDisk, err := os.ReadFile(vectorsFile)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(onDisk, generated) {
		t.Fatalf("%s is stale: run go test ./pkg/role -run TestVectors -update", vectorsFile)
	}
	var v vectors
	if err := json.Unmarshal(onDisk, &v); err != nil {
		t.Fatal(err)
	}
	for _, k := range v.Keys {
		master, _ := hex.DecodeString(k.MasterHex)
		for _, s := range k.Subkeys {
			if got := hex.EncodeToString(rolekey.GroupKey(master, s.Group)); got != s.SubkeyHex {
				t.Errorf("subkey %s of %s: %s, file %s", k.Kid, s.Group, got, s.SubkeyHex)
			}
		}
	}
	// Every listener case of the file, against a fresh listener.
	for _, c := range v.Listener {
		t.Run(c.Name, func(t *testing.T) {
			vl := newVectorListener(t, c.Config)
			for i, want := range c.Steps {
				got := vl.step(want.AtMS, want.Datagram)
				got.Comment, got.Text = want.Comment, want.Text
				g, _ := json.Marshal(got)
				w, _ := json.Marshal(want)
				if !bytes.Equal(g, w) {
					t.Fatalf("step %d (%s):\n got %s\nwant %s", i, want.Comment, g, w)
				}
			}
			if vl.used != len(c.Config.Nonces) {
				t.Fatalf("used %d of the case's %d nonces", vl.used, len(c.Config.Nonces))
			}
		})
	}
}
