// Command hapod-controller keeps exactly one pod of each group active and
// fails over to a standby within milliseconds. See the README for flags.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2/textlogger"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/hapod/hapod/internal/config"
	"github.com/hapod/hapod/internal/controller"
	"github.com/hapod/hapod/internal/notify"
	"github.com/hapod/hapod/internal/record"
	"github.com/hapod/hapod/internal/rolekey"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "hapod-controller:", err)
		os.Exit(1)
	}
}

type flags struct {
	cfg           config.Config
	kubeconfig    string
	metricsAddr   string
	probeAddr     string
	pprofAddr     string
	records       string
	notifyAddr    string
	leaderElect   bool
	leaderNS      string
	leaseDuration time.Duration
	renewDeadline time.Duration
	retryPeriod   time.Duration
	qps           float64
	burst         int
	log           *textlogger.Config
	// printGroupKeys, if set, is a group whose subkeys are printed (for
	// its pods' Secret) instead of running.
	printGroupKeys string
}

func parseFlags(args []string) (*flags, error) {
	f := &flags{cfg: config.Default()}
	fs := flag.NewFlagSet("hapod-controller", flag.ContinueOnError)
	f.cfg.Bind(fs)
	fs.StringVar(&f.kubeconfig, "kubeconfig", "", "kubeconfig file (default: in-cluster config, then $KUBECONFIG)")
	fs.StringVar(&f.metricsAddr, "metrics-bind-address", ":8080", "address of the Prometheus /metrics endpoint (0 disables)")
	fs.StringVar(&f.probeAddr, "health-probe-bind-address", ":8081", "address of /healthz and /readyz")
	fs.StringVar(&f.pprofAddr, "pprof-bind-address", "0", "address of /debug/pprof (0 disables)")
	fs.StringVar(&f.records, "failover-records", "", "append one JSON line per promotion (timings, epoch, reason; see internal/record) to this file")
	fs.StringVar(&f.notifyAddr, "notify-bind-address", "0.0.0.0:0", "local UDP address role messages are sent from")
	fs.BoolVar(&f.leaderElect, "leader-elect", false, "elect a leader among controller replicas (use with more than one replica)")
	fs.StringVar(&f.leaderNS, "leader-election-namespace", "", "namespace of the leader-election Lease (default: the pod's namespace)")
	fs.DurationVar(&f.leaseDuration, "leader-elect-lease-duration", 15*time.Second, "leader-election lease duration")
	fs.DurationVar(&f.renewDeadline, "leader-elect-renew-deadline", 10*time.Second, "leader-election renew deadline")
	fs.DurationVar(&f.retryPeriod, "leader-elect-retry-period", 2*time.Second, "leader-election retry period")
	fs.Float64Var(&f.qps, "kube-api-qps", 500, "client-side QPS limit to the API server (a mass failover writes 2-3 times per group)")
	fs.IntVar(&f.burst, "kube-api-burst", 1000, "client-side burst to the API server")
	fs.StringVar(&f.printGroupKeys, "print-group-keys", "", "print the role-message subkeys of this group (namespace/name) derived from -role-key-dir, as lines for kubectl create secret generic --from-env-file, and exit")
	f.log = textlogger.NewConfig()
	f.log.AddFlags(fs)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %v", fs.Args())
	}
	if err := f.cfg.Validate(); err != nil {
		return nil, err
	}
	for _, a := range []struct{ flag, addr string }{{"metrics-bind-address", f.metricsAddr}, {"health-probe-bind-address", f.probeAddr}, {"pprof-bind-address", f.pprofAddr}, {"notify-bind-address", f.notifyAddr}} {
		if a.addr == "0" {
			continue
		}
		if _, port, err := net.SplitHostPort(a.addr); err != nil {
			return nil, fmt.Errorf("-%s: %w", a.flag, err)
		} else if _, err := strconv.ParseUint(port, 10, 16); err != nil {
			return nil, fmt.Errorf("-%s: bad port %q", a.flag, port)
		}
	}
	return f, nil
}

func restConfig(path string) (*rest.Config, error) {
	if path == "" {
		if c, err := rest.InClusterConfig(); err == nil {
			return c, nil
		}
	}
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = path
	c, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{}).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("no usable kubeconfig (set -kubeconfig or KUBECONFIG): %w", err)
	}
	return c, nil
}

func run() error {
	f, err := parseFlags(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	var keys *rolekey.Source
	if f.cfg.RoleKeyDir != "" {
		if keys, err = rolekey.Open(f.cfg.RoleKeyDir, 0, 0); err != nil {
			return fmt.Errorf("-role-key-dir: %w", err)
		}
	}
	if f.printGroupKeys != "" {
		return printGroupKeys(os.Stdout, keys, f.printGroupKeys)
	}
	ctrl.SetLogger(textlogger.NewLogger(f.log))
	rc, err := restConfig(f.kubeconfig)
	if err != nil {
		return err
	}
	rc.QPS, rc.Burst = float32(f.qps), f.burst
	rc.UserAgent = "hapod-controller"

	ctx := ctrl.SetupSignalHandler()
	if err := checkAPI(ctx, rc, f.cfg.Namespaces); err != nil {
		return err
	}
	mgr, gate, err := newManager(rc, f)
	if err != nil {
		return err
	}
	if ring := keys.Ring(time.Now()); ring.Empty() {
		ctrl.Log.Info("WARNING: role messages are not authenticated: anything that can reach a pod's role port can set its role; set -role-key-dir (README, Authenticated role messages)",
			"roleKeyDir", f.cfg.RoleKeyDir)
	} else {
		ctrl.Log.Info("Role messages are authenticated", "roleKeyDir", f.cfg.RoleKeyDir, "keyIDs", ring.IDs(), "current", ring.Current())
	}
	n, err := notify.New(notify.Config{
		ListenAddr: f.notifyAddr, Deadline: f.cfg.NotifyDeadline, Registerer: metrics.Registry,
		Keys: keys,
	})
	if err != nil {
		return fmt.Errorf("-notify-bind-address: %w", err)
	}
	defer n.Close()
	deps := controller.Deps{
		Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(),
		Recorder: mgr.GetEventRecorder("hapod-controller"),
		Notifier: n, Metrics: controller.NewMetrics(metrics.Registry),
		Leader: gate,
	}
	if f.records != "" {
		w, c, err := record.Create(f.records)
		if err != nil {
			return fmt.Errorf("-failover-records: %w", err)
		}
		defer func() { _ = c.Close() }()
		deps.OnPromotion = func(rec record.Record) {
			if err := w.Write(rec); err != nil {
				ctrl.Log.Error(err, "Failover record not written", "group", rec.Group, "pod", rec.Pod)
			}
		}
	}
	if err := controller.New(f.cfg, deps).SetupWithManager(mgr); err != nil {
		return fmt.Errorf("setting up the controller: %w", err)
	}
	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		return err
	}
	if err := mgr.AddReadyzCheck("readyz", func(req *http.Request) error {
		// Ready once the pod cache is synced: before that the controller
		// would decide on a partial view.
		if !mgr.GetCache().WaitForCacheSync(req.Context()) {
			return errors.New("cache not synced")
		}
		return nil
	}); err != nil {
		return err
	}
	if keys != nil {
		go watchKeys(ctx, keys, rolekey.DefaultPoll)
	}
	ctrl.Log.Info("Starting", "selector", f.cfg.Selector, "groupLabel", f.cfg.GroupLabel,
		"roleLabel", f.cfg.RoleLabel, "rolePort", f.cfg.RolePort, "namespaces", f.cfg.Namespaces)
	return mgr.Start(ctx)
}

// watchKeys logs every change of the key directory and every failure to
// read it (the keys in use are kept then), so that an operator rotating
// keys sees each step taken, or why not.
func watchKeys(ctx context.Context, keys *rolekey.Source, every time.Duration) {
	last, lastErr := keys.Ring(time.Now()), ""
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		r := keys.Ring(time.Now())
		if r != last {
			ctrl.Log.Info("Role keys reloaded", "roleKeyDir", keys.Dir(), "keyIDs", r.IDs(), "current", r.Current())
			last = r
		}
		if err := keys.Err(); err != nil && err.Error() != lastErr {
			ctrl.Log.Error(err, "Role keys not reloaded; keeping the keys in use", "roleKeyDir", keys.Dir())
			lastErr = err.Error()
		} else if err == nil {
			lastErr = ""
		}
	}
}

// printGroupKeys writes group's subkeys, one "id=base64" line each and
// the current key's id, the format of kubectl's --from-env-file: the
// Secret the group's pods mount (role.Config.KeyDir).
func printGroupKeys(w io.Writer, keys *rolekey.Source, group string) error {
	if keys == nil || keys.Ring(time.Now()).Empty() {
		return errors.New("-print-group-keys: needs -role-key-dir with at least one key")
	}
	if ns, name, ok := strings.Cut(group, "/"); !ok || ns == "" || name == "" {
		return fmt.Errorf("-print-group-keys: %q is not namespace/name", group)
	}
	sub := keys.Ring(time.Now()).ForGroup(group)
	for _, kid := range sub.IDs() {
		k, _ := sub.Key(kid)
		if _, err := fmt.Fprintf(w, "%s=%s\n", kid, rolekey.Encode(k)); err != nil {
			return err
		}
	}
	_, err := fmt.Fprintf(w, "%s=%s\n", rolekey.CurrentFile, sub.Current())
	return err
}

// checkAPI fails fast, with a plain message, when the kubeconfig does not
// reach a working API server (instead of retrying inside informers). With
// -namespaces it lists in the first of them, not cluster-wide: a
// namespace-scoped install (deploy/namespaced) may list pods only there.
func checkAPI(ctx context.Context, rc *rest.Config, namespaces []string) error {
	c, err := client.New(rc, client.Options{})
	if err != nil {
		return fmt.Errorf("kubeconfig does not work: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	opts := []client.ListOption{client.Limit(1)}
	if len(namespaces) > 0 {
		opts = append(opts, client.InNamespace(namespaces[0]))
	}
	var pods corev1.PodList
	if err := c.List(ctx, &pods, opts...); err != nil {
		return fmt.Errorf("cannot list pods with this kubeconfig (server %s): %w", rc.Host, err)
	}
	return nil
}

// newManager builds the manager. With leader election, its lock is
// wrapped by the returned gate, which the reconciler checks before every
// write and role message (nil without leader election: always open).
func newManager(rc *rest.Config, f *flags) (manager.Manager, *controller.LeaderGate, error) {
	opts, err := controller.ManagerOptions(f.cfg)
	if err != nil {
		return nil, nil, err
	}
	opts.Metrics = metricsserver.Options{BindAddress: f.metricsAddr}
	opts.HealthProbeBindAddress = f.probeAddr
	opts.PprofBindAddress = f.pprofAddr
	opts.LeaderElection = f.leaderElect
	opts.LeaderElectionID = "hapod-controller"
	opts.LeaderElectionNamespace = f.leaderNS
	opts.LeaderElectionReleaseOnCancel = true
	opts.LeaseDuration, opts.RenewDeadline, opts.RetryPeriod = &f.leaseDuration, &f.renewDeadline, &f.retryPeriod
	var gate *controller.LeaderGate
	if f.leaderElect {
		gate = controller.NewLeaderGate(f.leaseDuration)
		lock, err := controller.LeaderLock(rc, f.leaderNS, opts.LeaderElectionID, f.renewDeadline, gate)
		if err != nil {
			return nil, nil, fmt.Errorf("leader election: %w", err)
		}
		opts.LeaderElectionResourceLockInterface = lock
	}
	mgr, err := ctrl.NewManager(rc, opts)
	if err != nil {
		return nil, nil, fmt.Errorf("creating the manager: %w", err)
	}
	return mgr, gate, nil
}
