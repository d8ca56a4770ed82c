// Package election holds hapod's decisions as pure functions: which pods of a
// group are healthy, which one should be active, who must be demoted, which
// pods must be deleted. It reads Kubernetes objects but never talks to the
// API, so every rule is table-tested without a cluster; the controller
// package carries the decisions out.
package election
