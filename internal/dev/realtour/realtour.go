package realtour

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/hapod/hapod/internal/config"
	"github.com/hapod/hapod/internal/controller"
	"github.com/hapod/hapod/internal/dev/clusterip"
	"github.com/hapod/hapod/internal/dev/ctrlproc"
	"github.com/hapod/hapod/internal/dev/netplan"
	"github.com/hapod/hapod/internal/dev/nftwatch"
	"github.com/hapod/hapod/internal/dev/observe"
	"github.com/hapod/hapod/internal/dev/poll"
	"github.com/hapod/hapod/internal/dev/realpod"
	"github.com/hapod/hapod/internal/dev/tour"
)

// FieldManager is the tour's field manager and user agent.
const FieldManager = "hapod-realtour"

// Options configures Run.
type Options struct {
	// Kubeconfig of a cluster with real nodes (localcluster.Options.RealNodes),
	// run from inside their network namespace (required).
	Kubeconfig string
	// ExampleDir holds the example's manifests (deploy/example; required).
	ExampleDir string
	// CRDFile is the HAGroup CRD (crdinstall.Path): the tour installs it,
	// gives each group an HAGroup and plays a planned switchover.
	CRDFile string
	// ControllerBin is the built hapod-controller (required).
	ControllerBin string
	// LogDir receives the controller's log, its records and nft's output
	// (required).
	LogDir string
	// Records is the host directory the apps write their role records to
	// (realpod.RecordsDir; required).
	Records string
	// Namespace is created for the example and deleted at the end
	// (default hapod-demo).
	Namespace string
	// InitDelay is the app's slow start (default 1s).
	InitDelay time.Duration
	// ControllerArgs are more flags for the controller.
	ControllerArgs []string
	// SceneTimeout bounds each wait of a scene (default 90s).
	SceneTimeout time.Duration
	// Out receives the progress and each scene's timeline; nil discards them.
	Out io.Writer
}

// run is one tour: what its groups share.
type run struct {
	o    Options
	cs   kubernetes.Interface
	rc   *rest.Config
	hg   client.Client // HAGroups (hagroup.go)
	cfg  config.Config
	nft  *nftwatch.Watch
	ctrl *ctrlproc.Controller
	// example is the seed's example (scenes a-e); file is the group whose
	// app knows hapod only by a role file (scenes f and g).
	example, file *group
}

// group is one group of pods the tour applies and watches: its own
// ReplicaSet and Service, watch, load and role records.
type group struct {
	plan    *plan
	records string // the apps' role records (a hostPath)
	obs     *observe.Observer[struct{}]
	load    *clusterip.Prober
	labels  *observe.SingleActive
	// killed is when the tour killed each pod's app: a dead app writes
	// nothing, so its death ends its role (realpod.Overlaps).
	killed map[string][]time.Time
}

// on is the run seen from one of its groups: the scenes' steps are its
// methods, so that each scene names the group it plays once.
type on struct {
	*run
	*group
}

func (r *run) say(format string, args ...any) { fmt.Fprintf(r.o.Out, "• "+format+"\n", args...) }

// Run plays the tour and returns each scene's outcome. An error means the
// tour could not be set up (or was interrupted). Whatever it started is
// stopped and its namespace deleted before it returns.
func Run(ctx context.Context, o Options) (res *Result, err error) {
	if o.Kubeconfig == "" || o.ExampleDir == "" || o.CRDFile == "" || o.ControllerBin == "" || o.LogDir == "" || o.Records == "" {
		return nil, errors.New("realtour: Kubeconfig, ExampleDir, CRDFile, ControllerBin, LogDir and Records are required")
	}
	if o.Namespace == "" {
		o.Namespace = tour.DefaultNamespace
	}
	if o.InitDelay == 0 {
		o.InitDelay = time.Second
	}
	if o.SceneTimeout == 0 {
		o.SceneTimeout = 90 * time.Second
	}
	if o.Out == nil {
		o.Out = io.Discard
	}
	r := &run{o: o, cfg: config.Default()}
	res = &Result{LogDir: o.LogDir}
	ex, err := tour.LoadExample(o.ExampleDir)
	if err != nil {
		return res, err
	}
	p, err := forRealNodes(ex, o.Namespace, o.Records, o.InitDelay, r.cfg)
	if err != nil {
		return res, err
	}
	r.example = &group{plan: p, records: o.Records, killed: map[string][]time.Time{}}
	// The file group's records have a directory of their own: each group
	// is checked for two actives apart (one of each is expected).
	fileRecords := filepath.Join(o.Records, fileGroup)
	if err := realpod.MakeRecordsDir(fileRecords); err != nil {
		return res, err
	}
	r.file = &group{plan: fileAppPlan(o.Namespace, fileRecords, r.cfg), records: fileRecords, killed: map[string][]time.Time{}}
	if err := os.MkdirAll(o.LogDir, 0o755); err != nil {
		return res, err
	}
	rc, err := clientcmd.BuildConfigFromFlags("", o.Kubeconfig)
	if err != nil {
		return res, fmt.Errorf("kubeconfig %s: %w", o.Kubeconfig, err)
	}
	rc.QPS, rc.Burst, rc.UserAgent = 100, 200, FieldManager
	if r.cs, err = kubernetes.NewForConfig(rc); err != nil {
		return res, err
	}
	r.rc = rc
	defer func() {
		if cerr := r.cleanup(context.WithoutCancel(ctx)); cerr != nil && err == nil {
			err = cerr
		}
	}()
	if err := r.setUp(ctx); err != nil {
		return res, err
	}
	res.Scenes = r.play(ctx)
	if ctx.Err() != nil {
		return res, fmt.Errorf("interrupted: %w", ctx.Err())
	}
	return res, nil
}

// setUp creates the namespace, starts the watches, nft's monitor and the
// controller. The example is applied by the first scene.
func (r *run) setUp(ctx context.Context) error {
	ns := r.o.Namespace
	nss := r.cs.CoreV1().Namespaces()
	if _, err := nss.Get(ctx, ns, metav1.GetOptions{}); err == nil {
		r.say("namespace %s is left from an earlier run: deleting it", ns)
		if err := r.deleteNamespace(ctx); err != nil {
			return err
		}
	}
	nsObj := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: map[string]string{"app.kubernetes.io/managed-by": FieldManager}}}
	if _, err := nss.Create(ctx, nsObj, metav1.CreateOptions{FieldManager: FieldManager}); err != nil {
		return fmt.Errorf("create namespace %s: %w", ns, err)
	}
	// Pods are refused until the namespace's default ServiceAccount exists.
	if err := poll.Until(ctx, 30*time.Second, func() (bool, error) {
		_, err := r.cs.CoreV1().ServiceAccounts(ns).Get(ctx, "default", metav1.GetOptions{})
		return err == nil, nil
	}); err != nil {
		return fmt.Errorf("namespace %s: no default ServiceAccount: %w", ns, err)
	}
	for _, g := range r.groups() {
		sel := metav1.FormatLabelSelector(g.plan.rs.Spec.Selector)
		g.labels = &observe.SingleActive{Label: r.cfg.RoleLabel, Value: r.cfg.ActiveValue}
		var err error
		g.obs, err = observe.Start[struct{}](ctx, r.cs, observe.Config{
			Namespace: ns, PodSelector: sel, Service: g.plan.svc.Name, EventsFrom: controller.FieldOwner,
			RoleLabel: r.cfg.RoleLabel, ActiveValue: r.cfg.ActiveValue, OnPod: g.labels.See,
		})
		if err != nil {
			return err
		}
	}
	if err := r.haGroups(ctx); err != nil {
		return err
	}
	var err error
	if r.nft, err = nftwatch.Start(ctx); err != nil {
		return err
	}
	logPath := filepath.Join(r.o.LogDir, "controller.log")
	args := append([]string{
		// Both groups: the group label (app) tells them apart.
		"-selector", fmt.Sprintf("%s in (%s,%s)", r.cfg.GroupLabel, r.example.plan.group, r.file.plan.group),
		// Role messages go to the real pods' IPs on the CNI bridges, and
		// nowhere else.
		"-notify-cidrs", netplan.RealNodePodsAll.String(), "-notify-bind-address", "0.0.0.0:0",
	}, r.o.ControllerArgs...)
	if r.ctrl, err = ctrlproc.Start(ctx, ctrlproc.Options{
		Bin: r.o.ControllerBin, Kubeconfig: r.o.Kubeconfig, Namespaces: ns, LogPath: logPath, Args: args,
	}); err != nil {
		return err
	}
	r.say("hapod-controller running (-namespaces %s %s); its log: %s", ns, strings.Join(args, " "), logPath)
	return nil
}

// cleanup stops the controller first (so it does not react to the
// teardown), then the load, nft and the watches, and deletes the namespace.
func (r *run) cleanup(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if r.ctrl != nil {
		r.ctrl.Stop()
	}
	for _, g := range r.groups() {
		if g.load != nil {
			g.load.Stop()
		}
	}
	if r.nft != nil {
		r.nft.Stop()
		r.writeNftLog()
	}
	for _, g := range r.groups() {
		if g.obs != nil {
			g.obs.Stop()
		}
	}
	if r.cs == nil {
		return nil
	}
	if err := r.deleteNamespace(ctx); err != nil {
		return err
	}
	r.say("cleaned up: controller stopped, namespace %s and its pods deleted", r.o.Namespace)
	return nil
}

// writeNftLog keeps what nft printed, for the reader who wants to see the
// rules kube-proxy wrote.
func (r *run) writeNftLog() {
	f, err := os.Create(filepath.Join(r.o.LogDir, "nft-monitor.log"))
	if err != nil {
		return
	}
	defer func() { _ = f.Close() }()
	for _, l := range r.nft.Lines() {
		fmt.Fprintf(f, "%s %s\n", l.At.Format(time.RFC3339Nano), l.Text)
	}
}

func (r *run) deleteNamespace(ctx context.Context) error {
	nss := r.cs.CoreV1().Namespaces()
	if err := nss.Delete(ctx, r.o.Namespace, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete namespace %s: %w", r.o.Namespace, err)
	}
	return poll.Until(ctx, 2*time.Minute, func() (bool, error) {
		_, err := nss.Get(ctx, r.o.Namespace, metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	})
}

func (r *run) groups() []*group { return []*group{r.example, r.file} }

// checkSingleActive adds a problem to s for two pods of the group labelled
// active or two of its apps holding the role at once (from their own
// records) so far.
func (g *group) checkSingleActive(s *Scene) {
	if v := g.labels.Violation(); v != "" {
		s.problem("%s: %s", g.plan.group, v)
	}
	overlaps, same := realpod.Overlaps(realpod.Records(g.records), g.killed, time.Now())
	for _, o := range overlaps {
		s.problem("%s", o.String())
	}
	for _, x := range same {
		s.problem("%s", x)
	}
}
