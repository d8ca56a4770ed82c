package localcluster

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/hapod/hapod/internal/dev/child"
	"github.com/hapod/hapod/internal/dev/gobuild"
	"github.com/hapod/hapod/internal/dev/netns"
	"github.com/hapod/hapod/internal/dev/netplan"
	"github.com/hapod/hapod/internal/dev/ociimage"
	"github.com/hapod/hapod/internal/dev/poll"
)

// RealNode is a running real node: a kubelet and containerd of its own, pods
// on a CNI bridge, inside the cluster's network namespace.
type RealNode struct {
	// Name is the node's name, real-node-<n>.
	Name string
	// IP is its InternalIP, on a bridge without ports (netplan.RealNodeIP).
	IP netip.Addr
	// PodCIDR is where its pods get their IPs (on its CNI bridge).
	PodCIDR netip.Prefix
	// CtrSocket is its containerd socket (for ctr -a).
	CtrSocket string

	index      int
	dir        string
	containerd *process
	kubelet    *process
}

// Image is a container image that Start imports into every real node, packed
// from one static binary (see OCIImage).
type Image struct {
	// Ref is the image's name, e.g. localhost/hapod/demo:dev; pods name it
	// with imagePullPolicy Never (no registry is ever contacted).
	Ref string
	// Binary is a static executable; the image holds it as /<base name> and
	// runs it as its entrypoint.
	Binary string
}

// RealNodeLabel marks the real nodes (value "true"), so pods meant for
// real containers can select them in a cluster that has kwok nodes too.
const RealNodeLabel = "hapod.io/real-node"

// PauseImage is the sandbox image of every real node (containerd's
// pinned_images.sandbox), built from internal/dev/pause.
const PauseImage = "localhost/hapod/pause:dev"

// The kubelet's restart back-off cap on a real node: the default (300 s,
// growing from 10 s) would make a test that kills a non-critical container
// twice wait minutes (KubeletCrashLoopBackOffMax, beta and on since 1.35).
const realNodeMaxRestartPeriod = "1s"

// realNodeLease is the node lease duration of a real node (and, with
// Options.NodeMonitorGrace, of kwok's); they renew it every quarter of that
// (2 s), so RealNodeMonitorGrace lets four renewals in a row be late on a
// loaded machine before a node counts as lost: seconds, not 50.
const (
	realNodeLease        = 8 * time.Second
	RealNodeMonitorGrace = 10 * time.Second
)

// nodeBridge carries the real nodes' IPs: the kubelet refuses a loopback node
// IP and this machine's kernel has no dummy link driver, so the IPs sit on a
// bridge with no ports. The service CIDR is routed to it too (see
// setUpNodeNetwork).
const nodeBridge = "hpnodes"

// startRealNodes starts n real nodes and kube-proxy in the network namespace
// this process runs in, which netns.Run must have made: the nodes' addresses,
// bridges and rules must exist nowhere else.
func (c *Cluster) startRealNodes(ctx context.Context, n int, images []Image, minSync time.Duration) error {
	ns, ok := netns.Inside()
	if !ok {
		return fmt.Errorf("real nodes run only inside a network namespace of the project's own (netns.Run); this process is not in one")
	}
	if !c.bins.HasRealNode() {
		return fmt.Errorf("no real-node binaries: build with BuildOptions.RealNode")
	}
	if _, err := exec.LookPath(runcPath); err != nil {
		return fmt.Errorf("runc is not installed (Debian: apt-get install runc): %w", err)
	}
	if err := setUpNodeNetwork(n); err != nil {
		return err
	}
	tars, err := c.packImages(ctx, images)
	if err != nil {
		return err
	}
	for i := 1; i <= n; i++ {
		node, err := c.startRealNode(ctx, ns, i, tars)
		if err != nil {
			return err
		}
		c.mu.Lock()
		c.realNodes = append(c.realNodes, node)
		c.mu.Unlock()
	}
	// A kubelet that exits (bad configuration) fails the wait at once.
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-c.failed:
			cancel()
		case <-wctx.Done():
		}
	}()
	for _, node := range c.realNodes {
		if _, err := WaitNodeReady(wctx, c.client, node.Name); err != nil {
			if cerr := c.Err(); cerr != nil {
				return cerr
			}
			return fmt.Errorf("%w; tail of %s:\n%s", err, node.kubelet.logPath, child.Tail(node.kubelet.logPath, 25))
		}
	}
	// kube-proxy waits for its node to exist: start it once they are Ready.
	return c.startKubeProxy(ctx, ns, minSync)
}

// setUpNodeNetwork puts the node IPs on nodeBridge and routes the service
// CIDR to it: a ClusterIP packet that kube-proxy has not (yet) DNATed is
// dropped there instead of looking for a way out (there is none in the
// namespace anyway).
func setUpNodeNetwork(n int) error {
	cmds := [][]string{
		{"link", "add", nodeBridge, "type", "bridge"},
		{"link", "set", nodeBridge, "up"},
	}
	for i := 1; i <= n; i++ {
		cmds = append(cmds, []string{"addr", "add", netplan.RealNodeIP(i).String() + "/32", "dev", nodeBridge})
	}
	cmds = append(cmds, []string{"route", "add", netplan.Services.String(), "dev", nodeBridge, "src", netplan.RealNodeIP(1).String()})
	for _, args := range cmds {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
		}
	}
	return nil
}

const cgroupFS = "/sys/fs/cgroup"

// runcPath is Debian's runc (apt-get install runc).
const runcPath = "/usr/sbin/runc"

func (c *Cluster) startRealNode(ctx context.Context, ns string, i int, images []string) (*RealNode, error) {
	node := &RealNode{
		Name:    "real-node-" + strconv.Itoa(i),
		IP:      netplan.RealNodeIP(i),
		PodCIDR: netplan.RealNodePods(i),
		index:   i,
		dir:     filepath.Join(netns.StateDir(ns), "n"+strconv.Itoa(i)),
	}
	node.CtrSocket = filepath.Join(node.dir, "ctrd.sock")
	for _, d := range []string{"containerd/root", "containerd/state", "net.d", "cni-ipam", "kubelet", "pod-logs", "tmp"} {
		if err := os.MkdirAll(filepath.Join(node.dir, d), 0o700); err != nil {
			return nil, err
		}
	}
	if err := makeCgroupRoot(cgroupRoot(ns, i)); err != nil {
		return nil, err
	}
	files := map[string]string{
		"containerd.toml":        containerdConfig(node, c.bins),
		"net.d/10-pods.conflist": cniConfig(ns, node),
		"kubelet.yaml":           kubeletConfig(ns, node, filepath.Join(c.runDir, "pki", "ca.crt")),
		"resolv.conf":            "nameserver 127.0.0.1\n", // no cluster DNS here: pods need none
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(node.dir, name), []byte(content), 0o600); err != nil {
			return nil, err
		}
	}
	// containerd finds its shim and runc on PATH.
	path := "PATH=" + filepath.Dir(c.bins.ContainerdShim) + ":" + filepath.Dir(runcPath) + ":" + os.Getenv("PATH")
	var err error
	node.containerd, err = c.startProcess(node.Name+"-containerd", c.bins.Containerd, []string{path},
		"--config", filepath.Join(node.dir, "containerd.toml"))
	if err != nil {
		return nil, err
	}
	if err := poll.Until(ctx, time.Hour, func() (bool, error) { // bounded by ctx
		if node.containerd.exited() {
			return false, poll.Stop(node.containerd.exitError())
		}
		return c.ctr(ctx, node, "version") == nil, nil
	}); err != nil {
		return nil, fmt.Errorf("containerd of %s: %w", node.Name, err)
	}
	for _, tar := range images {
		if err := c.ctr(ctx, node, "-n", "k8s.io", "images", "import", tar); err != nil {
			return nil, err
		}
	}
	node.kubelet, err = c.startProcess(node.Name+"-kubelet", c.bins.Kubelet, nil,
		"--config", filepath.Join(node.dir, "kubelet.yaml"),
		"--kubeconfig", c.kubeconfig,
		"--root-dir", filepath.Join(node.dir, "kubelet"),
		"--cert-dir", filepath.Join(node.dir, "kubelet", "pki"),
		"--hostname-override", node.Name,
		"--node-ip", node.IP.String(),
		"--node-labels", RealNodeLabel+"=true",
		"--v=1")
	return node, err
}

func (c *Cluster) ctr(ctx context.Context, node *RealNode, args ...string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, c.bins.Ctr, append([]string{"--address", node.CtrSocket}, args...)...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ctr %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// cgroupRoot is node i's kubelet cgroupRoot: each node needs its own, or each
// kubelet kills the other's pods as orphans. Under netns.CgroupPrefix, so
// netns.Cleanup finds it.
func cgroupRoot(ns string, i int) string { return "/" + netns.CgroupPrefix(ns) + "n" + strconv.Itoa(i) }

// makeCgroupRoot creates root in every cgroup v1 hierarchy (the kubelet wants
// it to exist) and in the unified one; cpuset needs its cpus and mems copied
// from the parent before a task may join.
func makeCgroupRoot(root string) error {
	entries, err := os.ReadDir(cgroupFS)
	if err != nil {
		return fmt.Errorf("cgroups: %w", err)
	}
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		h := filepath.Join(cgroupFS, e.Name())
		d := filepath.Join(h, root)
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("create cgroup %s: %w", d, err)
		}
		if filepath.Base(h) == "cpuset" {
			for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
				v, err := os.ReadFile(filepath.Join(h, f))
				if err != nil {
					return err
				}
				if err := os.WriteFile(filepath.Join(d, f), v, 0o644); err != nil {
					return fmt.Errorf("cgroup %s: %w", filepath.Join(d, f), err)
				}
			}
		}
	}
	return nil
}

// containerdConfig: one containerd per node, everything under the node's
// directory. Each line that is not a plain path says which quirk it meets.
func containerdConfig(node *RealNode, bins Binaries) string {
	d := node.dir
	var cniDirs []string
	for _, b := range bins.CNIBinDirs {
		cniDirs = append(cniDirs, strconv.Quote(b))
	}
	return `version = 4
root = "` + d + `/containerd/root"
state = "` + d + `/containerd/state"
temp = "` + d + `/tmp"
# Snapshotters and plugins a dev node does not use (some need kernel features this machine lacks).
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.blockfile", "io.containerd.snapshotter.v1.erofs", "io.containerd.nri.v1.nri", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[plugins]
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = "overlayfs"
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = "` + PauseImage + `"
  [plugins.'io.containerd.cri.v1.runtime']
    enable_selinux = false
    # Pod network namespaces under the node's state, not /var/run/netns.
    netns_mounts_under_state_dir = true
    cdi_spec_dirs = ["` + d + `/cdi"]
    # No CAP_SYS_RESOURCE here, even for root: no process may set a negative
    # oom_score_adj (the pause container asks for -998 and runc fails with
    # "can't get final child's PID from pipe: EOF").
    restrict_oom_score_adj = true
    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = "runc"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
          BinaryName = "` + runcPath + `"
          SystemdCgroup = false
          # runc state per node (the default is shared by every containerd).
          Root = "` + d + `/runc"
    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dirs = [` + strings.Join(cniDirs, ", ") + `]
      conf_dir = "` + d + `/net.d"
      max_conf_num = 1
      use_internal_loopback = true
  [plugins.'io.containerd.grpc.v1.cri']
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
  [plugins.'io.containerd.image-verifier.v1.bindir']
    bin_dir = "` + d + `/image-verifier"
  # The socket goes here: a top-level [grpc] address is silently ignored in version 4.
  [plugins.'io.containerd.server.v1.grpc']
    address = "` + node.CtrSocket + `"
  [plugins.'io.containerd.server.v1.ttrpc']
    address = "` + node.CtrSocket + `.ttrpc"
  [plugins.'io.containerd.server.v1.debug']
    address = ""
  [plugins.'io.containerd.server.v1.metrics']
    address = ""
  [plugins.'io.containerd.internal.v1.opt']
    path = "` + d + `/opt"
`
}

// cniConfig: a bridge per node with the node's pod CIDR, named after the
// namespace so that netns.Cleanup finds libcni's cache entries.
func cniConfig(ns string, node *RealNode) string {
	return `{
  "cniVersion": "1.0.0",
  "name": "` + ns + `-n` + strconv.Itoa(node.index) + `",
  "plugins": [
    {
      "type": "bridge", "bridge": "hpbr` + strconv.Itoa(node.index) + `", "isGateway": true, "ipMasq": false, "hairpinMode": true,
      "ipam": {
        "type": "host-local", "dataDir": "` + node.dir + `/cni-ipam",
        "ranges": [[{"subnet": "` + node.PodCIDR.String() + `"}]],
        "routes": [{"dst": "` + netplan.RealNodePodsAll.String() + `"}, {"dst": "` + netplan.Services.String() + `"}, {"dst": "` + netplan.RealNodeIPs.String() + `"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
`
}

func kubeletConfig(ns string, node *RealNode, caFile string) string {
	port := 10250 + 10*(node.index-1)
	return `apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# No CAP_SYS_RESOURCE on this machine: the default -999 cannot be applied.
oomScoreAdj: 0
# This machine has cgroup v1 (hybrid); kubelet 1.35+ refuses it unless told.
failCgroupV1: false
# No systemd here.
cgroupDriver: cgroupfs
cgroupRoot: ` + cgroupRoot(ns, node.index) + `
containerRuntimeEndpoint: unix://` + node.CtrSocket + `
address: ` + node.IP.String() + `
port: ` + strconv.Itoa(port) + `
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: ` + strconv.Itoa(port-2) + `
podLogsDir: ` + node.dir + `/pod-logs
resolvConf: ` + node.dir + `/resolv.conf
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: ` + caFile + `}
authorization: {mode: AlwaysAllow}
failSwapOn: false
registerNode: true
maxPods: 50
serializeImagePulls: false
nodeLeaseDurationSeconds: ` + strconv.Itoa(int(realNodeLease/time.Second)) + `
crashLoopBackOff:
  maxContainerRestartPeriod: ` + realNodeMaxRestartPeriod + `
# A shared dev machine's disk and memory are not this node's to guard.
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
`
}

// startKubeProxy starts one kube-proxy for the namespace (its rules serve
// every node in it), in nftables mode: in the probe it reached a label change
// with max 108 ms against iptables' 366 ms.
func (c *Cluster) startKubeProxy(ctx context.Context, ns string, minSync time.Duration) error {
	if minSync == 0 {
		minSync = time.Second
	}
	cfg := filepath.Join(netns.StateDir(ns), "kube-proxy.yaml")
	first := c.realNodes[0]
	content := `apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: ` + c.kubeconfig + `
hostnameOverride: ` + first.Name + `
bindAddress: ` + first.IP.String() + `
mode: nftables
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
clusterCIDR: ` + netplan.RealNodePodsAll.String() + `
nodePortAddresses: ["` + first.IP.String() + `/32"]
oomScoreAdj: 0
# Leave the conntrack sysctls alone: they are not this namespace's to set.
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
  udpTimeout: 0s
  udpStreamTimeout: 0s
# Kubernetes' default (1s) unless asked, written out: a failover is two
# EndpointSlice changes (the old active out, then the new one in), and a
# change that comes less than minSyncPeriod after the last sync waits for
# the rest of it. (0s would read as unset and default to 1s all the same.)
nftables:
  syncPeriod: 30s
  minSyncPeriod: ` + minSync.String() + `
`
	if err := os.WriteFile(cfg, []byte(content), 0o600); err != nil {
		return err
	}
	p, err := c.startProcess("kube-proxy", c.bins.KubeProxy, nil, "--config", cfg, "--v=1")
	if err != nil {
		return err
	}
	return c.waitHealthy(ctx, p, "http://127.0.0.1:10256/healthz", plainClient(), "")
}

// RealNodes returns the real nodes Start started, in order.
func (c *Cluster) RealNodes() []*RealNode {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*RealNode(nil), c.realNodes...)
}

// StopRealNode stops node's kubelet and containerd (SIGKILL: a node lost,
// not drained); its containers go on running, cut off from their node, as
// on a machine whose kubelet and runtime died. The API server notices after
// the node monitor grace period.
func (c *Cluster) StopRealNode(node *RealNode) {
	c.mu.Lock() // StartRealNode replaces the processes
	procs := []*process{node.kubelet, node.containerd}
	c.mu.Unlock()
	for _, p := range procs {
		p.expectExit.Store(true)
		if !p.exited() {
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	}
}

// packImages writes the pause image and images as tarballs into the
// namespace's state directory and returns their paths. The pause binary is
// built from this module (internal/dev/pause).
func (c *Cluster) packImages(ctx context.Context, images []Image) ([]string, error) {
	ns, _ := netns.Inside()
	dir := filepath.Join(netns.StateDir(ns), "images")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	root, err := RepoRoot(".")
	if err != nil {
		return nil, err
	}
	if err := gobuild.Static(ctx, root, dir, "./internal/dev/pause"); err != nil {
		return nil, err
	}
	all := append([]Image{{Ref: PauseImage, Binary: filepath.Join(dir, "pause")}}, images...)
	var tars []string
	for i, img := range all {
		tar := filepath.Join(dir, "image-"+strconv.Itoa(i)+".tar")
		if err := ociimage.Write(tar, img.Ref, img.Binary); err != nil {
			return nil, fmt.Errorf("image %s: %w", img.Ref, err)
		}
		tars = append(tars, tar)
	}
	return tars, nil
}

// RealNodesUsable says why this machine cannot run real nodes, nil if it
// can: the network namespace's needs (netns.Usable), runc for the
// containers and nft for kube-proxy (.ci/run installs them).
func RealNodesUsable() error {
	if err := netns.Usable(); err != nil {
		return err
	}
	for _, tool := range []string{"runc", "nft"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s is not installed (Debian: runc, nftables; .ci/run installs them)", tool)
		}
	}
	return nil
}
