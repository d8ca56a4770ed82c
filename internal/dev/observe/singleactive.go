package observe

import (
	"fmt"
	"sync"

	corev1 "k8s.io/api/core/v1"
)

// SingleActive follows pods' role labels, one watch event at a time in the
// order the watch delivered them, and keeps the first moment two pods were
// labelled active: a pod is active from an event that shows it labelled
// Label=Value until one that shows it otherwise or deleted. Its methods are
// safe for concurrent use.
type SingleActive struct {
	Label, Value string

	mu        sync.Mutex
	active    map[string]bool
	violation string
}

// See takes one watch event of a pod.
func (c *SingleActive) See(p *corev1.Pod, deleted bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.active == nil {
		c.active = map[string]bool{}
	}
	if deleted || p.Labels[c.Label] != c.Value {
		delete(c.active, p.Name)
	} else {
		c.active[p.Name] = true
	}
	if len(c.active) > 1 && c.violation == "" {
		c.violation = fmt.Sprintf("two pods labelled %s=%s at resourceVersion %s: %v", c.Label, c.Value, p.ResourceVersion, c.active)
	}
}

// Violation describes the first moment two pods were labelled active, ""
// if there was none.
func (c *SingleActive) Violation() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.violation
}
