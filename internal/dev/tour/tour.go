package tour

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"

	"github.com/hapod/hapod/internal/config"
	"github.com/hapod/hapod/internal/dev/appkubelet"
	"github.com/hapod/hapod/internal/dev/child"
	"github.com/hapod/hapod/internal/dev/ctrlproc"
	"github.com/hapod/hapod/internal/dev/localcluster"
	"github.com/hapod/hapod/internal/dev/netplan"
	"github.com/hapod/hapod/internal/dev/poll"
	"github.com/hapod/hapod/pkg/role"
)

// Defaults of Options.
const (
	DefaultNamespace = "hapod-demo"
	DefaultNode      = "hapod-tour"
)

var (
	// DefaultPodCIDR is TEST-NET-2 (RFC 5737): addresses the API server accepts in
	// EndpointSlices, used as API data only.
	DefaultPodCIDR = netplan.TestNet2.String()
	// DefaultLoopback is where the pods' processes listen, one address each.
	DefaultLoopback = netplan.TourDemo
)

// Options configures Run.
type Options struct {
	// Kubeconfig of the cluster (required); the controller process gets it too.
	Kubeconfig string
	// ExampleDir holds the example's manifests (deploy/example; required).
	ExampleDir string
	// ControllerBin and DemoBin are the built hapod-controller and hapod-demo (required).
	ControllerBin, DemoBin string
	// LogDir receives the controller's log and one log per pod process (required).
	LogDir string

	// Namespace, Node and PodCIDR: where the example goes; the tour creates the
	// namespace and the kwok node and deletes both at the end.
	Namespace, Node, PodCIDR string
	// Loopback is the prefix the pods' processes get their addresses from.
	Loopback netip.Prefix
	// InitDelay is the demo app's slow start (-init-delay).
	InitDelay time.Duration
	// NotReadyGrace is the controller's -not-ready-grace.
	NotReadyGrace time.Duration
	// SidecarDown is how long the sidecar stays dead before "the kubelet restarts it".
	SidecarDown time.Duration
	// SceneTimeout bounds each wait of a scene.
	SceneTimeout time.Duration
	// LoadInterval is the pace of the load's requests; MaxRequests bounds them in all.
	LoadInterval time.Duration
	MaxRequests  int
	// SkipCleanupWait: do not wait for the namespace and node to be gone at the end
	// (the caller is about to stop the cluster anyway).
	SkipCleanupWait bool
	// Out receives the progress and each scene's timeline; nil discards them.
	Out io.Writer

	// afterScene, if set, is called after each scene that ran (tests).
	afterScene func(*Scene)
}

func (o *Options) defaults() error {
	if o.Kubeconfig == "" || o.ExampleDir == "" || o.ControllerBin == "" || o.DemoBin == "" || o.LogDir == "" {
		return errors.New("tour: Kubeconfig, ExampleDir, ControllerBin, DemoBin and LogDir are required")
	}
	set := func(p *string, v string) {
		if *p == "" {
			*p = v
		}
	}
	set(&o.Namespace, DefaultNamespace)
	set(&o.Node, DefaultNode)
	set(&o.PodCIDR, DefaultPodCIDR)
	if !o.Loopback.IsValid() {
		o.Loopback = DefaultLoopback
	}
	setD := func(p *time.Duration, v time.Duration) {
		if *p == 0 {
			*p = v
		}
	}
	setD(&o.InitDelay, time.Second)
	setD(&o.NotReadyGrace, 3*time.Second)
	setD(&o.SidecarDown, time.Second)
	setD(&o.SceneTimeout, 30*time.Second)
	setD(&o.LoadInterval, 5*time.Millisecond)
	if o.MaxRequests == 0 {
		o.MaxRequests = 20000
	}
	if o.Out == nil {
		o.Out = io.Discard
	}
	prefix, err := netip.ParsePrefix(o.PodCIDR)
	if err != nil {
		return fmt.Errorf("pod CIDR: %w", err)
	}
	if prefix.Addr().IsLoopback() {
		return fmt.Errorf("pod CIDR %s: the API server refuses loopback addresses in EndpointSlices; use an address range such as %s", o.PodCIDR, DefaultPodCIDR)
	}
	return nil
}

// tour is one run.
type tour struct {
	o    Options
	cs   kubernetes.Interface
	cfg  config.Config
	plan *plan
	obs  *observer
	kl   *appkubelet.Kubelet
	load *load
	ctrl *ctrlproc.Controller
	// loadDone is closed when the load has stopped.
	loadDone chan struct{}
	// touched: the namespace and the node are this tour's (no other tour runs there),
	// so cleanup deletes them.
	touched bool
}

func (t *tour) say(format string, args ...any) {
	fmt.Fprintf(t.o.Out, "• "+format+"\n", args...)
}

// Run plays the tour on the cluster of opts.Kubeconfig and returns each scene's outcome.
// An error means the tour could not be set up (or was interrupted): the scenes that did
// not run are in the result as not Ran. Whatever it started is stopped and deleted
// before it returns, also on error or when ctx is canceled.
func Run(ctx context.Context, opts Options) (res *Result, err error) {
	if err := opts.defaults(); err != nil {
		return nil, err
	}
	t := &tour{o: opts, cfg: config.Default()}
	res = &Result{LogDir: opts.LogDir}
	ex, err := LoadExample(opts.ExampleDir)
	if err != nil {
		return res, err
	}
	if t.plan, err = ex.forTour(opts.Namespace, opts.Node, t.cfg); err != nil {
		return res, err
	}
	if err := os.MkdirAll(opts.LogDir, 0o755); err != nil {
		return res, err
	}
	rc, err := clientcmd.BuildConfigFromFlags("", opts.Kubeconfig)
	if err != nil {
		return res, fmt.Errorf("kubeconfig %s: %w", opts.Kubeconfig, err)
	}
	rc.QPS, rc.Burst, rc.UserAgent = 200, 400, FieldManager
	if t.cs, err = kubernetes.NewForConfig(rc); err != nil {
		return res, err
	}

	// Everything below is undone by cleanup, which gets its own time: ctx may be
	// canceled already.
	runCtx, cancel := context.WithCancelCause(ctx)
	defer func() {
		cancel(nil)
		if cerr := t.cleanup(context.WithoutCancel(ctx)); cerr != nil && err == nil {
			err = cerr
		}
	}()
	if err := t.setUp(runCtx, cancel); err != nil {
		if ctx.Err() != nil {
			return res, fmt.Errorf("%w while setting up: %w", errInterrupted, err)
		}
		return res, err
	}
	res.Scenes = t.play(runCtx)
	if cause := context.Cause(runCtx); cause != nil && !errors.Is(cause, context.Canceled) {
		return res, cause
	}
	if ctx.Err() != nil {
		return res, fmt.Errorf("%w: %w", errInterrupted, ctx.Err())
	}
	return res, nil
}

// setUp prepares a clean namespace and node, starts the watches, the kubelet and the
// controller. The example is applied by the first scene.
func (t *tour) setUp(ctx context.Context, cancel context.CancelCauseFunc) error {
	cs, ns := t.cs, t.o.Namespace
	if _, err := cs.Discovery().ServerVersion(); err != nil {
		return fmt.Errorf("the cluster of %s does not answer: %w", t.o.Kubeconfig, err)
	}
	if err := t.removeLeftovers(ctx); err != nil {
		return err
	}
	// The namespace is created, not applied: if another tour created it since the
	// check above, this one fails without touching it.
	nsObj := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
		Name:        ns,
		Labels:      map[string]string{"app.kubernetes.io/managed-by": FieldManager},
		Annotations: map[string]string{ownerAnnotation: ownerValue()},
	}}
	if _, err := cs.CoreV1().Namespaces().Create(ctx, nsObj, metav1.CreateOptions{FieldManager: FieldManager}); err != nil {
		if apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("namespace %s was created meanwhile, by another hapod-tour?", ns)
		}
		return fmt.Errorf("create namespace %s: %w", ns, err)
	}
	// From here on the namespace and node are this tour's, to delete at the end.
	t.touched = true
	t.say("node %s: a kwok node with pod CIDR %s (API data only: nothing is ever sent to these IPs)", t.o.Node, t.o.PodCIDR)
	nodeCtx, nodeCancel := context.WithTimeout(ctx, 30*time.Second)
	defer nodeCancel()
	if _, err := localcluster.CreateNode(nodeCtx, cs, t.o.Node, t.o.PodCIDR); err != nil {
		return err
	}
	// Pods are refused until the namespace's default ServiceAccount exists, and the
	// ReplicaSet controller would back off.
	if err := poll.Until(ctx, 30*time.Second, func() (bool, error) {
		_, err := cs.CoreV1().ServiceAccounts(ns).Get(ctx, "default", metav1.GetOptions{})
		return err == nil, err
	}); err != nil {
		return fmt.Errorf("namespace %s: no default ServiceAccount: %w", ns, err)
	}

	t.obs = newObserver(ns, t.cfg.RoleLabel, t.cfg.ActiveValue, t.plan.svc.Name)
	pool, err := appkubelet.NewAddrPool(t.o.Loopback, appkubelet.PortsFree(t.plan.httpPort, t.plan.rolePort))
	if err != nil {
		return err
	}
	t.kl = appkubelet.New(ctx, appkubelet.Options{
		Client: cs, Namespace: ns, Node: t.o.Node, Bin: t.o.DemoBin, LogDir: t.o.LogDir,
		Pool: pool, HTTPPort: t.plan.httpPort, RolePort: t.plan.rolePort, InitDelay: t.o.InitDelay,
		FieldManager: FieldManager, Hooks: t.obs.kubeletHooks(),
	})
	if err := t.obs.start(ctx, cs, t.kl.Handle); err != nil {
		return err
	}

	logPath := filepath.Join(t.o.LogDir, "controller.log")
	if t.ctrl, err = ctrlproc.Start(ctx, ctrlproc.Options{
		Bin: t.o.ControllerBin, Kubeconfig: t.o.Kubeconfig, Namespaces: ns, LogPath: logPath,
		Args:     []string{"-not-ready-grace", t.o.NotReadyGrace.String()},
		OnRecord: t.obs.recorded,
	}); err != nil {
		return err
	}
	t.say("hapod-controller running (-namespaces %s -notify-cidrs 127.0.0.0/8 -not-ready-grace %s); its log: %s", ns, t.o.NotReadyGrace, logPath)
	go func() {
		select {
		case <-t.ctrl.Failed():
			cancel(t.ctrl.Err())
		case <-ctx.Done():
		}
	}()
	t.load = newLoad(t.obs, t.o.LoadInterval, t.o.MaxRequests)
	t.loadDone = make(chan struct{})
	go func() {
		defer close(t.loadDone)
		t.load.run(ctx)
	}()
	return nil
}

// ownerAnnotation on the tour's namespace names the process that runs the tour ("pid
// start-time"), so that a second tour on the same cluster does not delete a running
// one's namespace as a leftover.
const ownerAnnotation = role.TourOwnerAnnotation

func ownerValue() string {
	start, _ := child.StartTime(os.Getpid())
	return strconv.Itoa(os.Getpid()) + " " + strconv.FormatUint(start, 10)
}

// ownerAlive reports whether the owner annotation names a running process other than
// this one.
func ownerAlive(owner string) bool {
	f := strings.Fields(owner)
	if len(f) != 2 {
		return false
	}
	pid, err1 := strconv.Atoi(f[0])
	start, err2 := strconv.ParseUint(f[1], 10, 64)
	return err1 == nil && err2 == nil && pid != os.Getpid() && child.Alive(pid, start)
}

// removeLeftovers deletes the namespace and node of an earlier run that did not clean up
// (killed with SIGKILL, say), so the tour starts from nothing.
func (t *tour) removeLeftovers(ctx context.Context) error {
	cs := t.cs
	if ns, err := cs.CoreV1().Namespaces().Get(ctx, t.o.Namespace, metav1.GetOptions{}); err == nil {
		if owner := ns.Annotations[ownerAnnotation]; ownerAlive(owner) {
			return fmt.Errorf("namespace %s is in use by another hapod-tour on this machine (pid %s); wait for it to end", t.o.Namespace, strings.Fields(owner)[0])
		}
		t.say("namespace %s is left from an earlier run: deleting it", t.o.Namespace)
		if err := t.deleteNamespace(ctx, true); err != nil {
			return err
		}
	} else if !apierrors.IsNotFound(err) {
		return err
	}
	if _, err := cs.CoreV1().Nodes().Get(ctx, t.o.Node, metav1.GetOptions{}); err == nil {
		t.say("node %s is left from an earlier run: deleting it", t.o.Node)
		if err := t.deleteNode(ctx, true); err != nil {
			return err
		}
	} else if !apierrors.IsNotFound(err) {
		return err
	}
	return nil
}

func (t *tour) deleteNamespace(ctx context.Context, wait bool) error {
	nss := t.cs.CoreV1().Namespaces()
	return deleteAndWait(ctx, "namespace "+t.o.Namespace, wait, 90*time.Second,
		func() error { return nss.Delete(ctx, t.o.Namespace, metav1.DeleteOptions{}) },
		func() error { _, err := nss.Get(ctx, t.o.Namespace, metav1.GetOptions{}); return err })
}

func (t *tour) deleteNode(ctx context.Context, wait bool) error {
	nodes := t.cs.CoreV1().Nodes()
	return deleteAndWait(ctx, "node "+t.o.Node, wait, 30*time.Second,
		func() error { return nodes.Delete(ctx, t.o.Node, metav1.DeleteOptions{}) },
		func() error { _, err := nodes.Get(ctx, t.o.Node, metav1.GetOptions{}); return err })
}

// deleteAndWait deletes what (NotFound is no error) and, if wait, polls get until it
// finds nothing, for at most timeout.
func deleteAndWait(ctx context.Context, what string, wait bool, timeout time.Duration, del, get func() error) error {
	if err := del(); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete %s: %w", what, err)
	}
	if !wait {
		return nil
	}
	if err := poll.Until(ctx, timeout, func() (bool, error) { return gone(get()) }); err != nil {
		return fmt.Errorf("%s not gone: %w", what, err)
	}
	return nil
}

// gone is a poll condition on the error of a Get: the object is gone once the Get
// finds nothing.
func gone(getErr error) (bool, error) {
	switch {
	case getErr == nil:
		return false, errors.New("still there")
	case apierrors.IsNotFound(getErr):
		return true, nil
	}
	return false, getErr
}

// cleanup runs once the run's context is done. It stops the controller first (so it
// does not react to the teardown), then the pods' processes, the load and the watches,
// then deletes the namespace and the node.
func (t *tour) cleanup(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if t.ctrl != nil {
		t.ctrl.Stop()
	}
	if t.kl != nil {
		t.kl.Shutdown()
	}
	if t.loadDone != nil {
		<-t.loadDone
	}
	if t.obs != nil {
		t.obs.shutdown()
	}
	if !t.touched {
		return nil // nothing was created in the cluster
	}
	wait := !t.o.SkipCleanupWait
	var errs []error
	if err := t.deleteNamespace(ctx, wait); err != nil {
		errs = append(errs, err)
	}
	if err := t.deleteNode(ctx, wait); err != nil {
		errs = append(errs, err)
	}
	if len(errs) == 0 {
		what := "deleted"
		if !wait {
			what = "deleting"
		}
		t.say("cleaned up: controller and pod processes stopped, namespace %s and node %s %s", t.o.Namespace, t.o.Node, what)
	}
	return errors.Join(errs...)
}

// apply writes obj with server-side apply, as the tour's field manager: applying the
// same object again changes nothing and is not an error.
func (t *tour) apply(ctx context.Context, obj runtime.Object) error {
	data, err := applyJSON(obj)
	if err != nil {
		return err
	}
	opts := metav1.PatchOptions{FieldManager: FieldManager, Force: ptr.To(true)}
	switch o := obj.(type) {
	case *corev1.Service:
		_, err = t.cs.CoreV1().Services(o.Namespace).Patch(ctx, o.Name, types.ApplyPatchType, data, opts)
	case *appsv1.ReplicaSet:
		_, err = t.cs.AppsV1().ReplicaSets(o.Namespace).Patch(ctx, o.Name, types.ApplyPatchType, data, opts)
	default:
		return fmt.Errorf("apply: %T is not an object the tour applies", obj)
	}
	if err != nil {
		return fmt.Errorf("apply %s: %w", describeObject(obj), err)
	}
	return nil
}

// applyJSON is obj as an apply patch: no status, no empty creation timestamps.
func applyJSON(obj runtime.Object) ([]byte, error) {
	u, err := runtime.DefaultUnstructuredConverter.ToUnstructured(obj)
	if err != nil {
		return nil, err
	}
	delete(u, "status")
	unstructured.RemoveNestedField(u, "metadata", "creationTimestamp")
	unstructured.RemoveNestedField(u, "spec", "template", "metadata", "creationTimestamp")
	return json.Marshal(u)
}

func describeObject(obj runtime.Object) string {
	kind := obj.GetObjectKind().GroupVersionKind().Kind
	if m, ok := obj.(metav1.Object); ok {
		if m.GetNamespace() != "" {
			return fmt.Sprintf("%s %s/%s", kind, m.GetNamespace(), m.GetName())
		}
		return kind + " " + m.GetName()
	}
	return kind
}
