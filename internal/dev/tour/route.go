package tour

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/hapod/hapod/internal/dev/observe"
)

// endpoint is one address of the Service's EndpointSlices.
type endpoint = observe.Endpoint

// errNoEndpoint: the Service has no ready endpoint, so kube-proxy would reject the
// connection.
var errNoEndpoint = errors.New("no ready endpoint")

// route is the tour's kube-proxy: it picks where the n-th request to the Service goes.
// Like kube-proxy it takes only ready endpoints (in turn when there are several). Then
// it does what a pod network would do: the endpoint's IP (API data only, never a
// destination) names the pod that has it, and loopbackOf gives the loopback address of
// that pod's process. Only loopback destinations are returned.
func route(eps []endpoint, loopbackOf map[string]netip.Addr, port, n int) (netip.AddrPort, error) {
	var ready []string
	for _, e := range eps {
		if e.Ready {
			ready = append(ready, e.IP)
		}
	}
	if len(ready) == 0 {
		return netip.AddrPort{}, errNoEndpoint
	}
	ip := ready[n%len(ready)]
	a, ok := loopbackOf[ip]
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("%w: endpoint %s is no pod of the tour with a process", errNoEndpoint, ip)
	}
	if !a.IsLoopback() {
		return netip.AddrPort{}, fmt.Errorf("endpoint %s maps to %s, which is not loopback: refusing to send", ip, a)
	}
	if port <= 0 || port > 65535 {
		return netip.AddrPort{}, fmt.Errorf("bad port %d", port)
	}
	return netip.AddrPortFrom(a, uint16(port)), nil
}
