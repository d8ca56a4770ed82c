package ownedslice

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
)

// ManagedBy is the endpointslice.kubernetes.io/managed-by value of hapod's
// slices. The kube-controller-manager's EndpointSlice controller leaves
// slices with any other value alone, and the controller's cache selects
// its own slices by it.
const ManagedBy = "hapod.io/controller"

// Suffix ends the name of a Service's owned slice: deterministic, so the
// controller gets, repairs and deletes it by name, and never has two.
const Suffix = "-hapod"

// Name is the name of the owned slice of the Service named service.
func Name(service string) string { return service + Suffix }

// ErrSelector refuses a Service with a selector: the kube-controller-manager
// would write its slice beside hapod's, and the Service would have two
// endpoints during a failover.
var ErrSelector = errors.New("service has a selector; owned data path needs a Service without one")

// ErrNoIPv4 refuses a Service that asks for IPv6 only (single-stack IPv4
// is all this package builds).
var ErrNoIPv4 = errors.New("service is IPv6-only; owned data path is IPv4 single-stack")

// Result is a built slice and what could not be put into it.
type Result struct {
	Slice *discoveryv1.EndpointSlice
	// Unresolved lists the Service ports whose named targetPort the
	// active pod does not declare: they are left out of the slice, as
	// the kube-controller-manager leaves them out, and worth a Warning.
	Unresolved []string
}

// Build returns the owned slice of svc with the single endpoint of the
// active pod, ready as given (election.EndpointReady decides it), or no
// endpoint at all when pod is nil or has no IPv4 address. Serving follows
// ready; terminating is the pod's deletion. The Service owns the slice
// (deleted with it), without blocking its deletion.
func Build(svc *corev1.Service, pod *corev1.Pod, ready bool) (Result, error) {
	if len(svc.Spec.Selector) > 0 {
		return Result{}, ErrSelector
	}
	if len(svc.Spec.IPFamilies) > 0 && !hasIPv4Family(svc.Spec.IPFamilies) {
		return Result{}, ErrNoIPv4
	}
	s := &discoveryv1.EndpointSlice{
		TypeMeta: metav1.TypeMeta{APIVersion: "discovery.k8s.io/v1", Kind: "EndpointSlice"},
		ObjectMeta: metav1.ObjectMeta{
			Name:      Name(svc.Name),
			Namespace: svc.Namespace,
			Labels: map[string]string{
				discoveryv1.LabelServiceName: svc.Name,
				discoveryv1.LabelManagedBy:   ManagedBy,
			},
			OwnerReferences: []metav1.OwnerReference{{
				APIVersion:         "v1",
				Kind:               "Service",
				Name:               svc.Name,
				UID:                svc.UID,
				Controller:         ptr.To(true),
				BlockOwnerDeletion: ptr.To(false),
			}},
		},
		AddressType: discoveryv1.AddressTypeIPv4,
		// Never nil: an empty list is what the API server returns, so a
		// comparison with the cached slice does not see a change.
		Ports:     []discoveryv1.EndpointPort{},
		Endpoints: []discoveryv1.Endpoint{},
	}
	ip := ipv4Of(pod)
	if !ip.IsValid() {
		return Result{Slice: s}, nil
	}
	var res Result
	for _, sp := range svc.Spec.Ports {
		port, ok := targetPort(sp, pod)
		if !ok {
			res.Unresolved = append(res.Unresolved, sp.Name)
			continue
		}
		s.Ports = append(s.Ports, discoveryv1.EndpointPort{
			Name:        ptr.To(sp.Name),
			Protocol:    ptr.To(protocolOf(sp.Protocol)),
			Port:        ptr.To(port),
			AppProtocol: sp.AppProtocol,
		})
	}
	ep := discoveryv1.Endpoint{
		Addresses: []string{ip.String()},
		Conditions: discoveryv1.EndpointConditions{
			Ready:       ptr.To(ready),
			Serving:     ptr.To(ready),
			Terminating: ptr.To(pod.DeletionTimestamp != nil),
		},
		TargetRef: &corev1.ObjectReference{Kind: "Pod", Namespace: pod.Namespace, Name: pod.Name, UID: pod.UID},
	}
	if pod.Spec.NodeName != "" {
		ep.NodeName = ptr.To(pod.Spec.NodeName)
	}
	s.Endpoints = append(s.Endpoints, ep)
	res.Slice = s
	return res, nil
}

// targetPort resolves a Service port against the pod: a numeric targetPort
// as is, none at all as the Service port, a named one as the pod's
// container port of that name and protocol (native sidecars included,
// since they run for the pod's whole life).
func targetPort(sp corev1.ServicePort, pod *corev1.Pod) (int32, bool) {
	tp := sp.TargetPort
	switch {
	case tp.Type == intstr.String && tp.StrVal != "":
		proto := protocolOf(sp.Protocol)
		for _, ctrs := range [][]corev1.Container{pod.Spec.Containers, pod.Spec.InitContainers} {
			for i := range ctrs {
				for _, cp := range ctrs[i].Ports {
					if cp.Name == tp.StrVal && protocolOf(cp.Protocol) == proto {
						return cp.ContainerPort, true
					}
				}
			}
		}
		return 0, false
	case tp.Type == intstr.Int && tp.IntVal != 0:
		return tp.IntVal, true
	default:
		return sp.Port, true
	}
}

// protocolOf defaults an unset protocol to TCP, as the API server does.
func protocolOf(p corev1.Protocol) corev1.Protocol {
	if p == "" {
		return corev1.ProtocolTCP
	}
	return p
}

func hasIPv4Family(fs []corev1.IPFamily) bool { return slices.Contains(fs, corev1.IPv4Protocol) }

// ipv4Of is the pod's first IPv4 address (status.podIPs, else podIP), or
// the zero Addr.
func ipv4Of(pod *corev1.Pod) netip.Addr {
	if pod == nil {
		return netip.Addr{}
	}
	ips := make([]string, 0, len(pod.Status.PodIPs)+1)
	for _, p := range pod.Status.PodIPs {
		ips = append(ips, p.IP)
	}
	ips = append(ips, pod.Status.PodIP)
	for _, s := range ips {
		if a, err := netip.ParseAddr(s); err == nil && a.Unmap().Is4() {
			return a.Unmap()
		}
	}
	return netip.Addr{}
}

// String describes a slice's endpoints for logs and test failures.
func String(s *discoveryv1.EndpointSlice) string {
	out := ""
	for _, e := range s.Endpoints {
		name := ""
		if e.TargetRef != nil {
			name = e.TargetRef.Name
		}
		out += fmt.Sprintf("[%s %v ready=%v]", name, e.Addresses, ptr.Deref(e.Conditions.Ready, false))
	}
	return out
}
