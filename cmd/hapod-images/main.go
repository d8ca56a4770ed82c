// Command hapod-images builds hapod's container images without Docker or a
// registry: `make images`. For each architecture it compiles the
// controller, the demo app and the role agent as the Dockerfile does
// (static, -trimpath, -s -w), packs each binary alone into an image
// (internal/dev/ociimage: the binary as the entrypoint, a numeric non-root
// user, no shell, OCI labels), and writes
//
//	OUT/oci/                  one OCI image layout: per image a multi-platform
//	                          index, named by org.opencontainers.image.ref.name
//	                          (push it with `skopeo copy oci:OUT/oci:NAME docker://NAME`
//	                          or `crane push`)
//	OUT/NAME-ARCH.tar         a docker-archive per image and architecture
//	                          (`docker load -i`, `ctr images import`)
//	OUT/bin/ARCH/NAME         the binaries
//
// Flags:
//
//	-out DIR        where (default bin/images)
//	-arch LIST      GOARCHs, comma-separated (default amd64,arm64)
//	-repo PREFIX    image name prefix (default ghcr.io/hapod)
//	-version TAG    the tag and org.opencontainers.image.version (default dev)
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/hapod/hapod/internal/dev/localcluster"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	fs := flag.NewFlagSet("hapod-images", flag.ContinueOnError)
	out := fs.String("out", "bin/images", "output directory")
	arch := fs.String("arch", "amd64,arm64", "GOARCHs, comma-separated")
	repo := fs.String("repo", "ghcr.io/hapod", "image name prefix")
	version := fs.String("version", "dev", "image tag and org.opencontainers.image.version")
	if err := fs.Parse(os.Args[1:]); err != nil {
		os.Exit(2)
	}
	root, err := localcluster.RepoRoot(".")
	if err != nil {
		fmt.Fprintln(os.Stderr, "hapod-images:", err)
		os.Exit(1)
	}
	o := options{Root: root, Out: *out, Arches: strings.Split(*arch, ","), Repo: *repo, Version: *version}
	written, err := build(ctx, o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "hapod-images:", err)
		os.Exit(1)
	}
	for _, w := range written {
		fmt.Println(w)
	}
}
