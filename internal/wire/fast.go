package wire

import (
	"strconv"
)

// A fast path for the messages this package itself produces. A controller
// renews every active pod's lease every few tens of milliseconds, so with
// thousands of groups encoding/json's reflection was most of the cost of a
// renewal (measured: about 9 of 23µs per renewal and ack). Encode writes the
// canonical form directly when every string is plain printable ASCII, and
// Decode parses exactly that canonical form; anything else (escapes,
// non-ASCII, other field orders, whitespace, unknown fields) takes the
// encoding/json path, so the results are the same either way
// (FuzzFastPath checks it).

// fastEncode appends the canonical encoding of m, which encoding/json
// would produce too; ok is false if a string needs escaping.
func fastEncode(dst []byte, m Message) ([]byte, bool) {
	for _, s := range [...]string{string(m.Type), m.Group, m.Pod, m.UID, m.Role, m.Status, m.Kid} {
		if !plain(s) {
			return dst, false
		}
	}
	dst = append(dst, `{"v":`...)
	dst = strconv.AppendInt(dst, int64(m.Version), 10)
	dst = appendStr(dst, `,"type":`, string(m.Type))
	dst = appendStr(dst, `,"group":`, m.Group)
	dst = appendStr(dst, `,"pod":`, m.Pod)
	dst = appendStr(dst, `,"uid":`, m.UID)
	dst = appendStr(dst, `,"role":`, m.Role)
	dst = appendUint(dst, `,"epoch":`, m.Epoch)
	dst = appendUint(dst, `,"seq":`, m.Seq)
	if m.TTLMillis != 0 {
		dst = appendUint(dst, `,"ttl_ms":`, m.TTLMillis)
	}
	if m.Echo != 0 {
		dst = appendUint(dst, `,"echo":`, m.Echo)
	}
	if m.Status != "" {
		dst = appendStr(dst, `,"status":`, m.Status)
	}
	if m.Nonce != 0 {
		dst = appendUint(dst, `,"nonce":`, m.Nonce)
	}
	if m.Lease {
		dst = append(dst, `,"lease":true`...)
	}
	if m.Kid != "" {
		dst = appendStr(dst, `,"kid":`, m.Kid)
	}
	for _, f := range [...]struct {
		key string
		v   uint64
	}{{`,"boot":`, m.Boot}, {`,"ctr":`, m.Ctr}, {`,"ts":`, m.TS}} {
		if f.v != 0 {
			dst = appendUint(dst, f.key, f.v)
		}
	}
	return append(dst, '}'), true
}

// plain: printable ASCII that JSON writes as is.
func plain(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' {
			return false
		}
	}
	return true
}

func appendStr(dst []byte, key, s string) []byte {
	dst = append(dst, key...)
	dst = append(dst, '"')
	dst = append(dst, s...)
	return append(dst, '"')
}

func appendUint(dst []byte, key string, v uint64) []byte {
	dst = append(dst, key...)
	return strconv.AppendUint(dst, v, 10)
}

// fastDecode parses the canonical form; ok is false for anything else.
func fastDecode(b []byte) (m Message, ok bool) {
	p := parser{b: b}
	if !p.lit(`{"v":`) {
		return m, false
	}
	v, ok := p.uint()
	if !ok || v > 1<<31 {
		return m, false
	}
	m.Version = int(v)
	var typ string
	ok = p.str(`,"type":`, &typ) && p.str(`,"group":`, &m.Group) && p.str(`,"pod":`, &m.Pod) &&
		p.str(`,"uid":`, &m.UID) && p.str(`,"role":`, &m.Role) &&
		p.num(`,"epoch":`, &m.Epoch, true) && p.num(`,"seq":`, &m.Seq, true) &&
		p.num(`,"ttl_ms":`, &m.TTLMillis, false) && p.num(`,"echo":`, &m.Echo, false)
	if !ok {
		return Message{}, false
	}
	m.Type = Type(typ)
	if p.peek(`,"status":`) && !p.str(`,"status":`, &m.Status) {
		return Message{}, false
	}
	if !p.num(`,"nonce":`, &m.Nonce, false) {
		return Message{}, false
	}
	if p.peek(`,"lease":`) {
		if !p.lit(`,"lease":true`) {
			return Message{}, false
		}
		m.Lease = true
	}
	if p.peek(`,"kid":`) && !p.str(`,"kid":`, &m.Kid) {
		return Message{}, false
	}
	if !p.num(`,"boot":`, &m.Boot, false) || !p.num(`,"ctr":`, &m.Ctr, false) || !p.num(`,"ts":`, &m.TS, false) {
		return Message{}, false
	}
	if !p.lit("}") || p.i != len(b) {
		return Message{}, false
	}
	return m, true
}

type parser struct {
	b []byte
	i int
}

func (p *parser) peek(s string) bool {
	return len(p.b)-p.i >= len(s) && string(p.b[p.i:p.i+len(s)]) == s
}

func (p *parser) lit(s string) bool {
	if !p.peek(s) {
		return false
	}
	p.i += len(s)
	return true
}

// str reads key and a plain string.
func (p *parser) str(key string, dst *string) bool {
	if !p.lit(key) || !p.lit(`"`) {
		return false
	}
	start := p.i
	for ; p.i < len(p.b); p.i++ {
		switch c := p.b[p.i]; {
		case c == '"':
			*dst = string(p.b[start:p.i])
			p.i++
			return true
		case c < 0x20 || c >= 0x7f || c == '\\':
			return false
		}
	}
	return false
}

// num reads key and an unsigned decimal; an optional key may be absent
// (the canonical form omits zero values).
func (p *parser) num(key string, dst *uint64, required bool) bool {
	if !p.peek(key) {
		return !required
	}
	p.i += len(key)
	v, ok := p.uint()
	if !ok || (!required && v == 0) {
		return false // a zero the canonical form would have omitted
	}
	*dst = v
	return true
}

// uint reads a canonical decimal: no sign, no leading zero, no fraction
// or exponent, no overflow.
func (p *parser) uint() (uint64, bool) {
	start := p.i
	for p.i < len(p.b) && p.b[p.i] >= '0' && p.b[p.i] <= '9' {
		p.i++
	}
	digits := p.b[start:p.i]
	if len(digits) == 0 || (len(digits) > 1 && digits[0] == '0') {
		return 0, false
	}
	if p.i < len(p.b) && (p.b[p.i] == '.' || p.b[p.i] == 'e' || p.b[p.i] == 'E') {
		return 0, false
	}
	v, err := strconv.ParseUint(string(digits), 10, 64)
	return v, err == nil
}
