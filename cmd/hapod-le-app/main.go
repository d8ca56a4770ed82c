// Command hapod-le-app is the usual alternative to hapod, for the benchmark's
// baselines on real nodes: an app whose replicas elect their leader with
// client-go leader election on a Lease. The leader labels its own pod
// role=active (the Service selects it) and its peers role=standby, and
// answers requests; the others answer 503. Development only: it is not
// shipped.
//
// Configuration is by environment, as a pod sets it:
//
//	POD_NAME, POD_NAMESPACE   the pod (required)
//	KUBECONFIG                the API server to elect on (required)
//	LEASE                     the Lease's name (required)
//	PEERS                     label selector of the replicas (required)
//	LEASE_DURATION, RENEW_DEADLINE, RETRY_PERIOD   client-go's timings (15s, 10s, 2s)
//	INIT_DELAY                slow start before /readyz answers 200 (0)
//	ROLE_RECORDS              file to append its role changes to, one JSON per line
//	HTTP_ADDR                 where it serves (:8080)
//
// It exits 1 when it loses the leadership (client-go's advice: a leader that
// lost its Lease cannot know what it missed), and 0 on SIGTERM.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"

	"github.com/hapod/hapod/internal/dev/rolerecord"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := run(ctx, os.Getenv, log); err != nil {
		log.Error("hapod-le-app", "err", err)
		os.Exit(1)
	}
}

// config is the environment, parsed.
type config struct {
	pod, ns, kubeconfig, lease, peers, records, addr string
	leaseDuration, renewDeadline, retryPeriod        time.Duration
	initDelay                                        time.Duration
}

func parse(getenv func(string) string) (config, error) {
	c := config{
		pod: getenv("POD_NAME"), ns: getenv("POD_NAMESPACE"), kubeconfig: getenv("KUBECONFIG"),
		lease: getenv("LEASE"), peers: getenv("PEERS"), records: getenv("ROLE_RECORDS"), addr: getenv("HTTP_ADDR"),
		leaseDuration: 15 * time.Second, renewDeadline: 10 * time.Second, retryPeriod: 2 * time.Second,
	}
	if c.addr == "" {
		c.addr = ":8080"
	}
	if c.pod == "" || c.ns == "" || c.kubeconfig == "" || c.lease == "" || c.peers == "" {
		return c, errors.New("POD_NAME, POD_NAMESPACE, KUBECONFIG, LEASE and PEERS are required")
	}
	for name, p := range map[string]*time.Duration{
		"LEASE_DURATION": &c.leaseDuration, "RENEW_DEADLINE": &c.renewDeadline, "RETRY_PERIOD": &c.retryPeriod, "INIT_DELAY": &c.initDelay,
	} {
		if v := getenv(name); v != "" {
			d, err := time.ParseDuration(v)
			if err != nil || d < 0 {
				return c, fmt.Errorf("%s=%q: want a duration such as 2s", name, v)
			}
			*p = d
		}
	}
	return c, nil
}

func run(ctx context.Context, getenv func(string) string, log *slog.Logger) error {
	c, err := parse(getenv)
	if err != nil {
		return err
	}
	rc, err := clientcmd.BuildConfigFromFlags("", c.kubeconfig)
	if err != nil {
		return err
	}
	// Above what 200 ms renewals need: client-go's default 5/s would
	// throttle the aggressive timings' own writes.
	rc.QPS, rc.Burst, rc.UserAgent = 50, 100, "hapod-le-app/"+c.pod
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return err
	}
	var records *rolerecord.Writer
	if c.records != "" {
		f, err := os.OpenFile(c.records, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			return err
		}
		defer func() { _ = f.Close() }()
		records = rolerecord.NewWriter(f)
	}
	record := func(role string, epoch uint64) {
		if records != nil {
			if err := records.Write(rolerecord.Change{At: time.Now(), Pod: c.pod, Role: role, Epoch: epoch}); err != nil {
				log.Error("role record", "err", err)
			}
		}
	}
	var leading, ready atomic.Bool
	srv := &http.Server{Addr: c.addr, Handler: handler(c.pod, &leading, &ready), ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("http", "err", err)
			os.Exit(1)
		}
	}()
	defer func() { _ = srv.Close() }()
	record("standby", 0)
	select {
	case <-time.After(c.initDelay):
	case <-ctx.Done():
		return nil
	}
	ready.Store(true)

	lost := make(chan struct{})
	le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
		Lock: &resourcelock.LeaseLock{
			LeaseMeta: metav1.ObjectMeta{Namespace: c.ns, Name: c.lease},
			Client:    cs.CoordinationV1(),
			// One identity per process, as controller-runtime makes it
			// (hostname_uuid): a process restarted in place must not take
			// its dead predecessor's Lease over as its own.
			LockConfig: resourcelock.ResourceLockConfig{Identity: c.pod + "_" + strconv.FormatUint(rand.Uint64(), 36)},
		},
		LeaseDuration: c.leaseDuration, RenewDeadline: c.renewDeadline, RetryPeriod: c.retryPeriod,
		Name: c.lease,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: func(ctx context.Context) {
				// The epoch is the Lease's transition count: one per leader.
				var epoch uint64
				if l, err := cs.CoordinationV1().Leases(c.ns).Get(ctx, c.lease, metav1.GetOptions{}); err == nil && l.Spec.LeaseTransitions != nil {
					epoch = uint64(*l.Spec.LeaseTransitions) + 1
				}
				leading.Store(true)
				record("active", epoch)
				log.Info("leading", "pod", c.pod, "epoch", epoch)
				if err := relabel(ctx, cs, c); err != nil {
					log.Error("relabel", "err", err)
				}
			},
			OnStoppedLeading: func() {
				if leading.Swap(false) {
					record("standby", 0)
				}
				close(lost)
			},
		},
	})
	if err != nil {
		return err
	}
	le.Run(ctx) // returns when ctx ends or the leadership is lost
	select {
	case <-ctx.Done():
		record(rolerecord.Stopped, 0)
		return nil
	case <-lost:
		return errors.New("lost the leadership")
	}
}

// relabel labels this pod role=active, then every peer role=standby.
func relabel(ctx context.Context, cs kubernetes.Interface, c config) error {
	patch := func(name, role string) error {
		body := fmt.Sprintf(`{"metadata":{"labels":{"role":%q}}}`, role)
		_, err := cs.CoreV1().Pods(c.ns).Patch(ctx, name, types.MergePatchType, []byte(body), metav1.PatchOptions{FieldManager: "hapod-le-app"})
		return err
	}
	if err := patch(c.pod, "active"); err != nil {
		return err
	}
	peers, err := cs.CoreV1().Pods(c.ns).List(ctx, metav1.ListOptions{LabelSelector: c.peers})
	if err != nil {
		return err
	}
	var errs []error
	for _, p := range peers.Items {
		if p.Name != c.pod && p.Labels["role"] != "standby" {
			errs = append(errs, patch(p.Name, "standby"))
		}
	}
	return errors.Join(errs...)
}

// handler answers / with the pod's name: 200 while leading, 503 otherwise
// (the shape hapod-demo answers with), and /readyz once started.
func handler(pod string, leading, ready *atomic.Bool) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !ready.Load() {
			http.Error(w, "starting", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok"))
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok")) })
	mux.HandleFunc("GET /", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		status, role := http.StatusServiceUnavailable, "standby"
		if leading.Load() {
			status, role = http.StatusOK, "active"
		}
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(map[string]string{"pod": pod, "role": role})
	})
	return mux
}
