package udprelay

import (
	"container/heap"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"
)

// item is one datagram waiting to be written.
type item struct {
	due  time.Time
	seq  uint64 // order of queueing: ties in due go by it, and a write releases the held items queued before it
	dir  Direction
	b    []byte
	conn *net.UDPConn
	to   netip.AddrPort
	held bool // reordered: released by a later write of its direction, or at due
	dup  bool // the second copy of a duplicated datagram
	i    int  // index in the heap
}

// queue orders the datagrams by when they are due. One goroutine
// (Relay.deliver) takes them out, so writes happen in that order.
type queue struct {
	mu    sync.Mutex
	items items
	held  [2][]*item // per direction, in seq order
	seq   uint64
	wake  chan struct{} // capacity 1: the head may have changed
}

func (q *queue) push(its ...*item) {
	q.mu.Lock()
	for _, it := range its {
		q.seq++
		it.seq = q.seq
		heap.Push(&q.items, it)
		if it.held {
			q.held[it.dir.index()] = append(q.held[it.dir.index()], it)
		}
	}
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// due takes out the items due at now, in order, each followed by the held
// items of its direction queued before it; and returns when the next one is
// due (zero: none queued).
func (q *queue) due(now time.Time) (ready []*item, next time.Time) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for len(q.items) > 0 && !q.items[0].due.After(now) {
		it := heap.Pop(&q.items).(*item)
		d := it.dir.index()
		if it.held {
			q.held[d] = slices.DeleteFunc(q.held[d], func(h *item) bool { return h == it })
		}
		ready = append(ready, it)
		// The held items queued before it are overtaken now: they go
		// right after it.
		n := 0
		for _, h := range q.held[d] {
			if h.seq > it.seq {
				break
			}
			heap.Remove(&q.items, h.i)
			ready = append(ready, h)
			n++
		}
		q.held[d] = q.held[d][n:]
	}
	if len(q.items) > 0 {
		next = q.items[0].due
	}
	return ready, next
}

// items is a min-heap by (due, seq).
type items []*item

func (h items) Len() int { return len(h) }
func (h items) Less(i, j int) bool {
	if !h[i].due.Equal(h[j].due) {
		return h[i].due.Before(h[j].due)
	}
	return h[i].seq < h[j].seq
}
func (h items) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].i, h[j].i = i, j
}
func (h *items) Push(x any) {
	it := x.(*item)
	it.i = len(*h)
	*h = append(*h, it)
}
func (h *items) Pop() any {
	old := *h
	it := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	return it
}
