// Package hapodctl is kubectl hapod (cmd/kubectl-hapod), the client side
// of the HAGroup API (api/v1alpha1): it shows what the controller wrote in
// an HAGroup's status (status, history) and asks for what its spec offers
// (switchover, pause, resume). It never acts on pods or labels itself: the
// controller alone moves the active role, and the plugin only writes
// spec.paused and spec.switchover and reads status.
//
// The commands are a cobra tree built by [NewCommand], with kubectl's usual
// connection flags (genericclioptions.ConfigFlags), so that tests run them
// in-process against a real API server. What a command prints is made by
// pure functions of an HAGroup and the time (format.go), table-tested
// without a cluster.
package hapodctl
