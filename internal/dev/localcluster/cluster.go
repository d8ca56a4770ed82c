package localcluster

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	_ "embed"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/hapod/hapod/internal/dev/child"
	"github.com/hapod/hapod/internal/dev/netplan"
	"github.com/hapod/hapod/internal/dev/poll"
	"github.com/hapod/hapod/pkg/role"
)

// PodIPAnnotation on a pod chooses its IP: kwok's pod-ready stage uses the annotation's
// value instead of an address from the node's pod CIDR. It must be set when the pod is
// created (kwok reads it once, when it makes the pod Running).
const PodIPAnnotation = role.PodIPAnnotation

// DefaultNodePodCIDRs are the pod CIDRs of the nodes Start creates, kwok-node-0 and
// kwok-node-1: inside 127.0.0.0/8 (netplan.DefaultNodes), so local processes can bind
// the pods' IPs.
var DefaultNodePodCIDRs = []string{netplan.Subnet24(netplan.DefaultNodes, 0).String(), netplan.Subnet24(netplan.DefaultNodes, 1).String()}

// Fixed address ranges of every cluster (see netplan).
var (
	// kwokFallbackCIDR gives IPs to pods on nodes without a pod CIDR (kwok --cidr).
	kwokFallbackCIDR = netplan.KwokFallback.String()
	// serviceCIDR holds Service cluster IPs. Nothing routes them (there is no kube-proxy);
	// they are API data only.
	serviceCIDR = netplan.Services.String()
	// nodeIP is every kwok node's InternalIP, and so the hostIP of every pod.
	nodeIP = netplan.Host.String()
)

//go:embed stages.yaml
var kwokStages []byte

// Options configures [Start]. The zero value is ready to use.
type Options struct {
	// CacheDir is the cluster cache (binaries, run directories); empty means
	// .cache/cluster under the repository root.
	CacheDir string
	// RunDir is where certificates, data and logs go; it is removed by Stop. Empty means a
	// fresh directory under <CacheDir>/run.
	RunDir string
	// Binaries to run; nil means Build (which builds only what is not cached).
	Binaries *Binaries
	// Versions for Build when Binaries is nil.
	Versions Versions
	// NodePodCIDRs: one kwok node named kwok-node-<i> is created per entry. nil means
	// DefaultNodePodCIDRs; an empty non-nil slice creates no node.
	NodePodCIDRs []string
	// Timeout bounds the start of the whole control plane (not the build); 0 means 2 minutes.
	Timeout time.Duration
	// StopGrace is how long Stop waits for each process after SIGTERM before SIGKILL;
	// 0 means 10 seconds.
	StopGrace time.Duration
	// KeepRunDir leaves the run directory (logs, data) in place after Stop, for debugging.
	KeepRunDir bool
	// Logger receives progress; nil means slog.Default().
	Logger *slog.Logger

	// RealNodes starts this many real nodes (real-node-1, ...: kubelet,
	// containerd, runc, CNI bridge) and one kube-proxy, after the kwok nodes.
	// Only inside a network namespace that netns.Run made; Build must have
	// built the real-node binaries (BuildOptions.RealNode, which Start sets
	// when it builds).
	RealNodes int
	// NodeMonitorGrace, if not 0, is kube-controller-manager's
	// --node-monitor-grace-period (default 50 s): how long a node may go
	// without a heartbeat before it is marked not Ready. Real nodes renew
	// their lease every 2 s; with it set, kwok's nodes do too. At least 3 s;
	// RealNodeMonitorGrace suits a test of a lost node.
	NodeMonitorGrace time.Duration
	// Images are imported into every real node (besides the pause image).
	Images []Image
	// KubeProxyMinSync is kube-proxy's minSyncPeriod; 0 means its default,
	// 1 s.
	KubeProxyMinSync time.Duration
}

// Cluster is a running control plane. Its methods are safe for concurrent use.
type Cluster struct {
	runDir     string
	kubeconfig string
	restConfig *rest.Config
	client     kubernetes.Interface
	log        *slog.Logger
	stopGrace  time.Duration
	keepRunDir bool
	bins       Binaries
	ports      ports

	mu        sync.Mutex // guards procs, state and realNodes
	restartMu sync.Mutex // one RestartAPIServer at a time
	procs     []*process
	state     State
	realNodes []*RealNode
	// withReal: the cluster has real nodes, so it runs in a network
	// namespace of its own and the API server also listens on the node
	// network, for pods (PodKubeconfig).
	withReal bool

	stopping atomic.Bool
	failed   chan struct{} // closed when a component exits while not stopping
	failOnce sync.Once
	failErr  error

	stopOnce sync.Once
	stopErr  error
}

type ports struct {
	etcdClient, etcdPeer, apiserver, kcm, scheduler int
}

// errPortTaken marks a start that failed because another process took a port between
// our probe and the component's bind; Start then tries again with new ports.
var errPortTaken = errors.New("port taken")

// Start builds (if needed) and starts a control plane and returns when every component
// is healthy and the nodes are Ready. On error nothing is left running.
func Start(ctx context.Context, opts Options) (*Cluster, error) {
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	cacheDir, err := resolveCacheDir(opts.CacheDir)
	if err != nil {
		return nil, err
	}
	var bins Binaries
	if opts.Binaries != nil {
		bins = *opts.Binaries
	} else if bins, err = Build(ctx, BuildOptions{CacheDir: cacheDir, Versions: opts.Versions, Logger: log, RealNode: opts.RealNodes > 0}); err != nil {
		return nil, err
	}
	if opts.Timeout == 0 {
		opts.Timeout = 2 * time.Minute
	}
	if opts.StopGrace == 0 {
		opts.StopGrace = 10 * time.Second
	}
	if opts.NodePodCIDRs == nil {
		opts.NodePodCIDRs = DefaultNodePodCIDRs
	}
	runRoot := filepath.Join(cacheDir, "run")
	removeStaleRunDirs(runRoot, opts.StopGrace)

	ctx, cancel := context.WithTimeout(ctx, opts.Timeout)
	defer cancel()
	for attempt := 1; ; attempt++ {
		runDir := opts.RunDir
		if runDir == "" {
			runDir = filepath.Join(runRoot, time.Now().Format("20060102-150405")+"-"+randomHex(3))
		}
		runDir, err = filepath.Abs(runDir)
		if err != nil {
			return nil, err
		}
		c, err := start(ctx, opts, log, bins, runDir)
		if err == nil || !errors.Is(err, errPortTaken) || attempt == 3 {
			return c, err
		}
		log.Info("a port was taken by another process, starting again", "attempt", attempt, "err", err.Error())
	}
}

func start(ctx context.Context, opts Options, log *slog.Logger, bins Binaries, runDir string) (_ *Cluster, err error) {
	began := time.Now()
	c := &Cluster{
		runDir:     runDir,
		kubeconfig: filepath.Join(runDir, "kubeconfig"),
		log:        log,
		stopGrace:  opts.StopGrace,
		keepRunDir: opts.KeepRunDir,
		withReal:   opts.RealNodes > 0,
		bins:       bins,
		failed:     make(chan struct{}),
	}
	defer func() {
		if err != nil {
			if stopErr := c.Stop(); stopErr != nil {
				err = fmt.Errorf("%w (and stopping what had started: %w)", err, stopErr)
			}
		}
	}()
	if err := c.prepareRunDir(); err != nil {
		return c, err
	}
	pk, err := c.writeCredentials()
	if err != nil {
		return c, err
	}
	etcdURL, err := c.startEtcd(ctx)
	if err != nil {
		return c, err
	}
	log.Debug("component healthy", "component", "etcd", "after", time.Since(began).String())
	if err := c.startAPIServer(ctx, pk, etcdURL); err != nil {
		return c, err
	}
	log.Debug("component healthy", "component", "kube-apiserver", "after", time.Since(began).String())
	if err := c.startControllers(ctx, pk, opts.NodeMonitorGrace); err != nil {
		return c, err
	}
	log.Debug("components healthy", "after", time.Since(began).String())
	if err := c.createNodes(ctx, opts.NodePodCIDRs); err != nil {
		return c, err
	}
	if opts.RealNodes > 0 {
		if err := c.startRealNodes(ctx, opts.RealNodes, opts.Images, opts.KubeProxyMinSync); err != nil {
			return c, err
		}
		log.Debug("real nodes Ready", "nodes", opts.RealNodes, "after", time.Since(began).String())
	}
	log.Info("local cluster up", "kubeconfig", c.kubeconfig, "apiserver", c.restConfig.Host,
		"nodes", len(opts.NodePodCIDRs), "realNodes", opts.RealNodes, "took", time.Since(began).Round(10*time.Millisecond).String())
	return c, nil
}

// prepareRunDir creates the run directory and its state file (which names this
// process as the owner), and picks the components' ports.
func (c *Cluster) prepareRunDir() error {
	for _, d := range []string{"logs", "etcd", "kwok", "kcm", "scheduler"} {
		if err := os.MkdirAll(filepath.Join(c.runDir, d), 0o755); err != nil {
			return fmt.Errorf("create run dir: %w", err)
		}
	}
	ownerStart, err := child.StartTime(os.Getpid())
	if err != nil {
		return err
	}
	c.state = State{OwnerPID: os.Getpid(), OwnerStartTime: ownerStart, Kubeconfig: c.kubeconfig}
	if err := writeState(c.runDir, &c.state); err != nil {
		return err
	}
	p, err := FreePorts(5)
	if err != nil {
		return err
	}
	c.ports = ports{etcdClient: p[0], etcdPeer: p[1], apiserver: p[2], kcm: p[3], scheduler: p[4]}
	return nil
}

// writeCredentials generates the certificates and keys, the admin kubeconfig and
// kwok's stages.
func (c *Cluster) writeCredentials() (*pki, error) {
	_, svcNet, _ := net.ParseCIDR(serviceCIDR)
	svcIP := append(net.IP{}, svcNet.IP.To4()...)
	svcIP[3]++ // the first address is the kubernetes Service's
	pk, err := newPKI(svcIP)
	if err != nil {
		return nil, err
	}
	if err := pk.write(filepath.Join(c.runDir, "pki")); err != nil {
		return nil, err
	}
	c.restConfig = &rest.Config{
		Host: "https://127.0.0.1:" + strconv.Itoa(c.ports.apiserver),
		TLSClientConfig: rest.TLSClientConfig{
			CAData: pk.CACert, CertData: pk.AdminCert, KeyData: pk.AdminKey,
		},
	}
	if err := writeKubeconfig(c.kubeconfig, c.restConfig); err != nil {
		return nil, err
	}
	return pk, os.WriteFile(c.stagesPath(), kwokStages, 0o644)
}

func (c *Cluster) stagesPath() string { return filepath.Join(c.runDir, "kwok", "stages.yaml") }

// startEtcd starts etcd, waits until it is healthy and returns its client URL.
func (c *Cluster) startEtcd(ctx context.Context) (string, error) {
	etcdURL := "http://127.0.0.1:" + strconv.Itoa(c.ports.etcdClient)
	peerURL := "http://127.0.0.1:" + strconv.Itoa(c.ports.etcdPeer)
	etcd, err := c.startProcess("etcd", c.bins.Etcd, nil,
		"--name", "hapod",
		"--data-dir", filepath.Join(c.runDir, "etcd"),
		"--listen-client-urls", etcdURL, "--advertise-client-urls", etcdURL,
		"--listen-peer-urls", peerURL, "--initial-advertise-peer-urls", peerURL,
		"--initial-cluster", "hapod="+peerURL,
		"--unsafe-no-fsync", // throwaway data: durability buys nothing, fsync costs latency
		"--log-level", "warn")
	if err != nil {
		return "", err
	}
	return etcdURL, c.waitHealthy(ctx, etcd, etcdURL+"/health", plainClient(), `"health":"true"`)
}

// startAPIServer starts kube-apiserver on etcd and waits until it is ready.
func (c *Cluster) startAPIServer(ctx context.Context, pk *pki, etcdURL string) error {
	pkiPath := pk.path
	apiserver, err := c.startProcess(apiserverBin, c.bins.KubeAPIServer, nil,
		"--etcd-servers", etcdURL,
		"--bind-address", c.apiserverBind(), "--secure-port", strconv.Itoa(c.ports.apiserver),
		"--advertise-address", "127.0.0.1",
		// The default reconciler refuses a loopback advertise address; nothing needs the
		// kubernetes Service's endpoints here.
		"--endpoint-reconciler-type", "none",
		"--tls-cert-file", pkiPath("apiserver.crt"), "--tls-private-key-file", pkiPath("apiserver.key"),
		"--client-ca-file", pkiPath("ca.crt"),
		"--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file", pkiPath("sa.pub"),
		"--service-account-signing-key-file", pkiPath("sa.key"),
		"--service-cluster-ip-range", serviceCIDR,
		"--authorization-mode", "RBAC",
		// No --enable-admission-plugins: the defaults include
		// ValidatingAdmissionPolicy (on by default since 1.30), which
		// deploy's tests check the shipped policies with.
		"--allow-privileged=true",
		"--profiling=false")
	if err != nil {
		return err
	}
	adminHTTP, err := adminClient(c.restConfig)
	if err != nil {
		return err
	}
	return c.waitHealthy(ctx, apiserver, c.restConfig.Host+"/readyz", adminHTTP, "")
}

// startControllers starts kube-controller-manager, kube-scheduler and kwok, which
// only need the API server, and waits until the first two are healthy (kwok's health
// is that it makes nodes Ready: createNodes waits for that).
func (c *Cluster) startControllers(ctx context.Context, pk *pki, grace time.Duration) error {
	pkiPath := pk.path
	var nodeMonitor []string
	kwokLease := "40"
	if grace > 0 {
		nodeMonitor = []string{"--node-monitor-grace-period", grace.String(), "--node-monitor-period", "1s"}
		// kwok's nodes must renew as often as the real ones, or the short
		// grace period takes them for lost.
		kwokLease = strconv.Itoa(int(realNodeLease / time.Second))
	}
	kcm, err := c.startProcess("kube-controller-manager", c.bins.KubeControllerManager, nil, append([]string{
		"--kubeconfig", c.kubeconfig,
		"--authentication-kubeconfig", c.kubeconfig, "--authorization-kubeconfig", c.kubeconfig,
		"--bind-address", "127.0.0.1", "--secure-port", strconv.Itoa(c.ports.kcm),
		"--cert-dir", filepath.Join(c.runDir, "kcm"),
		"--leader-elect=false",
		"--controllers", "*",
		"--allocate-node-cidrs=false", // nodes get their pod CIDR from whoever creates them
		"--service-account-private-key-file", pkiPath("sa.key"),
		"--root-ca-file", pkiPath("ca.crt"),
		"--cluster-signing-cert-file", pkiPath("ca.crt"), "--cluster-signing-key-file", pkiPath("ca.key"),
		"--service-cluster-ip-range", serviceCIDR,
		"--profiling=false"}, nodeMonitor...)...)
	if err != nil {
		return err
	}
	scheduler, err := c.startProcess("kube-scheduler", c.bins.KubeScheduler, nil,
		"--kubeconfig", c.kubeconfig,
		"--authentication-kubeconfig", c.kubeconfig, "--authorization-kubeconfig", c.kubeconfig,
		"--bind-address", "127.0.0.1", "--secure-port", strconv.Itoa(c.ports.scheduler),
		"--cert-dir", filepath.Join(c.runDir, "scheduler"),
		"--leader-elect=false",
		"--profiling=false")
	if err != nil {
		return err
	}
	kwok, err := c.startProcess("kwok", c.bins.Kwok,
		// kwok would also read ~/.kwok/kwok.yaml; point its work dir into the run dir.
		[]string{"KWOK_WORKDIR=" + filepath.Join(c.runDir, "kwok")},
		"--kubeconfig", c.kubeconfig,
		"--config", c.stagesPath(),
		// Only annotated nodes (NewNode's): removing the annotation stops
		// kwok's heartbeats, which is how tests fail a node (FailNode).
		"--manage-nodes-with-annotation-selector", KwokNodeAnnotation+"=fake",
		"--node-lease-duration-seconds", kwokLease,
		"--cidr", kwokFallbackCIDR,
		"--node-ip", nodeIP)
	if err != nil {
		return err
	}
	insecure := insecureClient()
	if err := c.waitHealthy(ctx, kcm, "https://127.0.0.1:"+strconv.Itoa(c.ports.kcm)+"/healthz", insecure, ""); err != nil {
		return err
	}
	if err := c.waitHealthy(ctx, scheduler, "https://127.0.0.1:"+strconv.Itoa(c.ports.scheduler)+"/healthz", insecure, ""); err != nil {
		return err
	}
	if kwok.exited() {
		return kwok.exitError()
	}
	return nil
}

// createNodes creates kwok-node-<i> for each pod CIDR at once, then waits until
// every one is Ready.
func (c *Cluster) createNodes(ctx context.Context, podCIDRs []string) error {
	client, err := kubernetes.NewForConfig(c.RESTConfig())
	if err != nil {
		return err
	}
	c.client = client
	for i, cidr := range podCIDRs {
		if _, err := client.CoreV1().Nodes().Create(ctx, NewNode(fmt.Sprintf("kwok-node-%d", i), cidr), metav1.CreateOptions{FieldManager: FieldManager}); err != nil {
			return fmt.Errorf("create node kwok-node-%d: %w", i, err)
		}
	}
	for i := range podCIDRs {
		if _, err := WaitNodeReady(ctx, client, fmt.Sprintf("kwok-node-%d", i)); err != nil {
			return err
		}
	}
	return nil
}

// startProcess starts a component with its output in logs/<name>.log and records it in
// the state file.
func (c *Cluster) startProcess(name, bin string, env []string, args ...string) (*process, error) {
	if bin == "" {
		return nil, fmt.Errorf("no binary for %s", name)
	}
	cmd := exec.Command(bin, args...)
	cmd.Dir = c.runDir
	cmd.Env = append(os.Environ(), env...)
	p, err := c.spawn(name, cmd, false)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.procs = append(c.procs, p)
	// /proc/<pid>/exe names the binary with symlinks resolved (a work tree's
	// .cache/cluster/bin may be a link into another tree's cache): record it so,
	// or the pid-reuse guard would take the component for another process.
	exe, err := filepath.EvalSymlinks(bin)
	if err != nil {
		exe = bin
	}
	c.state.Processes = append(c.state.Processes, StateProcess{Name: name, PID: cmd.Process.Pid, Exe: exe})
	return p, writeState(c.runDir, &c.state)
}

// spawn starts cmd with its output in logs/<name>.log and watches for its exit, which
// fails the cluster unless it is stopping or the exit is expected. A restart appends
// to the log, after a line that marks it, so the crashed run's output stays.
func (c *Cluster) spawn(name string, cmd *exec.Cmd, restart bool) (*process, error) {
	logPath := filepath.Join(c.runDir, "logs", name+".log")
	flag := os.O_TRUNC
	if restart {
		flag = os.O_APPEND
	}
	f, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|flag, 0o644)
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }() // the child has its own descriptor
	if restart {
		if _, err := fmt.Fprintf(f, "\n----- localcluster: restarted at %s -----\n", time.Now().Format(time.RFC3339Nano)); err != nil {
			return nil, err
		}
	}
	cmd.Stdout, cmd.Stderr = f, f
	if err := child.Start(cmd); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &process{name: name, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.done)
		if !c.stopping.Load() && !p.expectExit.Load() {
			c.fail(p.exitError())
		}
	}()
	return p, nil
}

// fail marks the cluster failed with err, unless it has failed already.
func (c *Cluster) fail(err error) {
	c.failOnce.Do(func() {
		c.failErr = err
		close(c.failed)
	})
}

// waitHealthy polls url until it answers 200 (with want in the body, if set), the
// process exits, or ctx ends.
func (c *Cluster) waitHealthy(ctx context.Context, p *process, url string, hc *http.Client, want string) error {
	err := poll.Until(ctx, time.Hour, func() (bool, error) { // bounded by ctx: Options.Timeout
		if p.exited() {
			err := p.exitError()
			if strings.Contains(err.Error(), "address already in use") {
				return false, poll.Stop(fmt.Errorf("%w: %w", errPortTaken, err))
			}
			return false, poll.Stop(err)
		}
		err := probe(ctx, hc, url, want)
		return err == nil, err
	})
	if err != nil && ctx.Err() != nil {
		return fmt.Errorf("%s not healthy at %s before the deadline: %w; tail of %s:\n%s", p.name, url, err, p.logPath, child.Tail(p.logPath, 25))
	}
	return err
}

func probe(ctx context.Context, hc *http.Client, url, want string) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer func() { _ = resp.Body.Close() }()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	if want != "" && !strings.Contains(string(body), want) {
		return fmt.Errorf("answer %q lacks %q", body, want)
	}
	return nil
}

func plainClient() *http.Client { return &http.Client{Transport: &http.Transport{Proxy: nil}} }

// insecureClient probes kube-controller-manager and kube-scheduler, whose serving
// certificates are self-signed at start (curl -k).
func insecureClient() *http.Client {
	return &http.Client{Transport: &http.Transport{
		Proxy:           nil,
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // self-signed health endpoints on 127.0.0.1
	}}
}

// adminClient probes the API server as the admin of rc (the cluster's restConfig).
func adminClient(rc *rest.Config) (*http.Client, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(rc.CAData) {
		return nil, errors.New("bad CA certificate")
	}
	cert, err := tls.X509KeyPair(rc.CertData, rc.KeyData)
	if err != nil {
		return nil, err
	}
	return &http.Client{Transport: &http.Transport{
		Proxy:           nil,
		TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
	}}, nil
}

// apiserverBind is the API server's bind address: 127.0.0.1, or with real
// nodes every address of the network namespace they run in (which has no
// way out): pods reach it on real-node-1's IP (PodKubeconfig).
func (c *Cluster) apiserverBind() string {
	if c.withReal {
		return "0.0.0.0"
	}
	return "127.0.0.1"
}

// WritePodKubeconfig writes to path an admin kubeconfig that works from
// inside a pod on a real node: the API server at real-node-1's IP, which its
// serving certificate names. For baselines that talk to the API server from
// a container (client-go leader election); hapod's apps never do.
func (c *Cluster) WritePodKubeconfig(path string) error {
	if !c.withReal {
		return errors.New("localcluster: pods reach the API server only on a cluster with real nodes")
	}
	rc := rest.CopyConfig(c.restConfig)
	rc.Host = "https://" + netplan.RealNodeIP(1).String() + ":" + strconv.Itoa(c.ports.apiserver)
	return writeKubeconfig(path, rc)
}

// writeKubeconfig writes an admin kubeconfig with the certificates embedded, so it can be
// copied elsewhere.
func writeKubeconfig(path string, rc *rest.Config) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["hapod-local"] = &clientcmdapi.Cluster{Server: rc.Host, CertificateAuthorityData: rc.CAData}
	cfg.AuthInfos["hapod-admin"] = &clientcmdapi.AuthInfo{ClientCertificateData: rc.CertData, ClientKeyData: rc.KeyData}
	cfg.Contexts["hapod-local"] = &clientcmdapi.Context{Cluster: "hapod-local", AuthInfo: "hapod-admin"}
	cfg.CurrentContext = "hapod-local"
	return clientcmd.WriteToFile(*cfg, path)
}

// FreePorts returns n distinct free TCP ports on 127.0.0.1: all are held open together,
// then released for the components (or any other child processes) to bind.
func FreePorts(n int) ([]int, error) {
	ls := make([]net.Listener, 0, n)
	defer func() {
		for _, l := range ls {
			_ = l.Close()
		}
	}()
	ps := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("find a free port: %w", err)
		}
		ls = append(ls, l)
		ps = append(ps, l.Addr().(*net.TCPAddr).Port)
	}
	return ps, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// Kubeconfig returns the path of the admin kubeconfig (certificates embedded).
func (c *Cluster) Kubeconfig() string { return c.kubeconfig }

// RESTConfig returns a copy of the admin client configuration.
func (c *Cluster) RESTConfig() *rest.Config { return rest.CopyConfig(c.restConfig) }

// RunDir returns the run directory, which Stop removes.
func (c *Cluster) RunDir() string { return c.runDir }

// Failed is closed when a component exits while the cluster is not being stopped;
// Err then says which and why.
func (c *Cluster) Failed() <-chan struct{} { return c.failed }

// Err returns why the cluster failed, or nil while it has not.
func (c *Cluster) Err() error {
	select {
	case <-c.failed:
		return c.failErr
	default:
		return nil
	}
}

// CreateNode creates a kwok node with the given pod CIDR and waits until it is Ready and
// untainted; see the package function [CreateNode].
func (c *Cluster) CreateNode(ctx context.Context, name, podCIDR string) error {
	_, err := CreateNode(ctx, c.client, name, podCIDR)
	return err
}

// Stop stops every component the cluster started, one at a time in reverse start order
// (kwok, kube-scheduler, kube-controller-manager, kube-apiserver, etcd: the apiserver
// hangs if etcd goes first), each with SIGTERM and SIGKILL after the grace period, then
// removes the run directory. It is idempotent.
func (c *Cluster) Stop() error {
	c.stopOnce.Do(func() { c.stopErr = c.stop() })
	return c.stopErr
}

func (c *Cluster) stop() error {
	c.stopping.Store(true)
	began := time.Now()
	c.mu.Lock()
	procs := append([]*process(nil), c.procs...)
	c.mu.Unlock()
	var errs []error
	for i := len(procs) - 1; i >= 0; i-- {
		p := procs[i]
		killed, err := p.stop(c.stopGrace)
		if err != nil {
			errs = append(errs, err)
		}
		if killed {
			c.log.Info("component did not stop on SIGTERM, killed it", "component", p.name, "grace", c.stopGrace.String())
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("stop local cluster: %w", errors.Join(errs...))
	}
	if !c.keepRunDir {
		if err := os.RemoveAll(c.runDir); err != nil {
			return fmt.Errorf("remove run dir: %w", err)
		}
	}
	c.log.Debug("local cluster stopped", "took", time.Since(began).String())
	return nil
}
