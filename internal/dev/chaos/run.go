package chaos

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"

	"github.com/hapod/hapod/internal/dev/apifault"
	"github.com/hapod/hapod/internal/dev/appkubelet"
	"github.com/hapod/hapod/internal/dev/ctrlproc"
	"github.com/hapod/hapod/internal/dev/keydir"
	"github.com/hapod/hapod/internal/dev/localcluster"
	"github.com/hapod/hapod/internal/dev/netplan"
	"github.com/hapod/hapod/internal/dev/poll"
	"github.com/hapod/hapod/internal/dev/rolerecord"
	"github.com/hapod/hapod/internal/dev/udprelay"
	"github.com/hapod/hapod/internal/rolekey"
	"github.com/hapod/hapod/pkg/role"
)

// Options configure a run.
type Options struct {
	// Kubeconfig is the cluster's (an admin's): the run's own reads and
	// writes go straight to the API server; the controllers' go through
	// the fault-injecting proxy.
	Kubeconfig string
	// APIServer restarts the cluster's kube-apiserver; nil leaves that
	// fault out (a cluster this run did not start).
	APIServer interface {
		RestartAPIServer(ctx context.Context) (time.Duration, error)
	}
	ControllerBin, DemoBin string
	// WorkDir receives the logs, the key directories and history.jsonl.
	WorkDir string
	// Seed chooses every fault and every random number of the relays and
	// the proxy; the same seed replays the same sequence of choices (the
	// timing, and so what each fault meets, differs from run to run).
	Seed uint64
	// Faults is how many faults to inject.
	Faults int
	// Groups of Replicas pods each, on Nodes kwok nodes.
	Groups, Replicas, Nodes int
	// SettleBound: a fault must be followed by one acked active within
	// this of being healed.
	SettleBound time.Duration
	// Kinds, if not empty, limits the faults to these kinds.
	Kinds []string
	Log   *slog.Logger
}

func (o *Options) defaults() {
	if o.Groups == 0 {
		o.Groups = 4
	}
	if o.Replicas == 0 {
		o.Replicas = 3
	}
	if o.Nodes == 0 {
		o.Nodes = 3
	}
	if o.SettleBound == 0 {
		o.SettleBound = 30 * time.Second
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
}

// The run's names and ports.
const (
	appName      = "hapod" // the app label's value: every group is <namespace>/hapod
	critical     = "app"
	sidecar      = "sidecar"
	httpPort     = 8080
	rolePort     = 7477
	fieldManager = "hapod-chaos"
	// runLabel marks every pod of one run; the recorder watches only those.
	runLabel = "hapod.io/chaos-run"
	// sentinelApp labels each namespace's sentinel pod, and
	// syncAnnotation carries its token (see run.sync).
	sentinelApp    = "chaos-sentinel"
	syncAnnotation = "hapod.io/chaos-sync"
	// forgedEpochs: the forgeries grant epochs from here; the controller
	// never gets near (2^31-1 is the most a listener takes unauthenticated).
	forgedEpochs = 1 << 30
)

// Result is a run's outcome.
type Result struct {
	Report  Report
	History History
	// Exits are the controller processes that exited without being told
	// to (lost leadership, say), restarted as a Deployment would.
	Exits int
	// Left is what was still running after the teardown: must be empty.
	Left []string
	Took time.Duration
}

// run is one run's state.
type run struct {
	o         Options
	id        string
	cs        kubernetes.Interface
	rec       *Recorder
	view      *view
	labels    *labels
	proxy     *apifault.Proxy
	ctlCfg    string // the controllers' kubeconfig (through the proxy)
	master    string // the controllers' key directory
	masterKey []byte

	groups []string // namespaces, one group each
	nodes  []string

	kmu      sync.Mutex
	kubelets map[string]*appkubelet.Kubelet // namespace/node →
	relays   map[types.UID]*udprelay.Relay

	ctls  [2]*replica
	exits atomic.Int64
	// ctlArgs are more controller flags, and real the real-node phase's
	// own state (realnode.go); both unset in the kwok phase.
	ctlArgs []string
	real    *realRun

	// exclusive is held shared by every fault of a group or a condition,
	// and alone by a fault of the whole cluster.
	exclusive sync.RWMutex
	nextID    atomic.Int64
	syncs     atomic.Int64
	wg        sync.WaitGroup
}

// Run sets the groups up on the cluster, injects o.Faults faults from
// o.Groups workers, tears everything down and checks the history.
func Run(ctx context.Context, o Options) (*Result, error) {
	o.defaults()
	start := time.Now()
	r, err := setUp(ctx, o)
	if r != nil {
		defer r.tearDown()
	}
	if err != nil {
		return nil, err
	}
	if err := r.waitAllWhole(ctx, 2*time.Minute); err != nil {
		return nil, fmt.Errorf("the groups did not come up: %w", err)
	}
	r.rec.Bound(time.Now(), time.Time{})
	o.Log.Info("chaos: faults begin", "faults", o.Faults, "groups", o.Groups, "seed", o.Seed)
	if err := r.inject(ctx); err != nil {
		return nil, err
	}
	r.rec.Bound(time.Time{}, time.Now())
	left := r.tearDown()
	h := r.rec.History()
	return &Result{
		Report:  Check(h, CheckOptions{SettleBound: o.SettleBound, ForgedEpochs: forgedEpochs}),
		History: h, Exits: int(r.exits.Load()), Left: left, Took: time.Since(start),
	}, nil
}

func setUp(ctx context.Context, o Options) (*run, error) {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	r := &run{o: o, id: hex.EncodeToString(b), kubelets: map[string]*appkubelet.Kubelet{}, relays: map[types.UID]*udprelay.Relay{}}
	rc, err := r.record(o.WorkDir, o.Kubeconfig)
	if err != nil {
		return nil, err
	}
	for i := range o.Groups {
		r.groups = append(r.groups, fmt.Sprintf("chaos-%s-g%d", r.id, i))
	}
	for i := range o.Nodes {
		r.nodes = append(r.nodes, fmt.Sprintf("chaos-%s-n%d", r.id, i))
	}
	if err := r.keys(); err != nil {
		return r, err
	}
	if r.proxy, err = apifault.Start(rc, apifault.Options{Seed: o.Seed, Logger: o.Log}); err != nil {
		return r, err
	}
	r.ctlCfg = filepath.Join(o.WorkDir, "controller.kubeconfig")
	if err := r.proxy.WriteKubeconfig(r.ctlCfg); err != nil {
		return r, err
	}
	for i, n := range r.nodes {
		cidr := netplan.Subnet24(netplan.ChaosNodes, i).String()
		if _, err := localcluster.CreateNode(ctx, r.cs, n, cidr); err != nil {
			return r, err
		}
	}
	pool, err := appkubelet.NewAddrPool(netplan.ChaosApps, appkubelet.PortsFree(httpPort, rolePort))
	if err != nil {
		return r, err
	}
	for _, ns := range r.groups {
		if _, err := r.cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{FieldManager: fieldManager}); err != nil {
			return r, err
		}
		for _, n := range r.nodes {
			r.kubelets[ns+"/"+n] = appkubelet.New(ctx, appkubelet.Options{
				Client: r.cs, Namespace: ns, Node: n, Bin: o.DemoBin, LogDir: filepath.Join(o.WorkDir, "apps"),
				Pool: pool, HTTPPort: httpPort, RolePort: rolePort, FieldManager: fieldManager,
				AppArgs:   []string{"-role-key-dir", filepath.Join(o.WorkDir, "keys", ns), "-role-group", ns + "/" + appName},
				Advertise: r.advertise,
				Hooks:     r.hooks(),
			})
		}
	}
	if err := os.MkdirAll(filepath.Join(o.WorkDir, "apps"), 0o755); err != nil {
		return r, err
	}
	if r.labels, err = watchLabels(ctx, r.cs, runLabel+"="+r.id, "app", "role", "active", r.rec, r.onPod); err != nil {
		return r, err
	}
	for i := range r.ctls {
		r.ctls[i] = &replica{r: r, slot: i}
		if err := r.ctls[i].start(ctx); err != nil {
			return r, err
		}
		r.wg.Go(func() { r.ctls[i].supervise(ctx) })
	}
	for _, ns := range r.groups {
		if err := r.waitServiceAccount(ctx, ns); err != nil {
			return r, err
		}
		if _, err := r.cs.CoreV1().Pods(ns).Create(ctx, r.sentinel(ns), metav1.CreateOptions{FieldManager: fieldManager}); err != nil {
			return r, err
		}
		if _, err := r.cs.AppsV1().ReplicaSets(ns).Create(ctx, r.replicaSet(ns), metav1.CreateOptions{FieldManager: fieldManager}); err != nil {
			return r, err
		}
	}
	return r, nil
}

// record opens the run's history (workDir/history.jsonl), its view and
// its own client of the cluster, whose config it returns.
func (r *run) record(workDir, kubeconfig string) (*rest.Config, error) {
	if err := os.MkdirAll(workDir, 0o755); err != nil {
		return nil, err
	}
	sink, err := os.Create(filepath.Join(workDir, "history.jsonl"))
	if err != nil {
		return nil, err
	}
	r.rec = NewRecorder(sink)
	r.view = newView("app", "role", "active")
	rc, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, err
	}
	rc.QPS, rc.Burst = 200, 400
	if r.cs, err = kubernetes.NewForConfig(rc); err != nil {
		return nil, err
	}
	return rc, nil
}

// keys writes the controllers' master key directory and each group's
// subkeys, as the Secrets of deploy/ would mount them.
func (r *run) keys() error {
	master := make([]byte, 32)
	_, _ = rand.Read(master)
	r.masterKey = master
	r.master = filepath.Join(r.o.WorkDir, "keys", "master")
	if err := keydir.Write(r.master, map[string][]byte{"k1": master}, "k1"); err != nil {
		return err
	}
	for _, ns := range r.groups {
		sub := rolekey.GroupKey(master, ns+"/"+appName)
		if err := keydir.Write(filepath.Join(r.o.WorkDir, "keys", ns), map[string][]byte{"k1": sub}, "k1"); err != nil {
			return err
		}
	}
	return nil
}

func (r *run) waitServiceAccount(ctx context.Context, ns string) error {
	return poll.Until(ctx, 30*time.Second, func() (bool, error) {
		_, err := r.cs.CoreV1().ServiceAccounts(ns).Get(ctx, "default", metav1.GetOptions{})
		return err == nil, err
	})
}

// replicaSet is the group's ReplicaSet: the seed's shape (a critical app
// container, restartPolicy Never, and a sidecar), with Ready left to the
// run's kubelets and the run's label on every pod.
func (r *run) replicaSet(ns string) *appsv1.ReplicaSet {
	labels := map[string]string{"app": appName, "role": "standby", runLabel: r.id}
	return &appsv1.ReplicaSet{
		ObjectMeta: metav1.ObjectMeta{Name: appName, Namespace: ns},
		Spec: appsv1.ReplicaSetSpec{
			Replicas: ptr.To(int32(r.o.Replicas)),
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": appName}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels, Annotations: map[string]string{role.ExternalReadinessAnnotation: "true"}},
				Spec: corev1.PodSpec{
					TerminationGracePeriodSeconds: ptr.To(int64(5)),
					Affinity: &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{
						RequiredDuringSchedulingIgnoredDuringExecution: &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{{
							MatchExpressions: []corev1.NodeSelectorRequirement{{Key: "kubernetes.io/hostname", Operator: corev1.NodeSelectorOpIn, Values: r.nodes}},
						}}},
					}},
					Containers: []corev1.Container{
						// Never, as deploy/example: the kubelet leaves a dead critical container dead.
						{Name: critical, Image: "hapod-demo", RestartPolicy: ptr.To(corev1.ContainerRestartPolicyNever), Env: []corev1.EnvVar{{Name: "pwcriticality", Value: "critical"}},
							Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: httpPort}, {Name: "role", ContainerPort: rolePort, Protocol: corev1.ProtocolUDP}}},
						{Name: sidecar, Image: "sidecar"},
					},
				},
			},
		},
	}
}

// sentinel is a pod that never runs (no node matches it) and that hapod
// does not select: the run writes a token into it to know when its watch
// has caught up (sync).
func (r *run) sentinel(ns string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: sentinelApp, Namespace: ns, Labels: map[string]string{"app": sentinelApp, runLabel: r.id}},
		Spec: corev1.PodSpec{
			NodeSelector: map[string]string{runLabel: "no-such-node"},
			Containers:   []corev1.Container{{Name: "c", Image: "none"}},
		},
	}
}

// sync returns once the run's watch has delivered every change the API
// server had made to the namespace's pods when sync was called: it writes a
// token into the sentinel and waits to see it come back (a watch delivers
// in resourceVersion order). Without it, a wait could find a group settled
// on a view that has not yet seen the fault (a deletion, say).
func (r *run) sync(ctx context.Context, ns string) error {
	// Tokens only grow: another worker's later sync of the namespace
	// also proves this one.
	n := r.syncs.Add(1)
	token := strconv.FormatInt(n, 10)
	patch := []byte(`{"metadata":{"annotations":{"` + syncAnnotation + `":"` + token + `"}}}`)
	if _, err := r.cs.CoreV1().Pods(ns).Patch(ctx, sentinelApp, types.MergePatchType, patch, metav1.PatchOptions{FieldManager: fieldManager}); err != nil {
		return fmt.Errorf("sync %s: %w", ns, err)
	}
	_, err := r.view.waitFor(ctx, r.o.SettleBound, "the watch of "+ns+" catches up", func() (bool, string) {
		return r.view.synced[ns] >= n, "token " + token + " not seen"
	})
	return err
}

// onPod feeds the view and the pod's node's kubelet.
func (r *run) onPod(p *corev1.Pod, deleted bool) {
	r.view.pod(p, deleted)
	r.kmu.Lock()
	k := r.kubelets[p.Namespace+"/"+p.Spec.NodeName]
	r.kmu.Unlock()
	if k != nil {
		k.Handle(p, deleted)
	}
}

// advertise puts a relay between the controllers and each app.
func (r *run) advertise(_ string, uid types.UID, app netip.AddrPort) (netip.AddrPort, error) {
	rl, err := udprelay.New(udprelay.Config{App: app, Seed: r.o.Seed + uint64(r.nextID.Add(1))<<20})
	if err != nil {
		return netip.AddrPort{}, err
	}
	r.kmu.Lock()
	if old := r.relays[uid]; old != nil {
		_ = old.Close()
	}
	r.relays[uid] = rl
	r.kmu.Unlock()
	return rl.Addr(), nil
}

func (r *run) relay(uid types.UID) *udprelay.Relay {
	r.kmu.Lock()
	defer r.kmu.Unlock()
	return r.relays[uid]
}

// hooks record every app's role changes and exits.
func (r *run) hooks() appkubelet.Hooks {
	return appkubelet.Hooks{
		Role: func(uid types.UID, c rolerecord.Change) {
			ac := AppChange{At: c.At, Role: c.Role, Epoch: c.Epoch}
			if ac.Group, ac.Pod = r.view.app(uid, ac); ac.Pod != "" {
				r.rec.App(ac)
			}
		},
		Exited: func(uid types.UID, at time.Time) {
			ac := AppChange{At: at, Role: Exited}
			if ac.Group, ac.Pod = r.view.app(uid, ac); ac.Pod != "" {
				r.rec.App(ac)
			}
			r.kmu.Lock()
			if rl := r.relays[uid]; rl != nil {
				_ = rl.Close()
				delete(r.relays, uid)
			}
			r.kmu.Unlock()
		},
		Problem: func(msg string) { r.o.Log.Warn("chaos: kubelet", "problem", msg) },
	}
}

// waitAllWhole waits until every group is whole.
func (r *run) waitAllWhole(ctx context.Context, timeout time.Duration) error {
	for _, ns := range r.groups {
		g := ns + "/" + appName
		if _, err := r.view.waitFor(ctx, timeout, "group "+g+" whole", func() (bool, string) { return r.view.wholeLocked(g, r.o.Replicas) }); err != nil {
			return err
		}
	}
	return nil
}

// tearDown stops everything the run started and reports what is still
// running afterwards; calling it again does nothing.
func (r *run) tearDown() []string {
	var left []string
	for _, c := range r.ctls {
		if c != nil {
			c.stop()
		}
	}
	r.wg.Wait()
	r.kmu.Lock()
	ks := r.kubelets
	r.kubelets = map[string]*appkubelet.Kubelet{}
	r.kmu.Unlock()
	for _, k := range ks {
		k.Shutdown()
	}
	r.kmu.Lock()
	for uid, rl := range r.relays {
		_ = rl.Close()
		delete(r.relays, uid)
	}
	r.kmu.Unlock()
	if r.labels != nil {
		r.labels.stop()
		r.labels = nil
	}
	if r.proxy != nil {
		_ = r.proxy.Close()
		r.proxy = nil
	}
	// The API objects go last: nothing is left to react to their deletion.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, ns := range r.groups {
		if err := r.cs.CoreV1().Namespaces().Delete(ctx, ns, metav1.DeleteOptions{}); err != nil && !strings.Contains(err.Error(), "not found") {
			left = append(left, "namespace "+ns+": "+err.Error())
		}
	}
	for _, n := range r.nodes {
		if err := r.cs.CoreV1().Nodes().Delete(ctx, n, metav1.DeleteOptions{}); err != nil && !strings.Contains(err.Error(), "not found") {
			left = append(left, "node "+n+": "+err.Error())
		}
	}
	r.groups, r.nodes = nil, nil
	for _, k := range ks {
		left = append(left, k.Running()...)
	}
	for _, c := range r.ctls {
		if c != nil && c.running() {
			left = append(left, fmt.Sprintf("controller %d", c.slot))
		}
	}
	return left
}

// replica is one controller replica, restarted whenever it exits, as a
// Deployment's pod would be.
type replica struct {
	r    *run
	slot int

	mu      sync.Mutex
	c       *ctrlproc.Controller
	planned bool // the current process was told to go
	closing bool
	starts  int // processes started (only the supervisor starts them, after the first)
}

func (p *replica) start(ctx context.Context) error {
	c, err := ctrlproc.Start(ctx, ctrlproc.Options{
		Bin: p.r.o.ControllerBin, Kubeconfig: p.r.ctlCfg, Namespaces: strings.Join(p.r.groups, ","),
		LogPath: filepath.Join(p.r.o.WorkDir, fmt.Sprintf("controller-%d.%d.log", p.slot, p.starts)),
		Args: append([]string{
			"-leader-elect", "-leader-election-namespace", p.r.groups[0],
			// Short, as a hot standby needs, and long enough for a
			// loaded 2-core machine to renew in time.
			"-leader-elect-lease-duration", "3s", "-leader-elect-renew-deadline", "2s", "-leader-elect-retry-period", "250ms",
			"-role-key-dir", p.r.master,
		}, p.r.ctlArgs...),
	})
	if err != nil {
		return err
	}
	p.mu.Lock()
	p.c, p.planned = c, false
	p.mu.Unlock()
	p.starts++
	return nil
}

// supervise restarts the replica whenever its process exits, until stop.
func (p *replica) supervise(ctx context.Context) {
	for {
		p.mu.Lock()
		c := p.c
		p.mu.Unlock()
		if c != nil {
			select {
			case <-c.Done():
			case <-ctx.Done():
				return
			}
		}
		p.mu.Lock()
		closing, planned := p.closing, p.planned
		p.mu.Unlock()
		if closing {
			return
		}
		if c != nil && !planned {
			p.r.exits.Add(1)
			p.r.o.Log.Warn("chaos: a controller exited by itself; restarted", "slot", p.slot, "err", c.Err())
		}
		// A Deployment's restart is not instant either.
		if err := poll.Pause(ctx, 500*time.Millisecond); err != nil {
			return
		}
		if err := p.start(ctx); err != nil {
			p.r.o.Log.Warn("chaos: a controller did not start; trying again", "slot", p.slot, "err", err)
			p.mu.Lock()
			p.c = nil
			p.mu.Unlock()
		}
	}
}

// live is the replica's current process if it runs, or nil.
func (p *replica) live() *ctrlproc.Controller {
	p.mu.Lock()
	c := p.c
	p.mu.Unlock()
	if c == nil {
		return nil
	}
	select {
	case <-c.Done():
		return nil
	default:
		return c
	}
}

// leads reports whether the replica's current process holds the leader
// lease (its log says it acquired it).
func (p *replica) leads() bool {
	c := p.live()
	if c == nil {
		return false
	}
	b, err := os.ReadFile(c.LogPath())
	return err == nil && strings.Contains(strings.ToLower(string(b)), "successfully acquired lease")
}

// end ends the current process: SIGKILL, or SIGTERM (a clean handover).
func (p *replica) end(kill bool) {
	p.mu.Lock()
	c := p.c
	p.planned = true
	p.mu.Unlock()
	if c == nil {
		return
	}
	if kill {
		c.Kill()
	} else {
		c.Stop()
	}
}

func (p *replica) stop() {
	p.mu.Lock()
	p.closing = true
	p.mu.Unlock()
	p.end(false)
}

func (p *replica) running() bool { return p.live() != nil }

// leader is the replica that leads, or nil.
func (r *run) leader() *replica {
	for _, c := range r.ctls {
		if c.leads() {
			return c
		}
	}
	return nil
}
