# hapod: build, local cluster, tests.
#
#   make build         build the binaries in cmd/ into bin/
#   make cluster       start a local Kubernetes control plane in the background
#                      (builds it first: about 8 minutes cold, then cached in .cache/cluster)
#   make cluster-down  stop it
#   make test          build the control plane if needed, then every test with -race
#   make lint          gofmt, go vet and staticcheck

GO ?= go
export GOTOOLCHAIN := local

.PHONY: all build cluster cluster-down cluster-env test lint demo bench

all: build

build:
	$(GO) build -o bin/ ./cmd/...

cluster:
	$(GO) run ./cmd/hapod-cluster up -detach

cluster-down:
	$(GO) run ./cmd/hapod-cluster down

# Prints export KUBECONFIG=... for the running cluster: eval "$(make -s cluster-env)"
cluster-env:
	@$(GO) run ./cmd/hapod-cluster env

# Tests that need a cluster start one per test binary (clustertest.Main), or share the
# one named by HAPOD_KUBECONFIG. The build goes first so it is not counted against a
# test binary's timeout.
test:
	$(GO) run ./cmd/hapod-cluster build
	$(GO) test -race -count=1 -v ./...

lint:
	@out=$$(gofmt -l $$(find . -name '*.go' -not -path './.cache/*' -not -path './bin/*')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./...

demo:
	$(GO) run ./cmd/hapod-tour

bench:
	$(GO) run ./cmd/hapod-bench $(BENCH_FLAGS)
