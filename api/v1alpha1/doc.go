// Package v1alpha1 is the HAGroup API (hapod.io/v1alpha1): one object per
// group of pods that hapod keeps one active, with the group's policies in
// spec (pause, planned switchover) and what the controller sees in status
// (the active pod and its epoch, the standbys and why each can or cannot
// take over, the last failover's timeline, conditions).
//
// An HAGroup is optional. A controller run with flags only manages its
// groups as before; an HAGroup named like a group (its namespace, and the
// value of the controller's -group-label) adds the spec's policies and gets
// the status. The types carry controller-gen markers: `make generate`
// writes the CRD (deploy/crd) and zz_generated.deepcopy.go, and a test
// fails when either is out of date.
//
// +kubebuilder:object:generate=true
// +groupName=hapod.io
package v1alpha1
