// Package realnode_test runs hapod on real nodes: two kubelets with
// containerd, runc, CNI bridges and kube-proxy, inside a network namespace of
// the test binary's own (clustertest.MainRealNode). The apps are real
// containers of hapod-demo; the controller is the real binary. Every test
// checks what each app held (its own role records, written from inside its
// container to a hostPath) as well as the labels.
package realnode_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/hapod/hapod/internal/dev/clustertest"
	"github.com/hapod/hapod/internal/dev/gobuild"
	"github.com/hapod/hapod/internal/dev/localcluster"
	"github.com/hapod/hapod/internal/dev/netns"
	"github.com/hapod/hapod/internal/dev/realpod"
)

// binDir holds the binaries built for this run: the controller, which the
// tests run as a process, and the apps (and the agent) that the images hold.
var binDir string

func TestMain(m *testing.M) {
	clustertest.MainRealNode(m, clustertest.RealNodeOptions{Nodes: 2, Images: buildImages})
}

func buildImages(ctx context.Context) ([]localcluster.Image, error) {
	ns, _ := netns.Inside()
	binDir = filepath.Join(netns.StateDir(ns), "bin")
	if err := os.MkdirAll(binDir, 0o755); err != nil {
		return nil, err
	}
	root, err := localcluster.RepoRoot(".")
	if err != nil {
		return nil, err
	}
	if err := gobuild.Static(ctx, root, binDir, "./cmd/hapod-demo", "./cmd/hapod-le-app", "./cmd/hapod-agent", "./cmd/hapod-file-app"); err != nil {
		return nil, err
	}
	if err := gobuild.Build(ctx, root, binDir, "./cmd/hapod-controller"); err != nil {
		return nil, err
	}
	return []localcluster.Image{
		{Ref: realpod.DemoImage, Binary: filepath.Join(binDir, "hapod-demo")},
		{Ref: realpod.LEAppImage, Binary: filepath.Join(binDir, "hapod-le-app")},
		{Ref: realpod.AgentImage, Binary: filepath.Join(binDir, "hapod-agent")},
		{Ref: realpod.FileAppImage, Binary: filepath.Join(binDir, "hapod-file-app")},
	}, nil
}
