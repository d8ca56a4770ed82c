package controller_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/hapod/hapod/internal/controller"
	"github.com/hapod/hapod/pkg/role"
)

// faultyClient sits between the reconciler and the real API server and
// injects faults into pod PATCHes that set the role label.
type faultyClient struct {
	client.Client
	mu    sync.Mutex
	fault func(ctx context.Context, pod, roleValue string, next func() error) error
}

func (c *faultyClient) Patch(ctx context.Context, obj client.Object, p client.Patch, opts ...client.PatchOption) error {
	next := func() error { return c.Client.Patch(ctx, obj, p, opts...) }
	data, _ := p.Data(obj)
	var m struct {
		Metadata struct {
			Labels map[string]string `json:"labels"`
		} `json:"metadata"`
	}
	_ = json.Unmarshal(data, &m)
	c.mu.Lock()
	fault := c.fault
	c.mu.Unlock()
	if fault == nil || m.Metadata.Labels["role"] == "" {
		return next()
	}
	return fault(ctx, obj.GetName(), m.Metadata.Labels["role"], next)
}

func (c *faultyClient) set(f func(ctx context.Context, pod, roleValue string, next func() error) error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.fault = f
}

// A failover through a faulty API server (the old active not Ready; every role write 100 ms slow,
// the old active's demotion refused twice with a 500, the new active's
// promotion committed but answered with a connection reset) ends with the
// new active's app active at the epoch its label carries, the old one's
// app standby at that epoch, never two apps active, never two labels.
func TestFailoverThroughFaultyAPIServer(t *testing.T) {
	e := newEnv(t)
	e.cfg.NotReadyGrace = 500 * time.Millisecond
	e.history = &controller.AppHistory{}
	fc := &faultyClient{}
	e.wrapClient = func(c client.Client) client.Client { fc.Client = c; return fc }
	e.neverTwoActive("hapod")
	e.replicaSet("hapod", 2)
	ls := e.listeners(e.runningPods("hapod", 2))
	e.startController()
	first := e.active("hapod")
	waitRole(t, ls[first.Name], role.Active, epochOf(first))

	demoteFailures := 2
	promoted := false
	fc.set(func(ctx context.Context, pod, roleValue string, next func() error) error {
		select {
		case <-time.After(100 * time.Millisecond): // injected latency
		case <-ctx.Done():
			return ctx.Err()
		}
		if pod == first.Name && roleValue == "standby" && demoteFailures > 0 {
			demoteFailures--
			return apierrors.NewInternalError(errors.New("etcdserver: request timed out"))
		}
		err := next()
		if pod != first.Name && roleValue == "active" && !promoted && err == nil {
			promoted = true
			return errors.New("read tcp 127.0.0.1:40000->127.0.0.1:6443: read: connection reset by peer")
		}
		return err
	})
	// Not Ready past the grace: the old active stays, alive, and must be
	// fenced (kwok would remove a deleted pod before the switch).
	setReady(t, e, first.Name, corev1.ConditionFalse)
	second := e.active("hapod", first.Name)
	if want := epochOf(first) + 1; epochOf(second) != want {
		t.Errorf("new active at epoch %d, want %d: retries must not advance the epoch", epochOf(second), want)
	}
	waitRole(t, ls[second.Name], role.Active, epochOf(second))
	waitRole(t, ls[first.Name], role.Standby, epochOf(second))
	e.hasEvent(first.Name, controller.ReasonSwitchStuck)
	// The app keeps what its label says: no stale loop.
	stays(t, time.Second, func() error {
		if s := ls[second.Name].State(); s.Role != role.Active || s.Epoch != epochOf(second) {
			return fmt.Errorf("the new active's app left active@%d: holds %s@%d", epochOf(second), s.Role, s.Epoch)
		}
		return nil
	})
	e.history.Check(t)
}
