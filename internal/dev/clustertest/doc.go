// Package clustertest runs tests against a real local Kubernetes control plane
// (package localcluster): one cluster per test binary, a namespace and kwok nodes per
// test, polling with deadlines (Eventually, on internal/dev/poll), and helpers that play
// the kubelet.
//
// Use it from TestMain:
//
//	func TestMain(m *testing.M) { clustertest.Main(m) }
//
//	func TestSomething(t *testing.T) {
//		cs := clustertest.Clientset(t)
//		ns := clustertest.Namespace(t)
//		node := clustertest.Node(t) // a Ready kwok node with its own pod CIDR in 127.0.0.0/8
//		// ... create pods with nodeSelector kubernetes.io/hostname=node ...
//		clustertest.Eventually(t, 5*time.Second, func() (bool, error) { ... })
//	}
//
// Main starts a cluster (building the binaries first if they are missing: about 8
// minutes cold) unless HAPOD_KUBECONFIG names the kubeconfig of a running one, such as the
// one 'make cluster' starts (.cache/cluster/current/kubeconfig); then every test binary
// shares that cluster, which saves the start (about 4 s) per binary.
//
// Pod IPs and EndpointSlices: kwok gives pods IPs from their node's pod CIDR, which Node
// puts inside 127.0.0.0/8 so local processes can own them. The API server refuses
// loopback addresses in EndpointSlices (and Endpoints), so the EndpointSlice controller
// cannot publish such pods; a test of Service endpoints gives its node a pod CIDR outside
// 127.0.0.0/8 that is never sent traffic, such as TEST-NET-2 (Node(t, "198.51.100.0/24")).
package clustertest
