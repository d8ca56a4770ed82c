package tour

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/hapod/hapod/internal/controller"
	"github.com/hapod/hapod/internal/dev/appkubelet"
	"github.com/hapod/hapod/internal/dev/observe"
	"github.com/hapod/hapod/internal/dev/rolerecord"
	"github.com/hapod/hapod/internal/record"
)

// podExtra is the tour's own part of a pod's view: what its kubelet did (ReadyWritten
// is when the Ready status write was sent) and what its process reported.
type podExtra struct {
	ProcStarted, ProbeOK, ReadyWritten, ProcExited time.Time
	App                                            []appChange
}

// podView is what the tour knows of one pod.
type podView = observe.Pod[podExtra]

// appChange is a role change that a pod's process reported (-role-records), timed by
// the process: when its listener accepted the message.
type appChange struct {
	At    time.Time
	Role  string
	Epoch uint64
}

// appSaidAt is when the pod's process first reported role (at epoch, any if 0), or zero.
func appSaidAt(p *podView, role string, epoch uint64) time.Time {
	for _, c := range p.X.App {
		if c.Role == role && (epoch == 0 || c.Epoch == epoch) {
			return c.At
		}
	}
	return time.Time{}
}

// appRole is the last role the pod's process reported ("" before any).
func appRole(p *podView) (string, uint64) {
	if len(p.X.App) == 0 {
		return "", 0
	}
	c := p.X.App[len(p.X.App)-1]
	return c.Role, c.Epoch
}

// observer is the tour's view of the cluster (internal/dev/observe: the namespace's
// pods, the Service's EndpointSlices, the controller's Events) plus what the tour adds
// under the same lock: the controller's failover records and the problems seen outside
// the scenes' own steps.
type observer struct {
	*observe.Observer[podExtra]
	cfg      observe.Config
	records  []record.Record
	problems []string
}

func newObserver(ns, roleLabel, activeValue, service string) *observer {
	return &observer{cfg: observe.Config{
		Namespace: ns, Service: service, EventsFrom: controller.FieldOwner,
		RoleLabel: roleLabel, ActiveValue: activeValue,
	}}
}

// start watches until ctx ends, and returns once the caches are synced; onPod is
// called for every pod event.
func (o *observer) start(ctx context.Context, cs kubernetes.Interface, onPod func(pod *corev1.Pod, deleted bool)) error {
	cfg := o.cfg
	cfg.OnPod = onPod
	obs, err := observe.Start[podExtra](ctx, cs, cfg)
	if err != nil {
		return err
	}
	o.Observer = obs
	return nil
}

// shutdown waits for the watches to end.
func (o *observer) shutdown() {
	if o.Observer != nil {
		o.Stop()
	}
}

// recorded adds one of the controller's failover records.
func (o *observer) recorded(r record.Record) {
	o.Update(func() { o.records = append(o.records, r) })
}

// recordLocked is the controller's record of pod uid's promotion to epoch.
func (o *observer) recordLocked(uid types.UID, epoch uint64) (record.Record, bool) {
	for _, r := range o.records {
		if types.UID(r.UID) == uid && r.Epoch == epoch {
			return r, true
		}
	}
	return record.Record{}, false
}

// promotionsSinceLocked are the controller's records of promotions it saw the trigger
// of after t.
func (o *observer) promotionsSinceLocked(t time.Time) []record.Record {
	var rs []record.Record
	for _, r := range o.records {
		if r.Seen.After(t) {
			rs = append(rs, r)
		}
	}
	return rs
}

// problem records something that went wrong outside the scenes' own steps (a process
// that died by itself, a write that failed), for the error of a wait that then fails.
func (o *observer) problem(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	o.Update(func() { o.problems = append(o.problems, msg) })
}

// kubeletHooks record what the tour's kubelet did to each pod, and the
// role changes the pods' processes reported, in the pods' views.
func (o *observer) kubeletHooks() appkubelet.Hooks {
	at := func(f func(x *podExtra, t time.Time)) func(types.UID, time.Time) {
		return func(uid types.UID, t time.Time) { o.Mark(uid, func(p *podView) { f(&p.X, t) }) }
	}
	return appkubelet.Hooks{
		Started:      at(func(x *podExtra, t time.Time) { x.ProcStarted = t }),
		ProbeOK:      at(func(x *podExtra, t time.Time) { x.ProbeOK = t }),
		ReadyWritten: at(func(x *podExtra, t time.Time) { x.ReadyWritten = t }),
		Exited:       at(func(x *podExtra, t time.Time) { x.ProcExited = t }),
		Role: func(uid types.UID, c rolerecord.Change) {
			o.Mark(uid, func(p *podView) { p.X.App = append(p.X.App, appChange{At: c.At, Role: c.Role, Epoch: c.Epoch}) })
		},
		Problem: func(msg string) { o.problem("%s", msg) },
	}
}

// errInterrupted wraps the context's error when the tour is stopped during a wait.
var errInterrupted = errors.New("interrupted")

// waitFor is observe's WaitFor, with the problems seen meanwhile in its error.
func (o *observer) waitFor(ctx context.Context, timeout time.Duration, what string, cond func() (ok bool, why string)) error {
	err := o.WaitFor(ctx, timeout, what, cond)
	switch {
	case err == nil:
		return nil
	case ctx.Err() != nil:
		return fmt.Errorf("%w while waiting for %s", errInterrupted, what)
	}
	var problems []string
	o.Read(func() { problems = slices.Clone(o.problems) })
	if len(problems) > 0 {
		return fmt.Errorf("%w; meanwhile: %s", err, strings.Join(problems, "; "))
	}
	return err
}

// routeTable is what the load needs: the Service's endpoints, its port, and the
// loopback address of each pod IP.
func (o *observer) routeTable() ([]observe.Endpoint, int, map[string]netip.Addr) {
	var (
		eps  []observe.Endpoint
		port int
		m    = map[string]netip.Addr{}
	)
	o.Read(func() {
		s := o.LastSliceLocked()
		eps, port = s.Endpoints, s.Port
		for _, p := range o.PodsLocked() {
			// A pod's process listens once it was started; the IP of a deleted pod may
			// have been handed to another.
			if p.IP != "" && p.Loopback.IsValid() && !p.X.ProcStarted.IsZero() {
				m[p.IP] = p.Loopback
			}
		}
	})
	return eps, port, m
}

// describeLocked summarises the state for error messages.
func (o *observer) describeLocked() string {
	var parts []string
	for _, p := range o.LiveLocked() {
		r, e := appRole(p)
		parts = append(parts, fmt.Sprintf("%s[label %s epoch %d, ready %t, app %s/%d]", p.Name, p.Role, p.Epoch, p.Ready, r, e))
	}
	return fmt.Sprintf("pods %s; EndpointSlice ready %v", strings.Join(parts, " "), o.LastSliceLocked().ReadyIPs())
}
