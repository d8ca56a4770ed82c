//go:build !unix

package notify

// read is the single reading goroutine. Without a raw socket read it cannot
// see the queue run empty, so it never reports a backlog and every resend
// goes out on its backoff.
func (n *Notifier) read() {
	defer close(n.readerDone)
	n.readPortable()
}
