// Package realtour plays hapod's whole job on the local cluster's real nodes,
// for `make demo` (cmd/hapod-tour) and for its test in test/realnode.
//
// Nothing is played here: the seed's example (deploy/example) is applied with
// its pods on the images the local cluster built from this module
// (internal/dev/realpod: hapod-demo as the critical container, a pause binary
// as the sidecar). A real kubelet, containerd and runc run them, the CNI
// bridge gives them their IPs, the real hapod-controller sends its role
// messages to those IPs, and kube-proxy (nftables mode) routes the Service's
// ClusterIP to the active pod. A second group, hapod-file, runs an app that
// knows nothing of hapod but a role file (cmd/hapod-file-app) beside
// hapod-agent, which receives the role messages and writes the file; its
// scenes (f, g) show that such an app fails over too. The load goes to the ClusterIP
// (internal/dev/clusterip), and an `nft monitor` (internal/dev/nftwatch)
// times the moment kube-proxy points the Service at the new active.
//
// Each scene's timeline runs from its trigger (a SIGKILL to a container's
// processes, found by their cgroup, or a DELETE), through the kubelet's
// report, the controller's label and the app's ack, the EndpointSlice and
// kube-proxy's rule, to the first request through the ClusterIP that the new
// active answered. Every time comes from data: the tour's watches, the
// controller's failover records, each app's own role records (written from
// inside its container to a hostPath), nft's output and the load's answers.
// After every scene the tour checks, in each group, that no two pods were
// labelled active at once and no two apps held the role at once.
//
// It must run inside the real nodes' network namespace (internal/dev/netns),
// where the pod IPs and the ClusterIP are reachable and exist nowhere else.
package realtour
