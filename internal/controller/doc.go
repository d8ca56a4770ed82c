// Package controller carries out hapod's decisions against the Kubernetes
// API: it watches the managed pods (and their nodes), asks package election
// what each group needs, then writes it: the per-group epoch Lease, the
// role labels, deletions of pods whose critical container died, Events and
// metrics, and the UDP role notifications.
//
// A switch (switch.go, switchActive) runs in this order, so that the Service
// never selects two pods and no two apps act active: the old active's app is
// told standby at the new epoch and its ack awaited briefly
// (-demote-ack-timeout); only once it is fenced (acked, or proven dead) is
// the new active told active; then the old active's label is removed, and
// only then the new one's written. The new epoch comes from a block reserved
// ahead in the group's Lease, so no API write stands before the new app's
// ack. Every API call and role message of a switch has a deadline and, with
// leader election, passes the leader gate (leader.go): a replica that may
// have lost its lease writes nothing.
//
// Build a Reconciler with New and register it with SetupWithManager;
// cmd/hapod-controller is the one wiring of the manager.
package controller
