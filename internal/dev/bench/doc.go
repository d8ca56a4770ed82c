// Package bench measures hapod's failover latency and cost on a local control
// plane (package localcluster: etcd, kube-apiserver, kube-controller-manager,
// kube-scheduler and kwok on 127.0.0.1), next to the alternatives, and writes
// the results as Markdown, JSON and an SVG chart. cmd/hapod-bench (make bench)
// is its command.
//
// # What runs where
//
// The controller runs in its own process, so that its CPU time, peak memory
// and API requests are its own: it is the real hapod-controller binary, run
// by internal/dev/ctrlproc with flags (one process per scenario), which
// writes each promotion's timestamps to its -failover-records file
// (internal/record) and serves /metrics and pprof on 127.0.0.1. The bench
// reads those records, never the controller's log.
//
// The applications are pkg/role listeners in the bench process, one per pod,
// each bound to its own loopback address. Pods are created bare (the bench
// plays their ReplicaSet) with the hapod.io/pod-ip annotation, so every pod's
// address is known, and its listener bound, before the pod exists.
//
// # Network
//
// Role messages go to loopback only: the controller runs with -notify-cidrs
// 127.0.0.0/8. The API server refuses loopback addresses in EndpointSlices, so
// the one-group scenario, which measures the Service's EndpointSlice, gives
// its pods IPs in 198.18.0.0/15 (RFC 2544 benchmark range, API data only:
// nothing is ever sent there) and points the controller at the listener with
// the hapod.io/role-address annotation (127.x.y.z:port). The scale scenario's
// pods have loopback pod IPs, and their listeners are bound to those.
//
// # Clocks
//
// Every time is read on one machine: the bench's own (watch events, listener
// state changes, the start of each trigger request) and the controller's
// (record.Record's Seen, Labelled, Acked) are compared by wall clock.
package bench
