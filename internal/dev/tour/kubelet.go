package tour

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"path/filepath"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/hapod/hapod/internal/dev/appproc"
	"github.com/hapod/hapod/internal/dev/child"
	"github.com/hapod/hapod/internal/dev/podstatus"
	"github.com/hapod/hapod/internal/dev/poll"
	"github.com/hapod/hapod/internal/dev/rolerecord"
	"github.com/hapod/hapod/pkg/role"
)

// kubelet plays the kubelet of the tour's node: one real hapod-demo process per pod,
// each on its own loopback address; readiness from the process's /readyz; processes
// stopped when their pods go.
type kubelet struct {
	cs        kubernetes.Interface
	ns, node  string
	bin       string // hapod-demo
	logDir    string
	pool      *addrPool
	httpPort  int
	rolePort  int
	initDelay time.Duration
	// probeTimeout bounds the wait for a process's /readyz.
	probeTimeout time.Duration
	obs          *observer
	ctx          context.Context // the tour's lifetime: ends every bring-up
	http         *http.Client

	mu     sync.Mutex
	procs  map[types.UID]*proc // nil value: being started
	gone   map[types.UID]bool  // pods deleted or deleting
	closed bool
	wg     sync.WaitGroup
}

// proc is one pod's process.
type proc struct {
	*appproc.Proc
	uid  types.UID
	addr netip.Addr
}

func newKubelet(ctx context.Context, cs kubernetes.Interface, ns, node, bin, logDir string, pool *addrPool, p *plan, initDelay time.Duration, obs *observer) *kubelet {
	return &kubelet{
		cs: cs, ns: ns, node: node, bin: bin, logDir: logDir, pool: pool,
		httpPort: p.httpPort, rolePort: p.rolePort, initDelay: initDelay,
		probeTimeout: 30*time.Second + initDelay, obs: obs, ctx: ctx,
		http:  &http.Client{Timeout: time.Second, Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}},
		procs: map[types.UID]*proc{}, gone: map[types.UID]bool{},
	}
}

// handle reacts to a pod event; it never blocks the watch.
func (k *kubelet) handle(pod *corev1.Pod, deleted bool) {
	if deleted || pod.DeletionTimestamp != nil {
		k.mu.Lock()
		k.gone[pod.UID] = true
		p, ok := k.procs[pod.UID]
		if ok && p != nil && !k.closed {
			k.wg.Go(func() { p.Stop(5 * time.Second) })
		}
		k.mu.Unlock()
		return
	}
	if pod.Spec.NodeName != k.node || pod.Status.Phase != corev1.PodRunning || pod.Status.PodIP == "" {
		return
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if _, started := k.procs[pod.UID]; started || k.closed || k.gone[pod.UID] {
		return
	}
	k.procs[pod.UID] = nil
	name, uid := pod.Name, pod.UID
	k.wg.Go(func() {
		if err := k.bringUp(name, uid); err != nil && k.ctx.Err() == nil {
			k.obs.problem("pod %s: %v", name, err)
		}
	})
}

// bringUp starts the pod's process, points the controller at it, waits for its
// /readyz and writes the pod Ready.
func (k *kubelet) bringUp(name string, uid types.UID) error {
	addr, err := k.pool.get()
	if err != nil {
		return err
	}
	p, err := k.start(name, uid, addr)
	if err != nil {
		k.pool.put(addr)
		return err
	}
	if p == nil {
		return nil // deleted meanwhile
	}
	k.obs.Mark(uid, func(v *podView) { v.X.ProcStarted = time.Now() })

	roleAddr := netip.AddrPortFrom(addr, uint16(k.rolePort)).String()
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{
		"uid":         uid, // fails rather than touch a same-named successor
		"annotations": map[string]string{role.RoleAddressAnnotation: roleAddr},
	}})
	if err != nil {
		return err
	}
	if _, err := k.cs.CoreV1().Pods(k.ns).Patch(k.ctx, name, types.MergePatchType, patch, metav1.PatchOptions{FieldManager: FieldManager}); err != nil {
		if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
			return nil
		}
		return fmt.Errorf("annotate %s=%s: %w", role.RoleAddressAnnotation, roleAddr, err)
	}

	if err := k.probe(p); err != nil {
		if errors.Is(err, errStopped) {
			return nil
		}
		return err
	}
	k.obs.Mark(uid, func(v *podView) { v.X.ProbeOK = time.Now() })
	sent, err := podstatus.Write(k.ctx, k.cs, k.ns, name, uid, FieldManager, podstatus.Ready)
	if err != nil {
		if apierrors.IsNotFound(err) || k.ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("write Ready: %w", err)
	}
	k.obs.Mark(uid, func(v *podView) { v.X.ReadyWritten = sent })
	return nil
}

// start starts the pod's process. It returns nil, nil if the pod went meanwhile.
func (k *kubelet) start(name string, uid types.UID, addr netip.Addr) (*proc, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.closed || k.gone[uid] {
		return nil, nil
	}
	ap, err := appproc.Start(appproc.Options{
		Bin: k.bin, Pod: name, UID: uid,
		RoleAddr:    netip.AddrPortFrom(addr, uint16(k.rolePort)),
		HTTPAddr:    netip.AddrPortFrom(addr, uint16(k.httpPort)),
		InitDelay:   k.initDelay,
		LogPath:     filepath.Join(k.logDir, name+".log"),
		OnRole:      func(c rolerecord.Change) { k.obs.appSaid(uid, c.At, c.Role, c.Epoch) },
		OnBadRecord: func(err error) { k.obs.problem("%v", err) },
		OnExit: func(ap *appproc.Proc) {
			k.obs.Mark(uid, func(v *podView) { v.X.ProcExited = time.Now() })
			if !ap.Expected() && k.ctx.Err() == nil {
				k.obs.problem("the process of pod %s exited by itself (%v); tail of %s:\n%s", name, ap.Err(), ap.LogPath(), child.Tail(ap.LogPath(), 10))
			}
			k.pool.put(addr)
		},
	})
	if err != nil {
		return nil, err
	}
	p := &proc{Proc: ap, uid: uid, addr: addr}
	k.procs[uid] = p
	return p, nil
}

// errStopped: the process was stopped on purpose (its pod went, or the tour ends)
// before it was ready.
var errStopped = errors.New("stopped")

// probe polls the process's /readyz until it answers 200.
func (k *kubelet) probe(p *proc) error {
	url := "http://" + netip.AddrPortFrom(p.addr, uint16(k.httpPort)).String() + "/readyz"
	err := poll.Until(k.ctx, k.probeTimeout, func() (bool, error) {
		select {
		case <-p.Done():
			if p.Expected() {
				return false, poll.Stop(errStopped)
			}
			return false, poll.Stop(fmt.Errorf("the process exited before /readyz answered 200; tail of %s:\n%s", p.LogPath(), child.Tail(p.LogPath(), 10)))
		default:
		}
		req, err := http.NewRequestWithContext(k.ctx, http.MethodGet, url, nil)
		if err != nil {
			return false, poll.Stop(err)
		}
		resp, err := k.http.Do(req)
		if err != nil {
			return false, err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return false, errors.New(resp.Status)
		}
		return true, nil
	})
	switch {
	case err == nil, errors.Is(err, errStopped):
		return err
	case k.ctx.Err() != nil:
		return errStopped
	case errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("%s not 200 within %s: %w", url, k.probeTimeout, err)
	}
	return err
}

// proc returns the process of a pod, or nil.
func (k *kubelet) proc(uid types.UID) *proc {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.procs[uid]
}

// kill kills a pod's process at once, as when a container crashes or is OOM-killed, and
// returns when it has been reaped.
func (k *kubelet) kill(uid types.UID) (time.Time, error) {
	p := k.proc(uid)
	if p == nil {
		return time.Time{}, errors.New("the pod has no process")
	}
	return p.Kill()
}

// shutdown stops every process and waits for everything the kubelet started.
func (k *kubelet) shutdown() {
	k.mu.Lock()
	k.closed = true
	var ps []*proc
	for _, p := range k.procs {
		if p != nil {
			ps = append(ps, p)
		}
	}
	k.mu.Unlock()
	var wg sync.WaitGroup
	for _, p := range ps {
		wg.Go(func() { p.Stop(5 * time.Second) })
	}
	wg.Wait()
	k.wg.Wait()
}
