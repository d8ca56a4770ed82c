package bench

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/types"

	"github.com/hapod/hapod/internal/dev/appproc"
	"github.com/hapod/hapod/internal/dev/rolerecord"
	"github.com/hapod/hapod/pkg/role"
)

// procApps are apps that run as processes of their own (hapod-demo, through
// internal/dev/appproc), one per pod, so that a kill is a real SIGKILL. Each
// app's role comes from its own reports; every interval in which an app
// held the active role is kept, so that the run can check that no two
// overlap.
type procApps struct {
	bin, logDir string
	board       board

	mu    sync.Mutex
	byPod map[string]*procApp
	done  []interval // the active intervals of apps that went
}

type procApp struct {
	p    *appproc.Proc
	role role.Role
	open time.Time  // start of its current active interval, if any
	ivs  []interval // its closed active intervals
}

// interval is a span in which one app held the active role.
type interval struct {
	pod      string
	from, to time.Time
}

func newProcApps(bin, logDir string) *procApps {
	return &procApps{bin: bin, logDir: logDir, byPod: map[string]*procApp{}}
}

// start starts the app of a pod that exists.
func (a *procApps) start(pod string, uid types.UID, roleAddr, httpAddr netip.AddrPort) error {
	if !roleAddr.Addr().IsLoopback() || !httpAddr.Addr().IsLoopback() {
		return fmt.Errorf("app addresses %s, %s are not loopback", roleAddr, httpAddr)
	}
	if err := os.MkdirAll(a.logDir, 0o755); err != nil {
		return err
	}
	pa := &procApp{}
	a.mu.Lock()
	a.byPod[pod] = pa
	a.mu.Unlock()
	p, err := appproc.Start(appproc.Options{
		Bin: a.bin, Pod: pod, UID: uid, RoleAddr: roleAddr, HTTPAddr: httpAddr,
		LogPath: filepath.Join(a.logDir, pod+".log"),
		OnRole:  func(c rolerecord.Change) { a.said(pa, c) },
	})
	if err != nil {
		a.mu.Lock()
		delete(a.byPod, pod)
		a.mu.Unlock()
		return err
	}
	a.mu.Lock()
	pa.p = p
	a.mu.Unlock()
	return nil
}

// said records a role change an app reported.
func (a *procApps) said(pa *procApp, c rolerecord.Change) {
	a.mu.Lock()
	r := role.Role(c.Role)
	switch {
	case r == role.Active && pa.open.IsZero():
		pa.open = c.At
	case r != role.Active && !pa.open.IsZero():
		pa.ivs = append(pa.ivs, interval{from: pa.open, to: c.At})
		pa.open = time.Time{}
	}
	pa.role = r
	a.mu.Unlock()
	a.board.bump()
}

// holds is the role the pod's app last reported ("" if none or no app).
func (a *procApps) holds(pod string) role.Role {
	a.mu.Lock()
	defer a.mu.Unlock()
	if pa, ok := a.byPod[pod]; ok {
		return pa.role
	}
	return ""
}

// activeAfter is the first moment at or after t at which the pod's app took
// the active role (zero if it has not).
func (a *procApps) activeAfter(pod string, t time.Time) time.Time {
	a.mu.Lock()
	defer a.mu.Unlock()
	pa, ok := a.byPod[pod]
	if !ok {
		return time.Time{}
	}
	for _, iv := range pa.ivs {
		if !iv.from.Before(t) {
			return iv.from
		}
	}
	if !pa.open.IsZero() && !pa.open.Before(t) {
		return pa.open
	}
	return time.Time{}
}

// kill SIGKILLs the pod's app and returns the moment just before the
// signal; an active interval it had ends there.
func (a *procApps) kill(pod string) (time.Time, error) {
	a.mu.Lock()
	pa, ok := a.byPod[pod]
	delete(a.byPod, pod)
	a.mu.Unlock()
	if !ok || pa.p == nil {
		return time.Time{}, fmt.Errorf("pod %s has no app", pod)
	}
	at, err := pa.p.Kill()
	a.retire(pod, pa, at)
	return at, err
}

// retire keeps a gone app's intervals, its open one ending at end.
func (a *procApps) retire(pod string, pa *procApp, end time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !pa.open.IsZero() {
		pa.ivs = append(pa.ivs, interval{from: pa.open, to: end})
		pa.open = time.Time{}
	}
	for _, iv := range pa.ivs {
		iv.pod = pod
		a.done = append(a.done, iv)
	}
}

// stopAll stops every app.
func (a *procApps) stopAll() {
	a.mu.Lock()
	all := a.byPod
	a.byPod = map[string]*procApp{}
	a.mu.Unlock()
	var wg sync.WaitGroup
	for pod, pa := range all {
		if pa.p == nil {
			continue
		}
		wg.Go(func() {
			pa.p.Stop(5 * time.Second)
			a.retire(pod, pa, time.Now())
		})
	}
	wg.Wait()
}

// intervals are every active interval so far, the live apps' open ones
// ending now.
func (a *procApps) intervals() []interval {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := slices.Clone(a.done)
	now := time.Now()
	for pod, pa := range a.byPod {
		for _, iv := range pa.ivs {
			iv.pod = pod
			out = append(out, iv)
		}
		if !pa.open.IsZero() {
			out = append(out, interval{pod: pod, from: pa.open, to: now})
		}
	}
	return out
}

// overlaps counts the pairs of intervals of different apps that overlap:
// moments at which two apps held the active role at once.
func overlaps(ivs []interval) int {
	s := slices.Clone(ivs)
	slices.SortFunc(s, func(x, y interval) int { return x.from.Compare(y.from) })
	n := 0
	for i := range s {
		for j := i + 1; j < len(s) && s[j].from.Before(s[i].to); j++ {
			if s[j].pod != s[i].pod {
				n++
			}
		}
	}
	return n
}
