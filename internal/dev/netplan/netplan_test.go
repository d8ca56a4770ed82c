package netplan

import (
	"net/netip"
	"testing"
)

// The plan's ranges do not overlap, loopback ones are loopback and API-only
// ones are not.
func TestPlan(t *testing.T) {
	testNodes := []netip.Prefix{}
	for o := int(TestNodeOctets.First); o <= int(TestNodeOctets.Last); o++ {
		testNodes = append(testNodes, netip.PrefixFrom(netip.AddrFrom4([4]byte{127, byte(o), 0, 0}), 16))
	}
	loopback := append([]netip.Prefix{netip.PrefixFrom(Host, 32), KwokFallback, DefaultNodes, BenchLanes, TourDemo, TourTests}, testNodes...)
	api := []netip.Prefix{Services, TestNet2, BenchOneGroup, BenchElection, BenchNoStandby}
	for _, p := range loopback {
		if !p.Addr().IsLoopback() {
			t.Errorf("%s is not loopback", p)
		}
	}
	for _, p := range api {
		if p.Addr().IsLoopback() {
			t.Errorf("%s is loopback: the API server refuses it in EndpointSlices", p)
		}
	}
	realNode := []netip.Prefix{RealNodeIPs, RealNodePodsAll}
	for _, p := range realNode {
		if !p.Addr().IsPrivate() {
			t.Errorf("%s is not a private range", p)
		}
	}
	if !RealNodeIPs.Contains(RealNodeIP(2)) || !RealNodePodsAll.Contains(RealNodePods(2).Addr()) || RealNodePods(1).Overlaps(RealNodePods(2)) {
		t.Errorf("real node addresses out of their ranges: %s, %s, %s", RealNodeIP(2), RealNodePods(1), RealNodePods(2))
	}
	all := append(append(loopback, api...), realNode...)
	for i, a := range all {
		for _, b := range all[i+1:] {
			if a.Overlaps(b) {
				t.Errorf("%s overlaps %s", a, b)
			}
		}
	}
	if l := Lane(Lanes - 1); !BenchLanes.Contains(l.Addr()) || Lane(0).Addr() != BenchLanes.Addr() {
		t.Errorf("lanes %s..%s are not inside %s", Lane(0), l, BenchLanes)
	}
}
