// Package hapod is the Helm chart of hapod-controller (Chart.yaml,
// values.yaml, values.schema.json, templates/, crds/). There is no Go code
// here; the package's test builds helm (internal/dev/helmbin), lints the
// chart, checks that the schema refuses bad values, renders it with the
// default and other values (testdata/) and applies the result to a real API
// server, server-side dry-run first, and checks that the chart installs what
// deploy/controller and deploy/namespaced do: the same Deployment, RBAC
// (plus the HAGroup rules) and admission policies, and the same CRD as
// deploy/crd.
//
//	go test -race -count=1 ./charts/hapod/
//
// With -short it checks only the CRD copy (no helm build, no cluster).
package hapod
