// Package appkubelet plays the kubelet of a kwok node for the dev runs (the
// tour, the chaos run): for every pod that kwok makes Running on its node,
// it starts a real hapod-demo process (internal/dev/appproc) on a loopback
// address of its own, points the controller at it with the role-address
// annotation, writes the pod Ready once the process's /readyz answers 200,
// and stops the process when the pod goes. What happens to each pod is told
// through Hooks, so that every caller keeps its own account.
package appkubelet

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

// Options say which node to play and how to run its apps.
type Options struct {
	Client          kubernetes.Interface
	Namespace, Node string
	// Bin is hapod-demo; LogDir receives each app's log, named after its pod.
	Bin, LogDir string
	// Pool hands out the apps' addresses; HTTPPort and RolePort are the
	// ports every app binds on its own address.
	Pool               *AddrPool
	HTTPPort, RolePort int
	// InitDelay is hapod-demo's -init-delay.
	InitDelay time.Duration
	// AppArgs are more hapod-demo flags (role keys, for example).
	AppArgs []string
	// FieldManager names this kubelet's writes.
	FieldManager string
	// Advertise returns the role address to annotate the pod with, for the
	// app that listens at app: something between the controller and the
	// app (a lossy relay) goes there. Nil: the app's own address.
	Advertise func(pod string, uid types.UID, app netip.AddrPort) (netip.AddrPort, error)
	Hooks     Hooks
}

// Hooks are told what happens to each pod's process; any may be nil. They
// are called from the kubelet's goroutines and must not block.
type Hooks struct {
	// Started: the process runs; ProbeOK: its /readyz answered 200;
	// ReadyWritten: the Ready status write was sent; Exited: it was reaped.
	Started, ProbeOK, ReadyWritten, Exited func(uid types.UID, at time.Time)
	// Role gets every role change the app reported, in order.
	Role func(uid types.UID, c rolerecord.Change)
	// Problem gets what went wrong outside the caller's own steps: a
	// process that died by itself, a write that failed.
	Problem func(msg string)
}

// Kubelet plays the kubelet of one kwok node.
type Kubelet struct {
	o   Options
	ctx context.Context // the run's lifetime: ends every bring-up
	// probeTimeout bounds the wait for a process's /readyz.
	probeTimeout time.Duration
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

// New returns a kubelet for o.Node; feed it the namespace's pod events with
// Handle. ctx bounds every bring-up.
func New(ctx context.Context, o Options) *Kubelet {
	return &Kubelet{
		o: o, ctx: ctx, probeTimeout: 30*time.Second + o.InitDelay,
		http:  &http.Client{Timeout: time.Second, Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}},
		procs: map[types.UID]*proc{}, gone: map[types.UID]bool{},
	}
}

func (k *Kubelet) problem(format string, args ...any) {
	if k.o.Hooks.Problem != nil {
		k.o.Hooks.Problem(fmt.Sprintf(format, args...))
	}
}

func mark(f func(types.UID, time.Time), uid types.UID, at time.Time) {
	if f != nil {
		f(uid, at)
	}
}

// Handle reacts to a pod event; it never blocks the watch.
func (k *Kubelet) Handle(pod *corev1.Pod, deleted bool) {
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
	if pod.Spec.NodeName != k.o.Node || pod.Status.Phase != corev1.PodRunning || pod.Status.PodIP == "" {
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
			k.problem("pod %s: %v", name, err)
		}
	})
}

// bringUp starts the pod's process, points the controller at it, waits for its
// /readyz and writes the pod Ready.
func (k *Kubelet) bringUp(name string, uid types.UID) error {
	addr, err := k.o.Pool.Get()
	if err != nil {
		return err
	}
	p, err := k.start(name, uid, addr)
	if err != nil {
		k.o.Pool.Put(addr)
		return err
	}
	if p == nil {
		return nil // deleted meanwhile
	}
	mark(k.o.Hooks.Started, uid, time.Now())

	roleAddr := netip.AddrPortFrom(addr, uint16(k.o.RolePort))
	if k.o.Advertise != nil {
		if roleAddr, err = k.o.Advertise(name, uid, roleAddr); err != nil {
			return err
		}
	}
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{
		"uid":         uid, // fails rather than touch a same-named successor
		"annotations": map[string]string{role.RoleAddressAnnotation: roleAddr.String()},
	}})
	if err != nil {
		return err
	}
	if _, err := k.o.Client.CoreV1().Pods(k.o.Namespace).Patch(k.ctx, name, types.MergePatchType, patch, metav1.PatchOptions{FieldManager: k.o.FieldManager}); err != nil {
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
	mark(k.o.Hooks.ProbeOK, uid, time.Now())
	sent, err := podstatus.Write(k.ctx, k.o.Client, k.o.Namespace, name, uid, k.o.FieldManager, podstatus.Ready)
	if err != nil {
		if apierrors.IsNotFound(err) || k.ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("write Ready: %w", err)
	}
	mark(k.o.Hooks.ReadyWritten, uid, sent)
	return nil
}

// start starts the pod's process. It returns nil, nil if the pod went meanwhile.
func (k *Kubelet) start(name string, uid types.UID, addr netip.Addr) (*proc, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.closed || k.gone[uid] {
		return nil, nil
	}
	ap, err := appproc.Start(appproc.Options{
		Bin: k.o.Bin, Pod: name, UID: uid,
		RoleAddr:  netip.AddrPortFrom(addr, uint16(k.o.RolePort)),
		HTTPAddr:  netip.AddrPortFrom(addr, uint16(k.o.HTTPPort)),
		InitDelay: k.o.InitDelay,
		Args:      k.o.AppArgs,
		LogPath:   filepath.Join(k.o.LogDir, name+".log"),
		OnRole: func(c rolerecord.Change) {
			if k.o.Hooks.Role != nil {
				k.o.Hooks.Role(uid, c)
			}
		},
		OnBadRecord: func(err error) { k.problem("%v", err) },
		OnExit: func(ap *appproc.Proc) {
			mark(k.o.Hooks.Exited, uid, time.Now())
			if !ap.Expected() && k.ctx.Err() == nil {
				k.problem("the process of pod %s exited by itself (%v); tail of %s:\n%s", name, ap.Err(), ap.LogPath(), child.Tail(ap.LogPath(), 10))
			}
			k.o.Pool.Put(addr)
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
func (k *Kubelet) probe(p *proc) error {
	url := "http://" + netip.AddrPortFrom(p.addr, uint16(k.o.HTTPPort)).String() + "/readyz"
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

// Proc returns the process of a pod, or nil.
func (k *Kubelet) Proc(uid types.UID) *appproc.Proc {
	k.mu.Lock()
	defer k.mu.Unlock()
	if p := k.procs[uid]; p != nil {
		return p.Proc
	}
	return nil
}

// Kill kills a pod's process at once, as when a container crashes or is OOM-killed, and
// returns when it has been reaped.
func (k *Kubelet) Kill(uid types.UID) (time.Time, error) {
	p := k.Proc(uid)
	if p == nil {
		return time.Time{}, errors.New("the pod has no process")
	}
	return p.Kill()
}

// Shutdown stops every process and waits for everything the kubelet started.
func (k *Kubelet) Shutdown() {
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

// Running lists the pods whose processes have not exited (after Shutdown:
// what was left behind).
func (k *Kubelet) Running() []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	var out []string
	for _, p := range k.procs {
		if p == nil {
			continue
		}
		select {
		case <-p.Done():
		default:
			out = append(out, p.Pod())
		}
	}
	return out
}
