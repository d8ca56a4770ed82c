package udprelay_test

import (
	"context"
	"fmt"
	"net"
	"time"

	"github.com/hapod/hapod/internal/dev/udprelay"
	"github.com/hapod/hapod/pkg/role"
)

// A chaos run puts one relay in front of each pod's listener and gives the
// controller the relay's address; then it changes the faults as it goes.
func Example() {
	// The pod's application, listening as it would in the pod.
	l, err := role.Listen(context.Background(), role.Config{Addr: "127.0.0.1:0", PodUID: "uid-0"})
	if err != nil {
		panic(err)
	}
	defer l.Close()

	r, err := udprelay.New(udprelay.Config{App: l.Addr().(*net.UDPAddr).AddrPort(), Seed: 42})
	if err != nil {
		panic(err)
	}
	defer r.Close()
	// The pod is created with this annotation (and the controller runs
	// with 127.0.0.0/8 in its -notify-cidrs).
	annotations := map[string]string{role.RoleAddressAnnotation: r.Addr().String()}
	_ = annotations

	// A lossy, jittery network both ways for a while ...
	_ = r.SetFaults(udprelay.Both, udprelay.Faults{Loss: 0.3, Dup: 0.1, Reorder: 0.2, Delay: 2 * time.Millisecond})
	// ... then a partition ...
	r.Cut(true)
	// ... then a healed network, and an attacker replaying old grants.
	r.Reset()
	_, _ = r.Replay(8)

	fmt.Println(r.Stats().ToApp.Dropped)
	// Output: 0
}
