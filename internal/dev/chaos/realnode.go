package chaos

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	"github.com/hapod/hapod/internal/dev/localcluster"
	"github.com/hapod/hapod/internal/dev/netns"
	"github.com/hapod/hapod/internal/dev/netplan"
	"github.com/hapod/hapod/internal/dev/poll"
	"github.com/hapod/hapod/internal/dev/realpod"
	"github.com/hapod/hapod/internal/dev/rolerecord"
	"github.com/hapod/hapod/internal/rolekey"
)

// RealOptions configure the real-node phase (RunReal): one hapod group of
// real containers on a cluster's real nodes, the two controller replicas
// talking to the pods' real IPs, and faults that only real nodes have.
type RealOptions struct {
	// Kubeconfig is the cluster's (an admin's); the cluster must have at
	// least two real nodes and this process must run inside their network
	// namespace (netns.Run).
	Kubeconfig string
	// Nodes stops and starts the real nodes' kubelet and containerd.
	Nodes RealNodes
	// ControllerBin is the built hapod-controller. The apps are the
	// realpod.DemoImage the cluster imported.
	ControllerBin string
	// WorkDir receives the controllers' logs, the key directories and
	// history.jsonl.
	WorkDir string
	// Seed chooses every fault (see Options.Seed).
	Seed uint64
	// Faults is how many faults to inject; their IDs run from FirstID
	// (default 1), so that they do not collide with another phase's.
	Faults, FirstID int
	// Replicas of the group (default 3), spread over the real nodes.
	Replicas int
	// SettleBound: as Options.SettleBound (default 30 s).
	SettleBound time.Duration
	// Kinds, if not empty, limits the faults to these kinds (RealKinds).
	Kinds []string
	// Sequence, if not empty, is the kinds in the order to inject them,
	// round robin, instead of a random choice (a test that must see each).
	Sequence []string
	Log      *slog.Logger
}

// RealNodes is what the real phase needs of a cluster
// (localcluster.Cluster).
type RealNodes interface {
	RealNodes() []*localcluster.RealNode
	StopRealNode(node *localcluster.RealNode)
	StartRealNode(ctx context.Context, node *localcluster.RealNode) error
}

func (o *RealOptions) defaults() {
	if o.FirstID == 0 {
		o.FirstID = 1
	}
	if o.Replicas == 0 {
		o.Replicas = 3
	}
	if o.SettleBound == 0 {
		o.SettleBound = 30 * time.Second
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
}

// Describe says how the phase is made, for the results.
func (o RealOptions) Describe() string {
	o.defaults()
	return fmt.Sprintf("then, on the same cluster, 1 group of %d real containers (hapod-demo, restartPolicy Never on the critical container) on 2 real nodes (kubelet, containerd, runc, CNI bridge), the same two controller replicas' setup talking to the pods' real IPs, authenticated role messages (the group's subkeys in a Secret mounted in the pods), every app's role changes read from its own records on a hostPath; bound: %s",
		o.Replicas, o.SettleBound)
}

// realRun is the real phase's own state beside the run's.
type realRun struct {
	o       RealOptions
	records string // the apps' record files, one per pod

	mu     sync.Mutex
	uids   map[string]types.UID // pod name → UID, for the records (never forgotten)
	exited map[types.UID]bool   // apps recorded as exited
	offset map[string]int64     // record file → bytes consumed
	stop   chan struct{}        // closed to stop tail
	once   sync.Once
	// problems are what went wrong beside the faults' settling (a group
	// not whole again): violations of the phase.
	problems []Violation
}

// RunReal runs the real-node phase: it sets the group up, injects o.Faults
// faults one after another, tears everything down and checks the history
// with the kwok phase's check.
func RunReal(ctx context.Context, o RealOptions) (*Result, error) {
	o.defaults()
	if o.Kubeconfig == "" || o.Nodes == nil || o.ControllerBin == "" || o.WorkDir == "" {
		return nil, errors.New("chaos: RealOptions need Kubeconfig, Nodes, ControllerBin and WorkDir")
	}
	if _, ok := netns.Inside(); !ok {
		return nil, errors.New("chaos: the real phase runs only inside the real nodes' network namespace")
	}
	if len(o.Nodes.RealNodes()) < 2 {
		return nil, errors.New("chaos: the real phase needs at least two real nodes")
	}
	if _, err := exec.LookPath("nft"); err != nil {
		return nil, fmt.Errorf("chaos: pod-netns-cut needs nft: %w", err)
	}
	start := time.Now()
	r, err := setUpReal(ctx, o)
	if r != nil {
		defer r.tearDownReal()
	}
	if err != nil {
		return nil, err
	}
	if err := r.waitAllWhole(ctx, 3*time.Minute); err != nil {
		return nil, fmt.Errorf("the real group did not come up: %w", err)
	}
	r.rec.Bound(time.Now(), time.Time{})
	o.Log.Info("chaos: real-node faults begin", "faults", o.Faults, "seed", o.Seed)
	if err := r.injectReal(ctx); err != nil {
		return nil, err
	}
	r.rec.Bound(time.Time{}, time.Now())
	left := r.tearDownReal()
	h := r.rec.History()
	rep := Check(h, CheckOptions{SettleBound: o.SettleBound, ForgedEpochs: forgedEpochs})
	r.real.mu.Lock()
	rep.Unsettled = append(rep.Unsettled, r.real.problems...)
	r.real.mu.Unlock()
	return &Result{Report: rep, History: h, Exits: int(r.exits.Load()), Left: left, Took: time.Since(start)}, nil
}

func setUpReal(ctx context.Context, o RealOptions) (*run, error) {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	ro := Options{Kubeconfig: o.Kubeconfig, ControllerBin: o.ControllerBin, WorkDir: o.WorkDir, Seed: o.Seed,
		Faults: o.Faults, Groups: 1, Replicas: o.Replicas, SettleBound: o.SettleBound, Kinds: o.Kinds, Log: o.Log}
	// Nodes stays 0: the run creates no node, and its teardown deletes none.
	r := &run{o: ro, id: hex.EncodeToString(b), ctlCfg: o.Kubeconfig}
	r.real = &realRun{o: o, uids: map[string]types.UID{}, exited: map[types.UID]bool{}, offset: map[string]int64{}, stop: make(chan struct{})}
	// Role messages go to the real pods' IPs on the CNI bridges, and
	// nowhere else (as test/realnode and the tour configure it).
	r.ctlArgs = []string{"-notify-cidrs", netplan.RealNodePodsAll.String(), "-notify-bind-address", "0.0.0.0:0"}
	ns := "chaos-" + r.id + "-real"
	r.groups = []string{ns}
	if _, err := r.record(o.WorkDir, o.Kubeconfig); err != nil {
		return nil, err
	}
	var err error
	if err := r.keys(); err != nil {
		return r, err
	}
	if r.real.records, err = realpod.RecordsDir(ns); err != nil {
		return r, err
	}
	if _, err := r.cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{FieldManager: fieldManager}); err != nil {
		return r, err
	}
	if r.labels, err = watchLabels(ctx, r.cs, runLabel+"="+r.id, "app", "role", "active", r.rec, r.onRealPod); err != nil {
		return r, err
	}
	r.wg.Go(func() { r.real.tail(ctx, r) })
	for i := range r.ctls {
		r.ctls[i] = &replica{r: r, slot: i}
		if err := r.ctls[i].start(ctx); err != nil {
			return r, err
		}
		r.wg.Go(func() { r.ctls[i].supervise(ctx) })
	}
	if err := r.waitServiceAccount(ctx, ns); err != nil {
		return r, err
	}
	if _, err := r.cs.CoreV1().Secrets(ns).Create(ctx, r.groupKeys(ns), metav1.CreateOptions{FieldManager: fieldManager}); err != nil {
		return r, err
	}
	if _, err := r.cs.CoreV1().Pods(ns).Create(ctx, r.sentinel(ns), metav1.CreateOptions{FieldManager: fieldManager}); err != nil {
		return r, err
	}
	if _, err := r.cs.AppsV1().ReplicaSets(ns).Create(ctx, r.realReplicaSet(ns), metav1.CreateOptions{FieldManager: fieldManager}); err != nil {
		return r, err
	}
	return r, nil
}

// keysSecret and keysMount: the group's subkeys as deploy/example mounts
// them (hapod-controller -print-group-keys makes the same Secret).
const (
	keysSecret = "hapod-group-keys"
	keysMount  = "/etc/hapod/role-keys"
)

// groupKeys is the group's subkey Secret: the key under its id and the
// file that names the current one, as rolekey.LoadDir reads a Secret
// volume.
func (r *run) groupKeys(ns string) *corev1.Secret {
	sub := rolekey.GroupKey(r.masterKey, ns+"/"+appName)
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: keysSecret, Namespace: ns},
		StringData: map[string]string{"k1": rolekey.Encode(sub) + "\n", rolekey.CurrentFile: "k1\n"},
	}
}

// realReplicaSet is the example's shape on the real nodes (realpod's
// template: the demo app as critical container with restartPolicy Never,
// a pause sidecar, records on a hostPath), with the group's keys mounted
// and the run's label on every pod.
func (r *run) realReplicaSet(ns string) *appsv1.ReplicaSet {
	sel := map[string]string{"app": appName}
	tpl := realpod.Template(realpod.Options{
		Labels:        map[string]string{"app": appName, "role": "standby", runLabel: r.id},
		Records:       r.real.records,
		CriticalNever: true,
		InitDelay:     time.Second,
		Spread:        sel,
	})
	tpl.Spec.Volumes = append(tpl.Spec.Volumes, corev1.Volume{Name: "role-keys", VolumeSource: corev1.VolumeSource{
		Secret: &corev1.SecretVolumeSource{SecretName: keysSecret},
	}})
	for i := range tpl.Spec.Containers {
		if c := &tpl.Spec.Containers[i]; c.Name == realpod.Critical {
			c.Env = append(c.Env, corev1.EnvVar{Name: "ROLE_KEY_DIR", Value: keysMount}, corev1.EnvVar{Name: "ROLE_GROUP", Value: ns + "/" + appName})
			c.VolumeMounts = append(c.VolumeMounts, corev1.VolumeMount{Name: "role-keys", MountPath: keysMount, ReadOnly: true})
		}
	}
	return &appsv1.ReplicaSet{
		ObjectMeta: metav1.ObjectMeta{Name: appName, Namespace: ns},
		Spec: appsv1.ReplicaSetSpec{
			Replicas: ptr.To(int32(r.o.Replicas)),
			Selector: &metav1.LabelSelector{MatchLabels: sel},
			Template: tpl,
		},
	}
}

// onRealPod feeds the view, learns the pod's UID for its records, and
// records the app's exit once the kubelet reports its container
// terminated (an exit the run did not cause: the check must not take the
// app for active after it; timed when seen, no earlier than it was).
func (r *run) onRealPod(p *corev1.Pod, deleted bool) {
	r.view.pod(p, deleted)
	if p.Labels["app"] != appName {
		return
	}
	r.real.mu.Lock()
	r.real.uids[p.Name] = p.UID
	r.real.mu.Unlock()
	for _, cs := range p.Status.ContainerStatuses {
		if cs.Name == realpod.Critical && cs.State.Terminated != nil {
			r.real.appExited(r, p.UID, p.Name, time.Now())
		}
	}
}

// appExited records the app of pod name as exited at at, once: first
// whatever it wrote before it died, so that its records come before its
// exit in the view.
func (rr *realRun) appExited(r *run, uid types.UID, name string, at time.Time) {
	rr.mu.Lock()
	defer rr.mu.Unlock()
	if rr.exited[uid] {
		return
	}
	rr.exited[uid] = true
	rr.readLocked(r, filepath.Join(rr.records, name+".jsonl"))
	ac := AppChange{At: at, Role: Exited}
	if ac.Group, ac.Pod = r.view.app(uid, ac); ac.Pod != "" {
		r.rec.App(ac)
	}
}

// recordsPoll is how often the apps' record files are read. The records
// carry the apps' own times, so the delay costs the check nothing; it only
// delays the run's view, and so its settle waits, by as much.
const recordsPoll = 20 * time.Millisecond

// tail feeds every app's new records to the view and the recorder until
// ctx ends or the run stops (tearDownReal reads them one last time).
func (rr *realRun) tail(ctx context.Context, r *run) {
	t := time.NewTicker(recordsPoll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-rr.stop:
			return
		case <-t.C:
		}
		rr.readAll(r)
	}
}

func (rr *realRun) readAll(r *run) {
	files, _ := filepath.Glob(filepath.Join(rr.records, "*.jsonl"))
	rr.mu.Lock()
	defer rr.mu.Unlock()
	for _, f := range files {
		rr.readLocked(r, f)
	}
}

// readLocked reads the complete lines of one record file that are new,
// and stops at a record of a pod whose UID the watch has not shown yet (it
// is read again next time).
func (rr *realRun) readLocked(r *run, file string) {
	f, err := os.Open(file)
	if err != nil {
		return
	}
	defer func() { _ = f.Close() }()
	off := rr.offset[file]
	if _, err := f.Seek(off, 0); err != nil {
		return
	}
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(f); err != nil {
		return
	}
	data := buf.Bytes()
	for {
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			break // a line being written
		}
		line := data[:i]
		c, err := rolerecord.Decode(line)
		if err == nil {
			uid, ok := rr.uids[c.Pod]
			if !ok {
				break
			}
			ac := AppChange{At: c.At, Role: c.Role, Epoch: c.Epoch}
			if ac.Group, ac.Pod = r.view.app(uid, ac); ac.Pod != "" {
				r.rec.App(ac)
			}
		}
		off += int64(i + 1)
		data = data[i+1:]
	}
	rr.offset[file] = off
}

// injectReal injects the faults one after another (one group: one worker).
func (r *run) injectReal(ctx context.Context) error {
	o := r.real.o
	var enabled []kind
	for _, k := range realKinds {
		if len(o.Kinds) == 0 || slices.Contains(o.Kinds, k.name) {
			enabled = append(enabled, k)
		}
	}
	for _, name := range o.Sequence {
		if !slices.ContainsFunc(realKinds, func(k kind) bool { return k.name == name }) {
			return fmt.Errorf("chaos: no real-node fault kind %q (have %v)", name, RealKinds())
		}
	}
	if len(enabled) == 0 && len(o.Sequence) == 0 {
		return errors.New("chaos: no real-node fault kind enabled")
	}
	rng := mrand.New(mrand.NewPCG(o.Seed, 1<<32))
	g := r.allGroups()[0]
	for i := range o.Faults {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		k := pick(enabled, rng)
		if len(o.Sequence) > 0 {
			name := o.Sequence[i%len(o.Sequence)]
			k = realKinds[slices.IndexFunc(realKinds, func(k kind) bool { return k.name == name })]
		}
		id := o.FirstID + i
		r.one(ctx, id, k, g, rng)
		// The next fault must meet the whole group again: the replacement
		// pod in, a restarted node's pods back. r.one waits for that too
		// but only warns; here it is a violation of the phase.
		if err := r.sync(ctx, namespaceOf(g)); err != nil {
			r.real.problem(g, fmt.Sprintf("after fault %d (%s): %v", id, k.name, err))
		}
		if _, err := r.view.waitFor(ctx, 2*time.Minute, g+" whole", func() (bool, string) { return r.view.wholeLocked(g, r.o.Replicas) }); err != nil {
			r.real.problem(g, fmt.Sprintf("the group was not whole again after fault %d (%s): %v", id, k.name, err))
		}
	}
	return ctx.Err()
}

func (rr *realRun) problem(group, what string) {
	rr.mu.Lock()
	defer rr.mu.Unlock()
	rr.problems = append(rr.problems, Violation{At: time.Now(), Group: group, What: what})
	rr.o.Log.Warn("chaos: real phase", "group", group, "problem", what)
}

// tearDownReal stops the controllers and the watch, deletes the namespace
// and waits until it is gone, and reports what is left: the run's own
// processes (tearDown) and any process still in one of the pods' cgroups.
func (r *run) tearDownReal() []string {
	rr := r.real
	ns := r.groups
	// The tail goes first: tearDown waits for the run's goroutines.
	rr.once.Do(func() { close(rr.stop) })
	left := r.tearDown()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, n := range ns {
		if err := poll.Until(ctx, 2*time.Minute, func() (bool, error) {
			_, err := r.cs.CoreV1().Namespaces().Get(ctx, n, metav1.GetOptions{})
			return apierrors.IsNotFound(err), nil
		}); err != nil {
			left = append(left, "namespace "+n+" not gone: "+err.Error())
		}
	}
	rr.readAll(r) // the apps' last records, written as they were stopped
	rr.mu.Lock()
	uids := make([]types.UID, 0, len(rr.uids))
	for _, uid := range rr.uids {
		uids = append(uids, uid)
	}
	rr.mu.Unlock()
	return append(left, podProcesses(uids)...)
}

// podProcesses lists the processes still in the cgroup of any of the pods
// (the kubelet's cgroupfs driver names a pod's cgroup pod<UID>, under its
// node's cgroup root): a container that outlived its pod.
func podProcesses(uids []types.UID) []string {
	ns, _ := netns.Inside()
	roots, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup/pids", netns.CgroupPrefix(ns)+"*"))
	want := map[string]bool{}
	for _, uid := range uids {
		want["pod"+string(uid)] = true
	}
	var out []string
	for _, root := range roots {
		_ = filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
			if err != nil || !d.IsDir() || !want[d.Name()] {
				return nil
			}
			_ = filepath.WalkDir(path, func(p string, d os.DirEntry, err error) error {
				if err != nil || !d.IsDir() {
					return nil
				}
				data, _ := os.ReadFile(filepath.Join(p, "cgroup.procs"))
				for _, f := range strings.Fields(string(data)) {
					if _, err := strconv.Atoi(f); err == nil {
						out = append(out, "process "+f+" in "+p)
					}
				}
				return nil
			})
			return filepath.SkipDir
		})
	}
	return out
}

// Combine joins two phases' results into one, for one table: their
// histories side by side (each was checked on its own: the time with no
// active counts within each phase's own bounds) and their reports summed.
// Fault IDs must not collide.
func Combine(a, b *Result) (*Result, error) {
	ids := map[int]bool{}
	for _, f := range a.History.Faults {
		ids[f.ID] = true
	}
	for _, f := range b.History.Faults {
		if ids[f.ID] {
			return nil, fmt.Errorf("chaos: fault ID %d in both phases", f.ID)
		}
	}
	h := History{
		Labels: append(slices.Clone(a.History.Labels), b.History.Labels...),
		Apps:   append(slices.Clone(a.History.Apps), b.History.Apps...),
		Faults: append(slices.Clone(a.History.Faults), b.History.Faults...),
		Start:  a.History.Start, End: b.History.End,
	}
	ra, rb := a.Report, b.Report
	rep := Report{
		Faults:       ra.Faults + rb.Faults,
		ByKind:       append(slices.Clone(ra.ByKind), rb.ByKind...),
		LabelDoubles: append(slices.Clone(ra.LabelDoubles), rb.LabelDoubles...),
		AppOverlaps:  append(slices.Clone(ra.AppOverlaps), rb.AppOverlaps...),
		Epochs:       append(slices.Clone(ra.Epochs), rb.Epochs...),
		Unsettled:    append(slices.Clone(ra.Unsettled), rb.Unsettled...),
		LabelEvents:  ra.LabelEvents + rb.LabelEvents,
		AppChanges:   ra.AppChanges + rb.AppChanges,
	}
	rep.MaxNoActive, rep.MaxNoActiveGroup, rep.MaxNoActiveAt = ra.MaxNoActive, ra.MaxNoActiveGroup, ra.MaxNoActiveAt
	if rb.MaxNoActive > rep.MaxNoActive {
		rep.MaxNoActive, rep.MaxNoActiveGroup, rep.MaxNoActiveAt = rb.MaxNoActive, rb.MaxNoActiveGroup, rb.MaxNoActiveAt
	}
	return &Result{Report: rep, History: h, Exits: a.Exits + b.Exits, Left: append(slices.Clone(a.Left), b.Left...), Took: a.Took + b.Took}, nil
}
