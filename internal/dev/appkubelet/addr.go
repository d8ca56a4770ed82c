package appkubelet

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"sync"
)

// AddrPool hands out the loopback addresses that the pods' processes bind, one per pod.
// Addresses are handed out in turn, not lowest-first, so that a new pod does not get
// the address a pod just killed had: logs and timelines stay unambiguous.
type AddrPool struct {
	mu     sync.Mutex
	base   uint32 // the prefix's first address
	size   uint32 // addresses in the prefix
	next   uint32 // offset of the next candidate
	inUse  map[netip.Addr]bool
	isFree func(netip.Addr) bool // nothing else holds the ports the process needs
}

// NewAddrPool returns a pool of the addresses of prefix, which must lie inside
// 127.0.0.0/8 (the processes' addresses are the only ones a dev run sends traffic to).
// The prefix's first and last addresses are not used.
func NewAddrPool(prefix netip.Prefix, isFree func(netip.Addr) bool) (*AddrPool, error) {
	if !prefix.IsValid() || !prefix.Addr().Is4() || !prefix.Addr().IsLoopback() || prefix.Bits() < 8 || prefix.Bits() > 30 {
		return nil, fmt.Errorf("loopback prefix %s: want an IPv4 prefix inside 127.0.0.0/8, from /8 to /30", prefix)
	}
	prefix = prefix.Masked()
	b := prefix.Addr().As4()
	return &AddrPool{
		base:   uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3]),
		size:   1 << (32 - prefix.Bits()),
		next:   1,
		inUse:  map[netip.Addr]bool{},
		isFree: isFree,
	}, nil
}

// Get returns an address that is not in use and whose ports are free.
func (p *AddrPool) Get() (netip.Addr, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	busy := 0
	for range p.size {
		off := p.next
		p.next++
		if p.next >= p.size-1 {
			p.next = 1
		}
		if off == 0 || off >= p.size-1 {
			continue
		}
		v := p.base + off
		a := netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
		if p.inUse[a] {
			continue
		}
		if p.isFree != nil && !p.isFree(a) {
			busy++
			continue
		}
		p.inUse[a] = true
		return a, nil
	}
	return netip.Addr{}, fmt.Errorf("no free loopback address: %d in use by this pool, %d held by other processes", len(p.inUse), busy)
}

// Put gives an address back.
func (p *AddrPool) Put(a netip.Addr) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.inUse, a)
}

// PortsFree reports whether a process could bind TCP httpPort and UDP rolePort on a:
// a leftover process of an earlier run (or anything else) may hold them.
func PortsFree(httpPort, rolePort int) func(netip.Addr) bool {
	return func(a netip.Addr) bool {
		l, err := net.Listen("tcp", net.JoinHostPort(a.String(), strconv.Itoa(httpPort)))
		if err != nil {
			return false
		}
		defer func() { _ = l.Close() }()
		c, err := net.ListenPacket("udp", net.JoinHostPort(a.String(), strconv.Itoa(rolePort)))
		if err != nil {
			return false
		}
		_ = c.Close()
		return true
	}
}
