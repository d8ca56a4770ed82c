package chaos

import (
	"context"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"os/exec"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/hapod/hapod/internal/dev/localcluster"
	"github.com/hapod/hapod/internal/dev/poll"
	"github.com/hapod/hapod/internal/dev/realpod"
)

// realKinds are the faults only real nodes have. Each hits the active of
// the one group; r.one waits for the group to be whole before and settled
// after, as for the kwok phase's.
var realKinds = []kind{
	{"real-container-sigkilled", 2, inGroup, realContainerKilled},
	{"kubelet-containerd-stopped", 1, inGroup, kubeletStopped},
	{"pod-netns-cut", 2, inGroup, podNetnsCut},
}

// RealKinds lists the real phase's fault kinds, by name.
func RealKinds() []string {
	var out []string
	for _, k := range realKinds {
		out = append(out, k.name)
	}
	return out
}

// activePod is the group's active pod as the API has it now (its
// container statuses name the containers to hit).
func (r *run) activePod(ctx context.Context, f *Fault, g string) (*corev1.Pod, error) {
	t, err := r.targetOf(g)
	if err != nil {
		return nil, err
	}
	f.Target, f.From = t.active.name, t.active.name
	p, err := r.cs.CoreV1().Pods(t.active.namespace()).Get(ctx, t.active.name, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	if p.UID != t.active.uid {
		return nil, fmt.Errorf("pod %s was replaced", t.active.name)
	}
	return p, nil
}

// realContainerKilled: every process of the active's critical container is
// SIGKILLed. The kubelet reports it terminated (restartPolicy Never: it
// stays dead), hapod fails over and deletes the pod, the ReplicaSet
// replaces it.
func realContainerKilled(ctx context.Context, r *run, f *Fault, g string, _ *mrand.Rand) (func(), error) {
	p, err := r.activePod(ctx, f, g)
	if err != nil {
		return nil, err
	}
	at, pids, err := realpod.Kill(p, realpod.Critical)
	if err != nil {
		return nil, err
	}
	// A killed app writes nothing: its death ends its role.
	r.real.appExited(r, p.UID, p.Name, at)
	return nil, poll.Until(ctx, 10*time.Second, func() (bool, error) {
		if !realpod.Dead(pids) {
			return false, fmt.Errorf("processes %v of %s still alive", pids, p.Name)
		}
		return true, nil
	})
}

// kubeletStopped: the active's node's kubelet and containerd are killed
// (its containers run on, cut off from the API); once the node is
// NotReady and hapod has failed over (or, with no standby elsewhere, the
// node's pods are NotReady), both are started again and the node's pods
// must come back.
func kubeletStopped(ctx context.Context, r *run, f *Fault, g string, _ *mrand.Rand) (func(), error) {
	// The pods' nodes are read under the view's lock: its watch writes them.
	r.view.mu.Lock()
	t, ok := r.view.targetLocked(g)
	var name, active string
	elsewhere := false
	if ok {
		name, active = t.active.node, t.active.name
		for _, s := range t.standbys {
			elsewhere = elsewhere || s.node != name
		}
	}
	r.view.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("%s has no single active to hit", g)
	}
	var node *localcluster.RealNode
	for _, n := range r.real.o.Nodes.RealNodes() {
		if n.Name == name {
			node = n
		}
	}
	if node == nil {
		return nil, fmt.Errorf("the active %s is on %s, not a real node", active, name)
	}
	f.Target, f.From = name, active
	r.real.o.Nodes.StopRealNode(node)
	heal := func() {
		if err := r.real.o.Nodes.StartRealNode(ctx, node); err != nil {
			f.Err = errors.Join(errorsOf(f.Err), err).Error()
		}
	}
	// The node monitor grace (10 s on the test clusters, 50 s by default)
	// comes first: the bound allows for either.
	_, err := r.view.waitFor(ctx, 2*time.Minute, g+" off the stopped node", func() (bool, string) {
		if elsewhere {
			tt, ok := r.view.targetLocked(g)
			if !ok || tt.active.node == name {
				return false, "active still on " + name
			}
			return true, ""
		}
		for _, s := range r.view.podsOnLocked(name) {
			if s.ready {
				return false, s.name + " on " + name + " still Ready"
			}
		}
		return true, ""
	})
	return heal, err
}

// cutTable is the nftables table that cuts a pod's network namespace off:
// every packet in or out dropped, but for loopback. A table in the pod's
// own namespace, so nothing outside it changes, and it goes with the pod.
const cutTable = "hapod_chaos_cut"

const cutRules = `table inet ` + cutTable + ` {
	chain in { type filter hook input priority -300; policy drop; iifname "lo" accept; }
	chain out { type filter hook output priority -300; policy drop; oifname "lo" accept; }
}
`

// podNetnsCut: the active pod's network namespace is cut off for 1 to 2 s
// (role messages, renewals and the kubelet's probes all dropped), then
// restored. Its app's lease lapses and it fences itself; hapod fails over.
func podNetnsCut(ctx context.Context, r *run, f *Fault, g string, rng *mrand.Rand) (func(), error) {
	p, err := r.activePod(ctx, f, g)
	if err != nil {
		return nil, err
	}
	pids, err := realpod.PIDs(p, realpod.Critical)
	if err != nil {
		return nil, err
	}
	pid := strconv.Itoa(pids[0])
	if err := nsenterNft(ctx, pid, cutRules, "-f", "-"); err != nil {
		return nil, err
	}
	heal := func() {
		// The process may be gone with its namespace (the pod replaced):
		// then there is nothing left to restore.
		if err := nsenterNft(context.WithoutCancel(ctx), pid, "", "delete", "table", "inet", cutTable); err != nil && !realpod.Dead(pids) {
			f.Err = errors.Join(errorsOf(f.Err), err).Error()
		}
	}
	// The cut's length is drawn: it is the fault, not a wait for anything.
	return heal, poll.Pause(ctx, time.Second+upTo(rng, time.Second))
}

// nsenterNft runs nft in the network namespace of process pid (only that
// namespace: nft and its libraries come from this one's mounts).
func nsenterNft(ctx context.Context, pid, stdin string, args ...string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "nsenter", append([]string{"-t", pid, "-n", "nft"}, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("nsenter -t %s -n nft %s: %w: %s", pid, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
