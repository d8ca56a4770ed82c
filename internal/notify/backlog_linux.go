//go:build linux

package notify

import (
	"syscall"
	"unsafe"
)

// Backlog reports whether datagrams are waiting in the socket's receive
// queue, unread: the reading goroutine is behind. The renewal loop asks
// before it declares a lease lapsed, since an ack queued here is an ack
// that arrived.
func (n *Notifier) Backlog() bool {
	rc, err := n.conn.SyscallConn()
	if err != nil {
		return false
	}
	var pending int32
	_ = rc.Control(func(fd uintptr) {
		// SIOCINQ (TIOCINQ): the size of the next pending datagram.
		if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, fd, syscall.TIOCINQ, uintptr(unsafe.Pointer(&pending))); e != 0 {
			pending = 0
		}
	})
	return pending > 0
}
