# syntax=docker/dockerfile:1
#
# Without Docker, `make images` builds the same three images (the binary
# alone, no distroless base) as an OCI layout and docker-archives
# (cmd/hapod-images). With Docker, three images from one build, static
# binaries on distroless, non-root:
#   docker build --target hapod-controller -t ghcr.io/hapod/hapod-controller:latest .
#   docker build --target hapod-demo       -t ghcr.io/hapod/hapod-demo:latest .
#   docker build --target hapod-agent      -t ghcr.io/hapod/hapod-agent:latest .
# Without --target the last stage, hapod-controller, is built. Multi-platform:
#   docker buildx build --platform linux/amd64,linux/arm64 --target ... .

FROM --platform=$BUILDPLATFORM golang:1.26 AS build
WORKDIR /src
ENV CGO_ENABLED=0 GOTOOLCHAIN=local
# Dependencies first, so that a source change does not download them again.
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
ARG TARGETOS=linux
ARG TARGETARCH
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    GOOS=$TARGETOS GOARCH=$TARGETARCH \
    go build -trimpath -ldflags='-s -w' -o /out/ ./cmd/hapod-controller ./cmd/hapod-demo ./cmd/hapod-agent

FROM gcr.io/distroless/static:nonroot AS hapod-demo
COPY --from=build /out/hapod-demo /hapod-demo
# Numeric, so that the kubelet can verify runAsNonRoot.
USER 65532:65532
EXPOSE 8080/tcp 7477/udp
ENTRYPOINT ["/hapod-demo"]

FROM gcr.io/distroless/static:nonroot AS hapod-agent
COPY --from=build /out/hapod-agent /hapod-agent
USER 65532:65532
# 7477 role messages; 7480 /role, /readyz, /metrics (127.0.0.1 by default).
EXPOSE 7477/udp 7480/tcp
ENTRYPOINT ["/hapod-agent"]

FROM gcr.io/distroless/static:nonroot AS hapod-controller
COPY --from=build /out/hapod-controller /hapod-controller
USER 65532:65532
# 8080 metrics, 8081 /healthz and /readyz.
EXPOSE 8080/tcp 8081/tcp
ENTRYPOINT ["/hapod-controller"]
