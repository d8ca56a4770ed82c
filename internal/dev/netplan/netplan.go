// Package netplan is the address plan of hapod's dev tooling: which
// addresses the local cluster, the tests, the tour and the bench use, in one
// place, so that runs sharing a machine (or a cluster) do not collide.
//
// Loopback (127.0.0.0/8): every process binds here, and role messages go only
// here (the controller runs with -notify-cidrs 127.0.0.0/8):
//
//	127.0.0.1                 the control plane, the controller's and the apps' ports, every kwok node's InternalIP
//	127.63.0.0/16             kwok's fallback pod IPs (nodes without a pod CIDR)
//	127.64.0.0/16             the pod CIDRs of localcluster's default nodes (kwok-node-0/1: 127.64.0.0/24, 127.64.1.0/24)
//	127.65.0.0-127.127.255.255  clustertest.Node's pod CIDRs: a /24 per test node
//	127.128.0.0/10            the bench: one /16 lane per scenario side (listeners and loopback pod IPs)
//	127.192.0.0/24            the tour (make demo): one address per pod process
//	127.193.0.0/16            the tour's tests: a /24 per test run
//	127.194.0.0/16            the chaos run (make chaos): one address per app process
//	127.195.0.0/16            the chaos run's kwok nodes' pod CIDRs, a /24 each (API data only)
//
// API data only, never a destination: the API server refuses loopback
// addresses in EndpointSlices, so whatever measures a Service's endpoints
// gives its pods IPs from ranges reserved for documentation and benchmarks,
// and the hapod.io/role-address annotation points the controller at the
// loopback process:
//
//	10.96.0.0/16              Service cluster IPs (nothing routes them: there is no kube-proxy)
//	198.51.100.0/24           TEST-NET-2 (RFC 5737): the tour's node, cluster tests of EndpointSlices
//	198.18.0.0/16             RFC 2544: the bench's one-group scenario
//	198.19.0.0/17             RFC 2544: the bench's leader-election baseline
//	198.19.128.0/17           RFC 2544: the bench's no-standby baseline
//
// Inside a real-node network namespace only (netns.Run makes it; nothing in
// it leads out, and it is deleted after the run): private ranges, as a real
// cluster has them, that never appear on the host's own interfaces:
//
//	10.250.0.0/24             real nodes' InternalIPs (10.250.0.<n>), on a bridge without ports
//	10.244.0.0/16             real nodes' pods: 10.244.<n>.0/24 on node n's CNI bridge
//	10.96.0.0/16              Service cluster IPs, which kube-proxy programs there
package netplan

import "net/netip"

// Loopback ranges.
var (
	// Host is where every server of a dev run binds its ports.
	Host = netip.MustParseAddr("127.0.0.1")
	// KwokFallback gives IPs to pods on nodes without a pod CIDR (kwok --cidr).
	KwokFallback = netip.MustParsePrefix("127.63.0.0/16")
	// DefaultNodes holds the pod CIDRs of localcluster's default nodes.
	DefaultNodes = netip.MustParsePrefix("127.64.0.0/16")
	// BenchLanes holds the bench's /16 lanes.
	BenchLanes = netip.MustParsePrefix("127.128.0.0/10")
	// TourDemo is where make demo's pod processes listen.
	TourDemo = netip.MustParsePrefix("127.192.0.0/24")
	// TourTests holds a /24 per tour test run.
	TourTests = netip.MustParsePrefix("127.193.0.0/16")
	// ChaosApps is where the chaos run's app processes listen.
	ChaosApps = netip.MustParsePrefix("127.194.0.0/16")
	// ChaosNodes holds the pod CIDRs of the chaos run's nodes.
	ChaosNodes = netip.MustParsePrefix("127.195.0.0/16")
)

// TestNodeOctets are the second octets of clustertest.Node's pod CIDRs
// (127.<octet>.<n>.0/24), from First to Last.
var TestNodeOctets = struct{ First, Last byte }{65, 127}

// API-only ranges.
var (
	// Services holds Service cluster IPs.
	Services = netip.MustParsePrefix("10.96.0.0/16")
	// TestNet2 is RFC 5737's 198.51.100.0/24.
	TestNet2 = netip.MustParsePrefix("198.51.100.0/24")
	// BenchOneGroup, BenchElection and BenchNoStandby are RFC 2544
	// (198.18.0.0/15) ranges of the bench's scenarios.
	BenchOneGroup  = netip.MustParsePrefix("198.18.0.0/16")
	BenchElection  = netip.MustParsePrefix("198.19.0.0/17")
	BenchNoStandby = netip.MustParsePrefix("198.19.128.0/17")
)

// Real-node ranges (inside a real-node network namespace only).
var (
	// RealNodeIPs holds the real nodes' InternalIPs.
	RealNodeIPs = netip.MustParsePrefix("10.250.0.0/24")
	// RealNodePodsAll holds every real node's pod CIDR.
	RealNodePodsAll = netip.MustParsePrefix("10.244.0.0/16")
)

// RealNodeIP is real node n's InternalIP (n from 1 to 254).
func RealNodeIP(n int) netip.Addr {
	a := RealNodeIPs.Addr().As4()
	a[3] = byte(n)
	return netip.AddrFrom4(a)
}

// RealNodePods is real node n's pod CIDR.
func RealNodePods(n int) netip.Prefix { return Subnet24(RealNodePodsAll, n) }

// Lane returns the /16 lane of BenchLanes with index i (0 to 63).
func Lane(i int) netip.Prefix {
	b := BenchLanes.Addr().As4()
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{127, b[1] + byte(i), 0, 0}), 16)
}

// Lanes is the number of lanes in BenchLanes.
const Lanes = 64

// Subnet24 returns the i-th /24 of p (a /16 or wider): 127.193.0.0/16, 5 is
// 127.193.5.0/24.
func Subnet24(p netip.Prefix, i int) netip.Prefix {
	a := p.Masked().Addr().As4()
	a[2] += byte(i)
	return netip.PrefixFrom(netip.AddrFrom4(a), 24)
}
