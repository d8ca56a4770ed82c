package ownedslice

import (
	"errors"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
)

func service(ports ...corev1.ServicePort) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "ns", UID: "svc-uid"},
		Spec:       corev1.ServiceSpec{Ports: ports},
	}
}

func activePod() *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web-a", Namespace: "ns", UID: "pod-uid"},
		Spec: corev1.PodSpec{
			NodeName: "n1",
			Containers: []corev1.Container{{Name: "app", Ports: []corev1.ContainerPort{
				{Name: "http", ContainerPort: 8080},
				{Name: "dns", ContainerPort: 5353, Protocol: corev1.ProtocolUDP},
			}}},
			InitContainers: []corev1.Container{{Name: "proxy", Ports: []corev1.ContainerPort{{Name: "admin", ContainerPort: 9901}}}},
		},
		Status: corev1.PodStatus{PodIP: "10.0.0.7", PodIPs: []corev1.PodIP{{IP: "10.0.0.7"}}},
	}
}

func TestTargetPort(t *testing.T) {
	cases := []struct {
		name string
		sp   corev1.ServicePort
		want int32
		ok   bool
	}{
		// No targetPort: the Service port itself.
		{"missing", corev1.ServicePort{Port: 80}, 80, true},
		// Numeric: as is.
		{"numeric", corev1.ServicePort{Port: 80, TargetPort: intstr.FromInt32(8081)}, 8081, true},
		// Named: the container port of that name (protocol TCP by default).
		{"named", corev1.ServicePort{Port: 80, TargetPort: intstr.FromString("http")}, 8080, true},
		// Named in a (native sidecar) init container.
		{"named in init container", corev1.ServicePort{Port: 9, TargetPort: intstr.FromString("admin")}, 9901, true},
		// Named with a protocol: the name must match with the protocol.
		{"named udp", corev1.ServicePort{Port: 53, Protocol: corev1.ProtocolUDP, TargetPort: intstr.FromString("dns")}, 5353, true},
		{"named, protocol differs", corev1.ServicePort{Port: 53, TargetPort: intstr.FromString("dns")}, 0, false},
		// A name the pod does not declare is unresolved.
		{"unknown name", corev1.ServicePort{Port: 80, TargetPort: intstr.FromString("grpc")}, 0, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := targetPort(tc.sp, activePod())
			if got != tc.want || ok != tc.ok {
				t.Errorf("targetPort = %d, %v; want %d, %v", got, ok, tc.want, tc.ok)
			}
		})
	}
}

func TestBuild(t *testing.T) {
	res, err := Build(service(
		corev1.ServicePort{Name: "http", Port: 80, TargetPort: intstr.FromString("http")},
		corev1.ServicePort{Name: "grpc", Port: 90, TargetPort: intstr.FromString("grpc")},
	), activePod(), true)
	if err != nil {
		t.Fatal(err)
	}
	s := res.Slice
	if s.Name != "web-hapod" || s.Namespace != "ns" || s.AddressType != discoveryv1.AddressTypeIPv4 {
		t.Errorf("slice %s/%s %s", s.Namespace, s.Name, s.AddressType)
	}
	if s.Labels[discoveryv1.LabelServiceName] != "web" || s.Labels[discoveryv1.LabelManagedBy] != ManagedBy {
		t.Errorf("labels %v", s.Labels)
	}
	if o := s.OwnerReferences; len(o) != 1 || o[0].UID != "svc-uid" || o[0].Kind != "Service" || !*o[0].Controller || *o[0].BlockOwnerDeletion {
		t.Errorf("owner %+v", o)
	}
	if len(s.Ports) != 1 || *s.Ports[0].Name != "http" || *s.Ports[0].Port != 8080 || *s.Ports[0].Protocol != corev1.ProtocolTCP {
		t.Errorf("ports %+v", s.Ports)
	}
	if !slices.Equal(res.Unresolved, []string{"grpc"}) {
		t.Errorf("unresolved %v", res.Unresolved)
	}
	if len(s.Endpoints) != 1 {
		t.Fatalf("endpoints %s", String(s))
	}
	e := s.Endpoints[0]
	if !slices.Equal(e.Addresses, []string{"10.0.0.7"}) || e.TargetRef.Name != "web-a" || e.TargetRef.UID != "pod-uid" || ptr.Deref(e.NodeName, "") != "n1" {
		t.Errorf("endpoint %+v", e)
	}
	if !*e.Conditions.Ready || !*e.Conditions.Serving || *e.Conditions.Terminating {
		t.Errorf("conditions %+v", e.Conditions)
	}
}

func TestBuildEndpoint(t *testing.T) {
	deleting := activePod()
	deleting.DeletionTimestamp = &metav1.Time{}
	dual := activePod()
	dual.Status.PodIP = "fd00::7"
	dual.Status.PodIPs = []corev1.PodIP{{IP: "fd00::7"}, {IP: "10.0.0.8"}}
	v6only := activePod()
	v6only.Status.PodIP, v6only.Status.PodIPs = "fd00::7", []corev1.PodIP{{IP: "fd00::7"}}
	noIP := activePod()
	noIP.Status.PodIP, noIP.Status.PodIPs = "", nil
	cases := []struct {
		name  string
		pod   *corev1.Pod
		ready bool
		// want is the endpoint's address, "" for no endpoint.
		want        string
		terminating bool
	}{
		// No active pod: an empty slice (the Service has no endpoint).
		{"no pod", nil, false, "", false},
		// Not ready: still listed, with ready and serving false.
		{"not ready", activePod(), false, "10.0.0.7", false},
		// A deleting pod is terminating.
		{"deleting", deleting, false, "10.0.0.7", true},
		// Dual-stack pod: its IPv4 address, whatever the order.
		{"dual stack", dual, true, "10.0.0.8", false},
		// IPv6 only, or no IP yet: no endpoint.
		{"ipv6 only", v6only, true, "", false},
		{"no ip", noIP, true, "", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			res, err := Build(service(corev1.ServicePort{Port: 80}), tc.pod, tc.ready)
			if err != nil {
				t.Fatal(err)
			}
			eps := res.Slice.Endpoints
			if tc.want == "" {
				if len(eps) != 0 || len(res.Slice.Ports) != 0 {
					t.Errorf("want no endpoint, got %s ports %v", String(res.Slice), res.Slice.Ports)
				}
				return
			}
			if len(eps) != 1 || eps[0].Addresses[0] != tc.want {
				t.Fatalf("endpoints %s, want %s", String(res.Slice), tc.want)
			}
			c := eps[0].Conditions
			if *c.Ready != tc.ready || *c.Serving != tc.ready || *c.Terminating != tc.terminating {
				t.Errorf("conditions ready=%v serving=%v terminating=%v", *c.Ready, *c.Serving, *c.Terminating)
			}
		})
	}
}

func TestBuildRefuses(t *testing.T) {
	sel := service(corev1.ServicePort{Port: 80})
	sel.Spec.Selector = map[string]string{"app": "web"}
	v6 := service(corev1.ServicePort{Port: 80})
	v6.Spec.IPFamilies = []corev1.IPFamily{corev1.IPv6Protocol}
	dual := service(corev1.ServicePort{Port: 80})
	dual.Spec.IPFamilies = []corev1.IPFamily{corev1.IPv6Protocol, corev1.IPv4Protocol}
	cases := []struct {
		name string
		svc  *corev1.Service
		want error
	}{
		// A selector means the kube-controller-manager writes a slice too.
		{"selector", sel, ErrSelector},
		// IPv6 only: nothing this package can build.
		{"ipv6 only", v6, ErrNoIPv4},
		// Dual-stack Service: served on its IPv4 family.
		{"dual stack", dual, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := Build(tc.svc, activePod(), true); !errors.Is(err, tc.want) {
				t.Errorf("Build err = %v, want %v", err, tc.want)
			}
		})
	}
}
