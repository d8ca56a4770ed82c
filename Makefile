# hapod: build, local cluster, tests. `make help` lists the targets.

GO ?= go
export GOTOOLCHAIN := local
GOLANGCI_LINT := github.com/golangci/golangci-lint/v2/cmd/golangci-lint@v2.15.0
# CONTROLLER_GEN writes the HAGroup CRD and deepcopy; api/v1alpha1's test runs it too.
CONTROLLER_GEN := sigs.k8s.io/controller-tools/cmd/controller-gen@v0.23.0

.PHONY: all help build generate images unit test lint fuzz demo bench bench-real soak chaos cluster cluster-down cluster-env

all: build

help: ## list the targets
	@awk -F':.*## ' '/^[a-z-]+:.*## /{printf "  make %-13s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

build: ## build the binaries in cmd/ into bin/
	$(GO) build -o bin/ ./cmd/...

generate: ## the HAGroup CRD (deploy/crd) and deepcopy from api/v1alpha1's markers
	$(GO) run $(CONTROLLER_GEN) object paths=./api/...
	$(GO) run $(CONTROLLER_GEN) crd paths=./api/... output:crd:artifacts:config=deploy/crd

# IMAGES_FLAGS: -arch amd64 (one architecture), -version v0.1.0, -repo registry/prefix.
images: ## controller, demo and agent images without Docker: OCI layout bin/images/oci and docker-archives (amd64+arm64; ~4 min cold, ~30 s warm)
	$(GO) run ./cmd/hapod-images $(IMAGES_FLAGS)

unit: ## fast tests, no cluster (go test -short): under a minute warm
	$(GO) test -short -count=1 ./...

# Tests that need a cluster start one per test binary (clustertest.Main), or share the
# one named by HAPOD_KUBECONFIG. The build goes first so it is not counted against a
# test binary's timeout.
test: ## every test with -race, against a real control plane and real nodes (built first: ~20 min cold)
	$(GO) run ./cmd/hapod-cluster build
	$(GO) test -race -count=1 -timeout 30m -v ./...

lint: ## gofmt, go vet, golangci-lint (.golangci.yml)
	@out=$$(gofmt -l $$(find . -name '*.go' -not -path './.cache/*' -not -path './bin/*')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) run $(GOLANGCI_LINT) run ./...

# Each fuzz target searches for FUZZTIME beyond its seed corpus (which plain
# go test runs every time). .ci/fuzz runs go test -fuzz with minimization
# bounded, and tells a failing input from a failure of the fuzzing engine
# (a hung or killed worker): see its header.
FUZZTIME ?= 30s
fuzz: ## fuzz the decision rules and the wire decoder for FUZZTIME (30s) each
	GO=$(GO) bash .ci/fuzz $(FUZZTIME) ./internal/election/:FuzzDecide ./internal/wire/:FuzzDecode ./internal/wire/:FuzzFastPath

demo: ## run: two real nodes (as root; kwok otherwise), the controller, the example and a role-file app with hapod-agent as real containers, eight scenes (~45 s built)
	$(GO) run ./cmd/hapod-tour

bench: ## failover latency against the baselines, kill -9 via the role lease, renewal cost, scale, and end to end on real nodes (~35 min; BENCH_FLAGS=-short ~4 min)
	$(GO) run ./cmd/hapod-bench $(BENCH_FLAGS)

bench-real: ## only the end-to-end rows on real nodes (~25 min), into bench/results/realnode
	$(GO) run ./cmd/hapod-bench -only realnode -out bench/results/realnode $(BENCH_FLAGS)

soak: ## 10 min, every core busy: no healthy group may fail over (bench/results/soak)
	$(GO) run ./cmd/hapod-bench -only soak -soak 10m -out bench/results/soak

chaos: ## 1,000 random faults, mixed, under two controllers and real apps; the history checked for two actives (bench/results/chaos; CHAOS_FLAGS=-short: 60)
	$(GO) run ./cmd/hapod-chaos $(CHAOS_FLAGS)

# REAL_NODES=2 adds real nodes (kubelet, containerd, kube-proxy) inside a network
# namespace of their own; reach the API server there with
# nsenter --net=/run/netns/$$(cat .cache/cluster/current/netns) ...
REAL_NODES ?= 0
cluster: ## start a local control plane in the background (.cache/cluster/current/); REAL_NODES=2 adds real nodes
	$(GO) run ./cmd/hapod-cluster up -detach -real-nodes $(REAL_NODES)

cluster-down: ## stop it
	$(GO) run ./cmd/hapod-cluster down

# Prints export KUBECONFIG=... for the running cluster: eval "$(make -s cluster-env)"
cluster-env: ## print export KUBECONFIG=... for the running cluster
	@$(GO) run ./cmd/hapod-cluster env
