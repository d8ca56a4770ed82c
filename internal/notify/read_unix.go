//go:build unix

package notify

import (
	"errors"
	"net"
	"net/netip"
	"syscall"
	"time"

	"github.com/hapod/hapod/internal/wire"
)

// read is the single reading goroutine. It reads through the raw socket so
// that it sees the moment the receive queue runs empty (EAGAIN), which
// net.UDPConn hides; readerQueue explains what that is for.
func (n *Notifier) read() {
	defer close(n.readerDone)
	rc, err := n.conn.SyscallConn()
	if err != nil {
		n.readPortable()
		return
	}
	// One byte over MaxSize so that an oversized ack is seen as such (read
	// truncates a longer datagram to the buffer).
	buf := make([]byte, wire.MaxSize+1)
	for {
		var sz int
		var rerr error
		var sa syscall.Sockaddr
		err := rc.Read(func(fd uintptr) bool {
			sz, sa, rerr = syscall.Recvfrom(int(fd), buf, 0)
			if errors.Is(rerr, syscall.EAGAIN) {
				n.queue.markEmpty()
				return false // wait until readable
			}
			return true
		})
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(time.Millisecond)
			continue
		}
		if rerr != nil {
			// An unconnected UDP socket reports no ICMP errors on Linux,
			// so this is unexpected; pause so it cannot spin a core.
			time.Sleep(time.Millisecond)
			continue
		}
		n.queue.markRead()
		n.handle(buf[:sz], sockaddrPort(sa), time.Now())
	}
}

// sockaddrPort is a datagram's source address; invalid for a kind of
// socket address role messages never come from.
func sockaddrPort(sa syscall.Sockaddr) netip.AddrPort {
	switch a := sa.(type) {
	case *syscall.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port))
	case *syscall.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(a.Addr).Unmap(), uint16(a.Port))
	}
	return netip.AddrPort{}
}
