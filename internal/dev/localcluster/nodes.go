package localcluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/hapod/hapod/internal/dev/poll"
	"github.com/hapod/hapod/internal/election"
	"github.com/hapod/hapod/pkg/role"
)

// KwokNodeAnnotation marks the nodes kwok manages (value "fake").
const KwokNodeAnnotation = "kwok.x-k8s.io/node"

// FieldManager names this package (and the test helpers) in managed fields.
const FieldManager = "hapod-localcluster"

// NewNode returns a kwok node: annotated and labelled as kwok's own nodes are, without
// taints, with the given pod CIDR (kwok takes pod IPs from it; empty means kwok's
// fallback range 127.63.0.0/16).
func NewNode(name, podCIDR string) *corev1.Node {
	n := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name: name,
			Annotations: map[string]string{
				KwokNodeAnnotation:             "fake",
				"node.alpha.kubernetes.io/ttl": "0",
			},
			Labels: map[string]string{
				"type":                          "kwok",
				"kubernetes.io/hostname":        name,
				"kubernetes.io/os":              "linux",
				"kubernetes.io/arch":            "amd64",
				"kubernetes.io/role":            "agent",
				"node-role.kubernetes.io/agent": "",
			},
		},
	}
	if podCIDR != "" {
		n.Spec.PodCIDR = podCIDR
		n.Spec.PodCIDRs = []string{podCIDR}
	}
	return n
}

// CreateNode creates a kwok node (see NewNode) and waits until it is Ready and
// untainted, so the scheduler places pods on it.
func CreateNode(ctx context.Context, client kubernetes.Interface, name, podCIDR string) (*corev1.Node, error) {
	if _, err := client.CoreV1().Nodes().Create(ctx, NewNode(name, podCIDR), metav1.CreateOptions{FieldManager: FieldManager}); err != nil {
		return nil, fmt.Errorf("create node %s: %w", name, err)
	}
	n, err := WaitNodeReady(ctx, client, name)
	if err != nil {
		return nil, err
	}
	if podCIDR != "" {
		if err := warmIPPool(ctx, client, name); err != nil {
			return nil, err
		}
	}
	return n, nil
}

// warmIPPool has kwok hand out one IP on a new node before anyone else
// does. kwok v0.8.0 creates a node's IP pool on first use without a lock
// (Load, then Store), so two pods starting together on a fresh node can both
// get its first address; one pod first, alone, makes the pool exist.
func warmIPPool(ctx context.Context, client kubernetes.Interface, node string) error {
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{GenerateName: "ip-pool-warmup-", Labels: map[string]string{role.IPPoolWarmupLabel: node}},
		Spec: corev1.PodSpec{
			NodeName:                     node,
			AutomountServiceAccountToken: new(false),
			Containers:                   []corev1.Container{{Name: "warmup", Image: "warmup"}},
		},
	}
	pods := client.CoreV1().Pods(metav1.NamespaceDefault)
	var created *corev1.Pod
	err := poll.Until(ctx, time.Hour, func() (bool, error) { // bounded by ctx
		var got *corev1.Pod
		var err error
		if created == nil {
			// Refused until kube-controller-manager made the namespace's
			// default ServiceAccount, right after a cluster starts.
			got, err = pods.Create(ctx, pod, metav1.CreateOptions{FieldManager: FieldManager})
		} else {
			got, err = pods.Get(ctx, created.Name, metav1.GetOptions{})
		}
		if err != nil {
			return false, err
		}
		created = got
		return created.Status.PodIP != "", nil
	})
	if err != nil {
		return fmt.Errorf("node %s: warm-up pod got no IP: %w", node, err)
	}
	if err := pods.Delete(ctx, created.Name, metav1.DeleteOptions{GracePeriodSeconds: new(int64(0))}); err != nil {
		return fmt.Errorf("node %s: delete warm-up pod: %w", node, err)
	}
	return nil
}

// WaitNodeReady waits until the node's Ready condition is True and it has no taints (the
// API server taints a new node not-ready; the node lifecycle controller lifts the taint
// once kwok has made it Ready).
func WaitNodeReady(ctx context.Context, client kubernetes.Interface, name string) (*corev1.Node, error) {
	var n *corev1.Node
	err := poll.Until(ctx, time.Hour, func() (bool, error) { // bounded by ctx
		var err error
		switch n, err = client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{}); {
		case err != nil:
			return false, err
		case election.NodeReadyStatus(n) != corev1.ConditionTrue:
			return false, errors.New("not Ready")
		case len(n.Spec.Taints) > 0:
			return false, fmt.Errorf("ready but tainted %v", n.Spec.Taints)
		}
		return true, nil
	})
	if err != nil {
		return nil, fmt.Errorf("node %s not Ready and untainted: %w; is kwok running?", name, err)
	}
	return n, nil
}

// FailNode makes a node fail as a dead kubelet's would: kwok stops managing
// it (no more heartbeats), and its Ready condition turns Unknown with the
// reason the node lifecycle controller gives, written at once instead of
// after the node-monitor grace period. It returns when the Ready write was
// sent: the moment the node failed, for anyone timing what follows.
func FailNode(ctx context.Context, client kubernetes.Interface, name string) (time.Time, error) {
	unmanage := []byte(`{"metadata":{"annotations":{"` + KwokNodeAnnotation + `":null}}}`)
	if _, err := client.CoreV1().Nodes().Patch(ctx, name, types.MergePatchType, unmanage, metav1.PatchOptions{FieldManager: FieldManager}); err != nil {
		return time.Time{}, fmt.Errorf("stop kwok managing node %s: %w", name, err)
	}
	now := metav1.Now()
	status, err := json.Marshal(map[string]any{"status": map[string]any{"conditions": []corev1.NodeCondition{{
		Type: corev1.NodeReady, Status: corev1.ConditionUnknown, Reason: "NodeStatusUnknown",
		Message: "Kubelet stopped posting node status.", LastHeartbeatTime: now, LastTransitionTime: now,
	}}}})
	if err != nil {
		return time.Time{}, err
	}
	sent := time.Now()
	if _, err := client.CoreV1().Nodes().Patch(ctx, name, types.StrategicMergePatchType, status, metav1.PatchOptions{FieldManager: FieldManager}, "status"); err != nil {
		return time.Time{}, fmt.Errorf("mark node %s NotReady: %w", name, err)
	}
	return sent, nil
}
