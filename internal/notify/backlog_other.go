//go:build !linux

package notify

// Backlog reports whether datagrams are waiting unread; it cannot tell on
// this platform, and says no.
func (n *Notifier) Backlog() bool { return false }
