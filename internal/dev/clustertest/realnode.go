package clustertest

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hapod/hapod/internal/dev/localcluster"
	"github.com/hapod/hapod/internal/dev/netns"
)

// RealNodeOptions configures MainRealNode.
type RealNodeOptions struct {
	// Nodes is the number of real nodes (at least 1).
	Nodes int
	// Images returns the images to import into every node; it runs inside
	// the network namespace, before the cluster starts (build the binaries
	// there: a cold build is not counted against the cluster's start).
	Images func(ctx context.Context) ([]localcluster.Image, error)
}

// cluster is the running cluster of MainRealNode (nil under Main).
var cluster *localcluster.Cluster

// MainRealNode runs the tests of a package against a local cluster with real
// nodes (kubelet, containerd, runc, CNI and kube-proxy; no kwok nodes) and
// exits with their code. The test binary first runs itself again inside a
// network namespace of its own (netns.Run), which is removed, with
// everything the nodes left, when the tests end; so it needs root. Under
// -short the tests run without a cluster (and skip themselves in config).
// HAPOD_KUBECONFIG is not used: a shared cluster has no real nodes.
func MainRealNode(m *testing.M, o RealNodeOptions, after ...func()) {
	flag.Parse()
	if testing.Short() {
		short = true
		os.Exit(m.Run())
	}
	if _, inside := netns.Inside(); !inside {
		code, err := netns.Run(os.Args)
		if err != nil {
			fmt.Fprintf(os.Stderr, "clustertest: %v\n", err)
			code = 1
		}
		os.Exit(code)
	}
	code := runRealNode(m, o)
	for _, f := range after {
		f()
	}
	os.Exit(code)
}

func runRealNode(m *testing.M, o RealNodeOptions) int {
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	ctx := context.Background()
	var images []localcluster.Image
	if o.Images != nil {
		var err error
		if images, err = o.Images(ctx); err != nil {
			fmt.Fprintf(os.Stderr, "clustertest: images: %v\n", err)
			return 1
		}
	}
	began := time.Now()
	c, err := localcluster.Start(ctx, localcluster.Options{
		Logger:       log,
		NodePodCIDRs: []string{}, // real nodes only: the scheduler must not place a pod on kwok
		RealNodes:    o.Nodes,
		Images:       images,
		// A test may lose a node: noticed in seconds, not 50.
		NodeMonitorGrace: localcluster.RealNodeMonitorGrace,
	})
	if err != nil {
		fmt.Fprintf(os.Stderr, "clustertest: start a local cluster with %d real nodes: %v\n", o.Nodes, err)
		return 1
	}
	defer func() {
		if err := c.Stop(); err != nil {
			fmt.Fprintf(os.Stderr, "clustertest: %v\n", err)
		}
	}()
	log.Info("clustertest: local cluster with real nodes started", "took", time.Since(began).Round(10*time.Millisecond).String(),
		"kubeconfig", c.Kubeconfig(), "realNodes", o.Nodes)
	cluster = c
	baseConfig, kubeconfigPath = c.RESTConfig(), c.Kubeconfig()
	return m.Run()
}

// RealNodes returns the real nodes of MainRealNode's cluster.
func RealNodes(t testing.TB) []*localcluster.RealNode {
	t.Helper()
	config(t)
	if cluster == nil {
		t.Fatal("clustertest: no real nodes: call clustertest.MainRealNode from TestMain")
	}
	return cluster.RealNodes()
}

// StopRealNode kills a real node's kubelet and containerd (its containers
// run on, cut off): a lost node. StartRealNode brings it back; a test that
// leaves it lost should be the last to use it.
func StopRealNode(t testing.TB, node *localcluster.RealNode) {
	t.Helper()
	RealNodes(t)
	cluster.StopRealNode(node)
}

// StartRealNode starts a node that StopRealNode stopped again and waits
// until it is Ready (localcluster.Cluster.StartRealNode).
func StartRealNode(t testing.TB, node *localcluster.RealNode) {
	t.Helper()
	RealNodes(t)
	if err := cluster.StartRealNode(t.Context(), node); err != nil {
		t.Fatal(err)
	}
}

// RealCluster is MainRealNode's cluster, for code that stops and starts its
// nodes by itself (the chaos run's real phase).
func RealCluster(t testing.TB) *localcluster.Cluster {
	t.Helper()
	RealNodes(t)
	return cluster
}

// PodKubeconfig writes a kubeconfig that works from inside a pod on a real
// node (localcluster.Cluster.WritePodKubeconfig) and returns its path.
func PodKubeconfig(t testing.TB) string {
	t.Helper()
	RealNodes(t)
	path := filepath.Join(t.TempDir(), "pod-kubeconfig")
	if err := cluster.WritePodKubeconfig(path); err != nil {
		t.Fatal(err)
	}
	return path
}
