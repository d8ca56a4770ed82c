package tour

import (
	"errors"
	"fmt"
	"strconv"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/hapod/hapod/internal/config"
	"github.com/hapod/hapod/internal/dev/manifest"
	"github.com/hapod/hapod/pkg/role"
)

// ExternalReadinessAnnotation on a pod tells the local cluster's kwok to leave it not
// Ready: the tour writes Ready itself once the pod's process answers /readyz.
const ExternalReadinessAnnotation = role.ExternalReadinessAnnotation

// hostnameLabel pins the example's pods to the tour's node.
const hostnameLabel = "kubernetes.io/hostname"

// Example is the seed's example as shipped in deploy/example.
type Example struct {
	ReplicaSet *appsv1.ReplicaSet
	Service    *corev1.Service
}

// LoadExample reads the ReplicaSet and the Service of the kustomization in dir, as
// kubectl apply -k renders it (internal/dev/manifest).
func LoadExample(dir string) (*Example, error) {
	objs, err := manifest.Load(dir)
	if err != nil {
		return nil, fmt.Errorf("the example's manifests: %w", err)
	}
	ex := &Example{}
	for _, o := range objs {
		switch obj := o.Obj.(type) {
		case *appsv1.ReplicaSet:
			if ex.ReplicaSet != nil {
				return nil, fmt.Errorf("%s: a second ReplicaSet; the tour plays one", o)
			}
			ex.ReplicaSet = obj
		case *corev1.Service:
			if ex.Service != nil {
				return nil, fmt.Errorf("%s: a second Service; the tour plays one", o)
			}
			ex.Service = obj
		case *networkingv1.NetworkPolicy:
			// The local cluster has no CNI to enforce it (kwok's pods are
			// local processes), so the tour has nothing to apply it to.
		default:
			return nil, fmt.Errorf("%s is not part of the example the tour knows how to play", o)
		}
	}
	if ex.ReplicaSet == nil || ex.Service == nil {
		return nil, fmt.Errorf("%s: want a ReplicaSet and a Service among its resources", dir)
	}
	return ex, nil
}

// plan is the example as the tour applies it, and what the tour needs to know of it.
type plan struct {
	rs  *appsv1.ReplicaSet
	svc *corev1.Service
	// critical is the container whose death costs the pod; sidecar a non-critical one.
	critical, sidecar string
	// httpPort is the port the Service sends to (its targetPort in the critical
	// container); rolePort the container port named "role" (role.DefaultPort if none).
	httpPort, rolePort int
}

// forTour returns the example with the tour's additions: everything in namespace ns,
// the pods pinned to node and annotated for external readiness. The shipped objects are
// not changed.
func (e *Example) forTour(ns, node string, cfg config.Config) (*plan, error) {
	p := &plan{rs: e.ReplicaSet.DeepCopy(), svc: e.Service.DeepCopy(), rolePort: cfg.RolePort}
	p.rs.Namespace, p.svc.Namespace = ns, ns
	p.rs.APIVersion, p.rs.Kind = "apps/v1", "ReplicaSet"
	p.svc.APIVersion, p.svc.Kind = "v1", "Service"
	tmpl := &p.rs.Spec.Template
	if tmpl.Annotations == nil {
		tmpl.Annotations = map[string]string{}
	}
	tmpl.Annotations[ExternalReadinessAnnotation] = "true"
	if tmpl.Spec.NodeSelector == nil {
		tmpl.Spec.NodeSelector = map[string]string{}
	}
	tmpl.Spec.NodeSelector[hostnameLabel] = node

	if p.rs.Spec.Replicas != nil && *p.rs.Spec.Replicas < 2 {
		return nil, fmt.Errorf("the example's ReplicaSet has %d replicas; the scenes need an active and a standby", *p.rs.Spec.Replicas)
	}
	var crit *corev1.Container
	for i := range tmpl.Spec.Containers {
		c := &tmpl.Spec.Containers[i]
		isCritical := false
		for _, e := range c.Env {
			if e.Name == cfg.CriticalEnv && e.Value == cfg.CriticalValue {
				isCritical = true
			}
		}
		switch {
		case isCritical && crit == nil:
			crit = c
		case !isCritical && p.sidecar == "":
			p.sidecar = c.Name
		}
	}
	if crit == nil || p.sidecar == "" {
		return nil, fmt.Errorf("the example's pod template needs a critical container (env %s=%s) and a non-critical one", cfg.CriticalEnv, cfg.CriticalValue)
	}
	p.critical = crit.Name
	if len(p.svc.Spec.Ports) == 0 {
		return nil, fmt.Errorf("the example's Service %s has no port", p.svc.Name)
	}
	var err error
	if p.httpPort, err = containerPort(crit, p.svc.Spec.Ports[0].TargetPort, corev1.ProtocolTCP); err != nil {
		return nil, fmt.Errorf("the example's Service %s: %w", p.svc.Name, err)
	}
	if port, err := containerPort(crit, intstr.FromString("role"), corev1.ProtocolUDP); err == nil {
		p.rolePort = port
	}
	return p, nil
}

// containerPort resolves a Service targetPort (a number or a port name) in c.
func containerPort(c *corev1.Container, target intstr.IntOrString, proto corev1.Protocol) (int, error) {
	if target.Type == intstr.Int {
		if target.IntVal == 0 {
			return 0, errors.New("targetPort is not set")
		}
		return int(target.IntVal), nil
	}
	for _, p := range c.Ports {
		if p.Name == target.StrVal && (p.Protocol == proto || (p.Protocol == "" && proto == corev1.ProtocolTCP)) {
			return int(p.ContainerPort), nil
		}
	}
	return 0, fmt.Errorf("container %s has no %s port named %s", c.Name, proto, strconv.Quote(target.StrVal))
}
