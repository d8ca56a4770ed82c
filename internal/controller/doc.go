// Package controller carries out hapod's decisions against the Kubernetes
// API: it watches the managed pods (and their nodes), asks package election
// what each group needs, then writes it: the per-group epoch Lease, the
// role labels, deletions of pods whose critical container died, Events and
// metrics, and the UDP role notifications.
//
// The failover path is ordered so that the Service never selects two pods
// and no epoch is handed out twice: first the epoch Lease and the demotion
// of the old active (in parallel), then the new active's label and, in
// parallel with it, its UDP notification.
package controller
