package chaos

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/hapod/hapod/internal/dev/poll"
)

// view is the run's own current picture of every group, for deciding what
// to hit next and for waiting until a group has recovered. It is fed by the
// same watch and app reports as the recorder, but it is not the history:
// the check reads only the recorder's.
type view struct {
	mu      sync.Mutex
	changed chan struct{}                   // closed and replaced on every change
	pods    map[string]map[string]*podState // group → pod name →
	byUID   map[types.UID]*podState
	// activations are each group's app changes to active, in order.
	activations map[string][]AppChange
	roleLabel   string
	activeValue string
	groupLabel  string
	// synced is each namespace's highest sentinel token seen (see run.sync).
	synced map[string]int64
}

type podState struct {
	group, name, node  string
	uid                types.UID
	labelledActive     bool
	deleting, ready    bool
	gone               bool   // deleted from the API
	app                string // the app's last role ("" before any, Exited)
	epoch              uint64
	appAt              time.Time
	started, appExited bool
}

func newView(groupLabel, roleLabel, activeValue string) *view {
	return &view{changed: make(chan struct{}), pods: map[string]map[string]*podState{}, byUID: map[types.UID]*podState{},
		activations: map[string][]AppChange{}, synced: map[string]int64{}, roleLabel: roleLabel, activeValue: activeValue, groupLabel: groupLabel}
}

func (v *view) changedLocked() {
	close(v.changed)
	v.changed = make(chan struct{})
}

// pod takes a watch event.
func (v *view) pod(p *corev1.Pod, deleted bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if p.Labels[v.groupLabel] == sentinelApp {
		if n, err := strconv.ParseInt(p.Annotations[syncAnnotation], 10, 64); err == nil && n > v.synced[p.Namespace] {
			v.synced[p.Namespace] = n
		}
		v.changedLocked()
		return
	}
	g := groupOf(p, v.groupLabel)
	if v.pods[g] == nil {
		v.pods[g] = map[string]*podState{}
	}
	s := v.byUID[p.UID]
	if s == nil {
		s = &podState{group: g, name: p.Name, uid: p.UID}
		v.byUID[p.UID] = s
		v.pods[g][p.Name] = s
	}
	s.node = p.Spec.NodeName
	s.labelledActive = !deleted && p.Labels[v.roleLabel] == v.activeValue
	s.deleting = deleted || p.DeletionTimestamp != nil
	s.gone = deleted
	s.ready = false
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
			s.ready = true
		}
	}
	if deleted && s.appExited {
		delete(v.pods[g], p.Name)
	}
	v.changedLocked()
}

// app takes a role change an app reported, or its exit; it returns the
// pod's group and name ("" if the pod is unknown).
func (v *view) app(uid types.UID, c AppChange) (group, pod string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	s := v.byUID[uid]
	if s == nil {
		return "", ""
	}
	s.app, s.appAt = c.Role, c.At
	if c.Role == Exited {
		s.appExited = true
		if s.gone {
			delete(v.pods[s.group], s.name)
		}
	} else {
		s.epoch = c.Epoch
		s.started = true
	}
	if c.Role == RoleActive {
		c.Group, c.Pod = s.group, s.name
		v.activations[s.group] = append(v.activations[s.group], c)
	}
	v.changedLocked()
	return s.group, s.name
}

// target is what a fault in a group hits: copies, read without the lock.
type target struct {
	active   *podState   // labelled active, not deleting, its app active
	standbys []*podState // live, Ready, their apps standby
	epoch    uint64      // the group's newest epoch held by an app
}

// targetLocked describes a group; ok is false if it has no single active.
func (v *view) targetLocked(g string) (t target, ok bool) {
	t.epoch = v.topEpochLocked(g)
	for _, n := range slices.Sorted(maps.Keys(v.pods[g])) {
		s := v.pods[g][n]
		switch {
		case s.deleting || s.appExited:
		case s.labelledActive && s.app == RoleActive:
			if t.active != nil {
				return t, false
			}
			c := *s
			t.active = &c
		case s.ready && s.app == RoleStandby:
			c := *s
			t.standbys = append(t.standbys, &c)
		}
	}
	return t, t.active != nil
}

func (v *view) topEpochLocked(g string) uint64 {
	var top uint64
	for _, c := range v.activations[g] {
		top = max(top, c.Epoch)
	}
	return top
}

// settledLocked: exactly one pod of g labelled active, its app holding the
// role at the group's newest epoch, and no other app holding it. why says
// what is missing.
func (v *view) settledLocked(g string) (ok bool, why string) {
	top := v.topEpochLocked(g)
	var labelled, holding []string
	var acked bool
	for _, s := range v.pods[g] {
		if s.labelledActive && !s.deleting {
			labelled = append(labelled, s.name)
			acked = s.app == RoleActive && s.epoch == top
		}
		if s.app == RoleActive {
			holding = append(holding, s.name)
		}
	}
	switch {
	case len(labelled) != 1:
		return false, fmt.Sprintf("pods labelled active: %v", labelled)
	case !acked:
		return false, fmt.Sprintf("%s labelled active, its app not active at epoch %d", labelled[0], top)
	case len(holding) != 1:
		return false, fmt.Sprintf("apps holding the role: %v", holding)
	}
	return true, ""
}

// wholeLocked: settled, and replicas-1 live Ready pods whose apps are
// standby: the group can take the next fault.
func (v *view) wholeLocked(g string, replicas int) (ok bool, why string) {
	if ok, why := v.settledLocked(g); !ok {
		return false, why
	}
	t, _ := v.targetLocked(g)
	if len(t.standbys) < replicas-1 {
		return false, fmt.Sprintf("%d standbys Ready and told, want %d", len(t.standbys), replicas-1)
	}
	return true, ""
}

// tookOver is when the first app of g took the role at an epoch above
// epoch, at or after from.
func (v *view) tookOver(g string, epoch uint64) (string, time.Time) {
	v.mu.Lock()
	defer v.mu.Unlock()
	for _, c := range v.activations[g] {
		if c.Epoch > epoch {
			return c.Pod, c.At
		}
	}
	return "", time.Time{}
}

// waitFor waits until cond holds, re-checking on every change (and every
// 100 ms, for conditions that also depend on time), for at most timeout.
func (v *view) waitFor(ctx context.Context, timeout time.Duration, what string, cond func() (bool, string)) (time.Time, error) {
	var why string
	var at time.Time
	err := poll.Until(ctx, timeout, func() (bool, error) {
		v.mu.Lock()
		ok, w := cond()
		ch := v.changed
		v.mu.Unlock()
		if ok {
			at = time.Now()
			return true, nil
		}
		why = w
		select {
		case <-ch:
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
		return false, nil
	})
	if err != nil {
		return time.Time{}, fmt.Errorf("%s: not within %s (%s): %w", what, timeout, why, err)
	}
	return at, nil
}

// groupsLocked lists the groups.
func (v *view) groupsLocked() []string { return slices.Sorted(maps.Keys(v.pods)) }

// podsOnLocked lists the live pods on a node (copies).
func (v *view) podsOnLocked(node string) []*podState {
	var out []*podState
	for _, g := range v.groupsLocked() {
		for _, n := range slices.Sorted(maps.Keys(v.pods[g])) {
			if s := v.pods[g][n]; s.node == node && !s.gone {
				c := *s
				out = append(out, &c)
			}
		}
	}
	return out
}
