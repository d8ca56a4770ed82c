// Package ctrlproc runs the real hapod-controller binary as a child process
// for the tour and the bench: the binary's own main is the only wiring of the
// manager, so what they show and measure is what ships.
//
// [Start] runs the binary with the flags every dev run needs (the cluster's
// kubeconfig, the watched namespaces, role messages from and to loopback
// only, metrics, probes and pprof on free 127.0.0.1 ports, a failover record
// file) plus the caller's, and returns once its /readyz answers (its caches
// are synced). It follows the record file (internal/record) so that callers
// read each promotion's timings as data, never from log text. [Controller.Stop]
// sends SIGTERM, then SIGKILL; the process also dies with its parent
// (internal/dev/child).
package ctrlproc
