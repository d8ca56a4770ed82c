// Package deploy holds hapod's Kubernetes manifests, in kustomize layout:
//
//	controller/  hapod-controller in namespace hapod-system: RBAC, Deployment
//	example/     the seed example: ReplicaSet hapod (2 pods) and Service hapod
//	default/     both
//
// Apply one with kubectl apply -k deploy/<dir>. There is no Go code here; the
// package's test decodes every manifest strictly, checks the invariants the
// controller relies on, and applies them to a real API server with
// server-side dry-run.
package deploy
