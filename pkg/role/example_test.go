package role_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log"
	"net"
	"time"

	"github.com/hapod/hapod/pkg/role"
)

// controller plays the hapod controller for the examples: it sends role
// messages to a listener and reads the acks.
type controller struct {
	c   net.Conn
	seq int
}

func dial(l *role.Listener) *controller {
	c, err := net.Dial("udp", l.Addr().String())
	if err != nil {
		log.Fatal(err)
	}
	return &controller{c: c}
}

type ack struct {
	Status string `json:"status"`
	Nonce  uint64 `json:"nonce"`
	Lease  bool   `json:"lease"`
}

// send sends one role message (echo 0: none) and returns its ack.
func (c *controller) send(role string, epoch, ttlMs, echo uint64) ack {
	c.seq++
	msg := fmt.Sprintf(`{"v":2,"type":"role","group":"shop/db","pod":"db-0","uid":"0b7c3f6e-uid","role":%q,"epoch":%d,"seq":%d`, role, epoch, c.seq)
	if ttlMs > 0 {
		msg += fmt.Sprintf(`,"ttl_ms":%d`, ttlMs)
	}
	if echo != 0 {
		msg += fmt.Sprintf(`,"echo":%d`, echo)
	}
	fmt.Fprint(c.c, msg+"}")
	buf := make([]byte, 1024)
	_ = c.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := c.c.Read(buf)
	if err != nil {
		log.Fatal(err)
	}
	var a ack
	if err := json.Unmarshal(buf[:n], &a); err != nil {
		log.Fatal(err)
	}
	return a
}

// An application starts a listener at startup and reacts to each change.
// Here the example plays the controller itself: it makes the listener
// active with a 100ms lease and then stops renewing it, as a controller
// that has lost sight of the pod would. The listener fences itself: it
// delivers Standby with Fenced set the moment the lease runs out.
func Example() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	l, err := role.Listen(ctx, role.Config{
		Addr:   "127.0.0.1:0",  // in a pod: leave empty for ":7477"
		PodUID: "0b7c3f6e-uid", // in a pod: the downward-API metadata.uid
	})
	if err != nil {
		log.Fatal(err)
	}
	c := dial(l)
	defer c.c.Close()

	// A grant takes two round trips: the listener first hands out a nonce,
	// and only a message echoing it grants the lease, measured from when
	// the listener sent that nonce.
	first := c.send("active", 1, 100, 0)
	fmt.Println("first ack:", first.Status, "enforces the lease:", first.Lease)
	second := c.send("active", 1, 100, first.Nonce)
	fmt.Println("second ack:", second.Status)

	s := <-l.Changes()
	fmt.Println("role:", s.Role, "epoch:", s.Epoch, "active now:", s.ActiveAt(time.Now()))

	// No renewal follows.
	s = <-l.Changes()
	fmt.Println("role:", s.Role, "epoch:", s.Epoch, "fenced:", s.Fenced, "at the lease's end:", s.Changed.Equal(s.Expiry))
	fmt.Println("active now:", l.Active())
	// Output:
	// first ack: retry enforces the lease: true
	// second ack: ok
	// role: active epoch: 1 active now: true
	// role: standby epoch: 1 fenced: true at the lease's end: true
	// active now: false
}

// The shape of a real application: serve only while active, and check
// the lease right before each action that only the active pod may take.
// Unknown (no message yet) and Fenced are standby.
func ExampleListener_Changes() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	l, err := role.Listen(ctx, role.Config{Addr: "127.0.0.1:0"})
	if err != nil {
		log.Fatal(err)
	}
	go func() {
		// Stand-in for the controller's message, so that the example ends.
		c := dial(l)
		defer c.c.Close()
		c.send("standby", 4, 0, 0)
	}()

	for s := range l.Changes() { // ends when ctx is done
		if s.Role == role.Active {
			fmt.Println("start serving at epoch", s.Epoch)
			// ... and before each write: if !l.Active() { refuse it }
		} else {
			fmt.Println("stop serving at epoch", s.Epoch, "fenced:", s.Fenced)
			cancel() // only so that the example ends
		}
	}
	// Output:
	// stop serving at epoch 4 fenced: false
}
