// Package helmbin builds the helm command for the chart's test
// (charts/hapod), from the Go module proxy as localcluster builds the
// cluster's binaries: go install helm.sh/helm/v3/cmd/helm@Version into
// .cache/tools/helm-<Version>/ under the repository root, once per machine.
// The Helm SDK stays out of go.mod (it would add some hundreds of modules to
// the product's build list for one test).
//
// A cold build (empty module and build caches) takes about 3 minutes on 2
// cores; with the binary cached, Build is a stat and a version check.
package helmbin
