// Package ownedslice builds the EndpointSlice of a group in owned data-path
// mode: hapod, not the kube-controller-manager, writes the one endpoint of a
// selector-less Service, so that a failover is one slice write that swaps
// the old active's endpoint for the new one's (never zero endpoints in
// between, never two), instead of two label writes followed by the
// EndpointSlice controller's own queue.
//
// The builder is a pure function of the Service and the active pod, so the
// slice is table-tested without a cluster. Writing it, repairing it and
// deleting it are the controller's.
//
// Single-stack IPv4 only: the slice's addressType is IPv4 and a pod's IPv6
// addresses are not published. A Service whose ipFamilies lists IPv6 only
// is refused, as is a pod without an IPv4 address (no endpoint is built).
package ownedslice
