package role_test

import (
	"context"
	"fmt"
	"log"
	"net"
	"time"

	"github.com/hapod/hapod/pkg/role"
)

// An application starts a listener at startup and reacts to each change.
// Here the example plays the controller itself, sending one role message to
// its own listener on 127.0.0.1 and reading the ack.
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

	// What the controller sends when it makes this pod active at epoch 1.
	c, err := net.Dial("udp", l.Addr().String())
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	fmt.Fprint(c, `{"v":1,"type":"role","group":"shop/db","pod":"db-0","uid":"0b7c3f6e-uid","role":"active","epoch":1,"seq":1}`)
	ack := make([]byte, 1024)
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := c.Read(ack)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("ack: %s\n", ack[:n])

	s := <-l.Changes()
	fmt.Println("role:", s.Role, "epoch:", s.Epoch, "group:", s.Group)
	// Output:
	// ack: {"v":1,"type":"ack","group":"shop/db","pod":"db-0","uid":"0b7c3f6e-uid","role":"active","epoch":1,"seq":1,"status":"ok"}
	// role: active epoch: 1 group: shop/db
}

// The shape of a real application: serve only while active. Unknown (no
// message yet) is treated as standby.
func ExampleListener_Changes() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	l, err := role.Listen(ctx, role.Config{Addr: "127.0.0.1:0"})
	if err != nil {
		log.Fatal(err)
	}
	go func() {
		// Stand-in for the controller's message, so that the example ends.
		c, err := net.Dial("udp", l.Addr().String())
		if err != nil {
			log.Fatal(err)
		}
		defer c.Close()
		fmt.Fprint(c, `{"v":1,"type":"role","group":"shop/db","pod":"db-1","uid":"u1","role":"standby","epoch":4,"seq":9}`)
	}()

	for s := range l.Changes() { // ends when ctx is done
		if s.Role == role.Active {
			fmt.Println("start serving at epoch", s.Epoch)
		} else {
			fmt.Println("stop serving at epoch", s.Epoch)
			cancel() // only so that the example ends
		}
	}
	// Output:
	// stop serving at epoch 4
}
