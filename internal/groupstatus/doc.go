// Package groupstatus builds an HAGroup's status from what the controller
// saw in its last reconcile of the group: a pure function, so the status a
// user reads with kubectl get is table-tested without a cluster. Writing
// it is the controller's (internal/controller, hagroup.go), after the
// switch and coalesced.
package groupstatus
