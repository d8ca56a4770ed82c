package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2/textlogger"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/hapod/hapod/internal/config"
	"github.com/hapod/hapod/internal/controller"
	"github.com/hapod/hapod/internal/dev/child"
	"github.com/hapod/hapod/internal/dev/localcluster"
	"github.com/hapod/hapod/internal/notify"
	"github.com/hapod/hapod/internal/record"
)

// childEnv, set to "controller", makes a bench binary (the command or the
// test binary) run the controller instead of itself.
const childEnv = "HAPOD_BENCH_CHILD"

// MaybeRunController runs the controller and exits if this process was
// started by the bench as its controller child; otherwise it returns at
// once. Call it first thing in main (and in TestMain).
func MaybeRunController() {
	if os.Getenv(childEnv) != "controller" {
		return
	}
	if err := runController(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "hapod-bench controller:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// promotionLine is one line of the child's stdout.
type promotionLine struct {
	Event    string    `json:"event"` // "ready" or "promotion"
	Group    string    `json:"group,omitempty"`
	Pod      string    `json:"pod,omitempty"`
	Epoch    uint64    `json:"epoch,omitempty"`
	Reason   string    `json:"reason,omitempty"`
	Replaced string    `json:"replaced,omitempty"`
	Seen     time.Time `json:"seen"`
	Labelled time.Time `json:"labelled"`
	Acked    time.Time `json:"acked"`
	Status   string    `json:"status,omitempty"`
}

// runController is cmd/hapod-controller's run, minus leader election and
// probes, plus the OnPromotion hook and pprof. Keep the manager options in
// step with cmd/hapod-controller/main.go: the numbers are only worth what
// this resemblance is.
func runController(args []string) error {
	cfg := config.Default()
	fs := flag.NewFlagSet("hapod-bench controller", flag.ContinueOnError)
	cfg.Bind(fs)
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig file")
	metricsAddr := fs.String("metrics-bind-address", "0", "address of /metrics")
	pprofAddr := fs.String("pprof-bind-address", "0", "address of /debug/pprof")
	notifyAddr := fs.String("notify-bind-address", "127.0.0.1:0", "local UDP address role messages are sent from")
	qps := fs.Float64("kube-api-qps", 500, "client-side QPS limit")
	burst := fs.Int("kube-api-burst", 1000, "client-side burst")
	logCfg := textlogger.NewConfig()
	logCfg.AddFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	ctrl.SetLogger(textlogger.NewLogger(logCfg))
	rc, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		return err
	}
	rc.QPS, rc.Burst = float32(*qps), *burst
	rc.UserAgent = "hapod-controller"

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	// The parent holds our stdin open; EOF means it is gone.
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		stop()
	}()

	opts, err := controller.ManagerOptions(cfg)
	if err != nil {
		return err
	}
	opts.Metrics = metricsserver.Options{BindAddress: *metricsAddr}
	opts.HealthProbeBindAddress = "0"
	opts.PprofBindAddress = *pprofAddr
	mgr, err := ctrl.NewManager(rc, opts)
	if err != nil {
		return fmt.Errorf("creating the manager: %w", err)
	}
	n, err := notify.New(notify.Config{ListenAddr: *notifyAddr, Deadline: cfg.NotifyDeadline, Registerer: metrics.Registry})
	if err != nil {
		return err
	}
	defer func() { _ = n.Close() }()

	out := &lineWriter{w: bufio.NewWriter(os.Stdout)}
	r := controller.New(cfg, controller.Deps{
		Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(),
		Recorder: mgr.GetEventRecorder("hapod-controller"),
		Notifier: n, Metrics: controller.NewMetrics(metrics.Registry),
		OnPromotion: func(p record.Record) {
			out.write(promotionLine{
				Event: "promotion", Group: p.Group, Pod: p.Pod, Epoch: p.Epoch,
				Reason: p.Reason, Replaced: p.Replaced,
				Seen: p.Seen, Labelled: p.Labelled, Acked: p.Acked, Status: p.Status,
			})
		},
	})
	if err := r.SetupWithManager(mgr); err != nil {
		return err
	}
	go func() {
		if mgr.GetCache().WaitForCacheSync(ctx) {
			out.write(promotionLine{Event: "ready"})
		}
	}()
	return mgr.Start(ctx)
}

// lineWriter writes JSON lines from many goroutines.
type lineWriter struct {
	mu sync.Mutex
	w  *bufio.Writer
}

func (l *lineWriter) write(v promotionLine) {
	b, err := json.Marshal(v)
	if err != nil {
		return // cannot happen for this type
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	_, _ = l.w.Write(append(b, '\n'))
	_ = l.w.Flush()
}

// controllerOptions configures one controller child.
type controllerOptions struct {
	Exe        string // the bench binary to re-execute
	Kubeconfig string
	Namespace  string
	RolePort   int
	Workers    int
	QPS        float64
	Burst      int
	LogPath    string // the child's stderr
}

// args are the flags the child gets, named as cmd/hapod-controller names
// them.
func (o controllerOptions) args(metricsAddr, pprofAddr string) []string {
	return []string{
		"-kubeconfig", o.Kubeconfig,
		"-namespaces", o.Namespace,
		"-selector", benchLabel + "=true",
		"-group-label", "app",
		"-role-port", strconv.Itoa(o.RolePort),
		"-notify-cidrs", "127.0.0.0/8",
		"-workers", strconv.Itoa(o.Workers),
		"-kube-api-qps", strconv.FormatFloat(o.QPS, 'f', -1, 64),
		"-kube-api-burst", strconv.Itoa(o.Burst),
		"-metrics-bind-address", metricsAddr,
		"-pprof-bind-address", pprofAddr,
	}
}

// controllerProc is a running controller child.
type controllerProc struct {
	cmd        *exec.Cmd
	stdin      io.Closer
	metricsURL string
	pprofURL   string
	promos     *promotions
	ready      chan struct{}
	done       chan struct{}
	waitErr    error
	logPath    string
}

// startController starts the child and waits until its cache is synced.
func startController(ctx context.Context, o controllerOptions) (*controllerProc, error) {
	ports, err := localcluster.FreePorts(2)
	if err != nil {
		return nil, err
	}
	metricsAddr := "127.0.0.1:" + strconv.Itoa(ports[0])
	pprofAddr := "127.0.0.1:" + strconv.Itoa(ports[1])
	logf, err := os.Create(o.LogPath)
	if err != nil {
		return nil, err
	}
	defer func() { _ = logf.Close() }() // the child has its own descriptor
	cmd := exec.Command(o.Exe, o.args(metricsAddr, pprofAddr)...)
	cmd.Env = append(os.Environ(), childEnv+"=controller")
	cmd.Stderr = logf
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := child.Start(cmd); err != nil {
		return nil, fmt.Errorf("start controller: %w", err)
	}
	c := &controllerProc{
		cmd: cmd, stdin: stdin,
		metricsURL: "http://" + metricsAddr + "/metrics",
		pprofURL:   "http://" + pprofAddr + "/debug/pprof",
		promos:     newPromotions(),
		ready:      make(chan struct{}),
		done:       make(chan struct{}),
		logPath:    o.LogPath,
	}
	go c.read(stdout)
	go func() {
		c.waitErr = cmd.Wait()
		close(c.done)
	}()
	select {
	case <-c.ready:
		return c, nil
	case <-c.done:
		return nil, fmt.Errorf("controller exited at start (%v); log %s:\n%s", c.waitErr, o.LogPath, tail(o.LogPath))
	case <-time.After(60 * time.Second):
		_ = c.Stop()
		return nil, fmt.Errorf("controller not ready within 60s; log %s", o.LogPath)
	case <-ctx.Done():
		_ = c.Stop()
		return nil, ctx.Err()
	}
}

func (c *controllerProc) read(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	readyOnce := sync.Once{}
	for sc.Scan() {
		var l promotionLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			continue
		}
		switch l.Event {
		case "ready":
			readyOnce.Do(func() { close(c.ready) })
		case "promotion":
			c.promos.add(l)
		}
	}
}

// Pid is the child's process id.
func (c *controllerProc) Pid() int { return c.cmd.Process.Pid }

// Stop ends the child (SIGTERM, then SIGKILL after 10 s) and waits for it.
func (c *controllerProc) Stop() error {
	select {
	case <-c.done:
	default:
		child.Terminate(c.Pid(), c.done, 10*time.Second)
	}
	_ = c.stdin.Close()
	return nil
}

// Exited reports whether the child has ended, and why.
func (c *controllerProc) Exited() (bool, error) {
	select {
	case <-c.done:
		return true, fmt.Errorf("controller exited: %v; log %s:\n%s", c.waitErr, c.logPath, tail(c.logPath))
	default:
		return false, nil
	}
}

// apiRequests returns rest_client_requests_total from the child's /metrics,
// summed over codes and hosts, by method.
func (c *controllerProc) apiRequests(ctx context.Context) (map[string]float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.metricsURL, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: %s", c.metricsURL, resp.Status)
	}
	return parseRequests(resp.Body)
}

// parseRequests reads the Prometheus text format, keeping the
// rest_client_requests_total samples.
func parseRequests(r io.Reader) (map[string]float64, error) {
	out := map[string]float64{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	const name = "rest_client_requests_total{"
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name) {
			continue
		}
		end := strings.LastIndexByte(line, '}')
		if end < 0 {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(line[end+1:]), 64)
		if err != nil {
			continue
		}
		method := "?"
		for _, kv := range strings.Split(line[len(name):end], ",") {
			if k, val, ok := strings.Cut(kv, "="); ok && k == "method" {
				method = strings.Trim(val, `"`)
			}
		}
		out[method] += v
	}
	return out, sc.Err()
}

// cpuProfile fetches a CPU profile of the given length into path.
func (c *controllerProc) cpuProfile(ctx context.Context, seconds int, path string) error {
	url := fmt.Sprintf("%s/profile?seconds=%d", c.pprofURL, seconds)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := (&http.Client{Timeout: time.Duration(seconds+30) * time.Second}).Do(req)
	if err != nil {
		return err
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", url, resp.Status)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		_ = f.Close()
		return err
	}
	return f.Close()
}

// tail returns the last lines of a log file, for error messages.
func tail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-20):], "\n")
}

// promotions collects the child's promotion records by pod name.
type promotions struct {
	mu    sync.Mutex
	byPod map[string]promotionLine
	board board
}

func newPromotions() *promotions { return &promotions{byPod: map[string]promotionLine{}} }

func (p *promotions) add(l promotionLine) {
	p.mu.Lock()
	p.byPod[l.Pod] = l
	p.mu.Unlock()
	p.board.bump()
}

// get returns the latest promotion of pod, if any.
func (p *promotions) get(pod string) (promotionLine, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	l, ok := p.byPod[pod]
	return l, ok
}

var errTimeout = errors.New("timed out")
