// Package deploy holds hapod's Kubernetes manifests, in kustomize layout:
//
//	controller/  hapod-controller in namespace hapod-system: cluster-wide RBAC,
//	             the admission policies that narrow it, Deployment
//	namespaced/  controller/ with the pod and Lease rights in one namespace's
//	             Role, and the controller told to watch only it
//	example/     the seed example: ReplicaSet hapod (2 pods), Service hapod,
//	             NetworkPolicy hapod (the role port from the controller only)
//	default/     controller/ and example/
//
// Apply one with kubectl apply -k deploy/<dir>. There is no Go code here; the
// package's test decodes every manifest strictly, checks the invariants the
// controller relies on, and applies them to a real API server with
// server-side dry-run; it checks, as the controller's ServiceAccount, what the
// RBAC and admission policies allow and refuse, and runs the real controller
// under each install through a failover.
package deploy
