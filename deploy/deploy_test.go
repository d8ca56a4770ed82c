package deploy_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/restmapper"
	"k8s.io/utils/ptr"

	"github.com/hapod/hapod/internal/config"
	"github.com/hapod/hapod/internal/dev/bintest"
	"github.com/hapod/hapod/internal/dev/clustertest"
	"github.com/hapod/hapod/internal/dev/manifest"
	"github.com/hapod/hapod/internal/election"
)

func TestMain(m *testing.M) { clustertest.Main(m, bintest.Cleanup) }

// kustomizations are the directories under deploy/ that kubectl apply -k takes.
var kustomizations = []string{"crd", "controller", "namespaced", "example", "example-agent", "example-plain", "default"}

// installs are the kustomizations that install the controller: cluster-wide
// and namespace-scoped.
var installs = []string{"controller", "namespaced"}

// fieldManager owns what the test applies.
const fieldManager = "hapod-deploy-test"

// controllerNamespace is where deploy/controller puts the controller.
const controllerNamespace = "hapod-system"

// object is one document of a manifest file (internal/dev/manifest, which the
// tour reads the example with too).
type object = manifest.Object

func mustLoad(t *testing.T, dir string) []object {
	t.Helper()
	objs, err := manifest.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	return objs
}

// only returns the single object of type T, failing unless there is exactly one.
func only[T runtime.Object](t *testing.T, objs []object) T {
	t.Helper()
	all := all[T](objs)
	if len(all) != 1 {
		var zero T
		t.Fatalf("want exactly one %T, found %d", zero, len(all))
	}
	return all[0]
}

func all[T runtime.Object](objs []object) []T {
	var out []T
	for _, o := range objs {
		if v, ok := o.Obj.(T); ok {
			out = append(out, v)
		}
	}
	return out
}

func TestManifestsDecodeStrictly(t *testing.T) {
	for _, dir := range kustomizations {
		t.Run(dir, func(t *testing.T) {
			objs := mustLoad(t, dir)
			seen := map[string]string{}
			for _, o := range objs {
				a := o.Obj.(metav1.Object)
				if a.GetName() == "" {
					t.Errorf("%s: no name", o)
				}
				key := fmt.Sprintf("%s %s/%s", o.Obj.GetObjectKind().GroupVersionKind(), a.GetNamespace(), a.GetName())
				if prev, dup := seen[key]; dup {
					t.Errorf("%s: same object as %s", o, prev)
				}
				seen[key] = o.Source
			}
		})
	}
	// default is exactly the other three.
	want := len(mustLoad(t, "crd")) + len(mustLoad(t, "controller")) + len(mustLoad(t, "example"))
	if got := len(mustLoad(t, "default")); got != want {
		t.Errorf("default has %d objects, want %d (crd, controller and example)", got, want)
	}
}

// The strict decoder is what catches typos; check that it does.
func TestDecoderRejectsMistakes(t *testing.T) {
	for _, tc := range []struct {
		name, doc, want string
	}{
		// A misspelt field would otherwise be dropped silently by the API server.
		{"unknown field", "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {selectr: {app: hapod}}\n", "unknown field"},
		{"duplicate field", "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {type: ClusterIP, type: NodePort}\n", "duplicate"},
		{"unknown kind", "apiVersion: v1\nkind: Servise\nmetadata: {name: x}\n", "no kind"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "x.yaml")
			if err := os.WriteFile(path, []byte(tc.doc), 0o644); err != nil {
				t.Fatal(err)
			}
			_, err := manifest.DecodeFile(path)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("decode = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// kubectl's own kustomize renders the same objects as load, so that the
// checks below are about what kubectl apply -k really sends.
func TestLoadMatchesKubectlKustomize(t *testing.T) {
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		t.Skip("no kubectl on PATH")
	}
	for _, dir := range kustomizations {
		t.Run(dir, func(t *testing.T) {
			out, err := exec.CommandContext(t.Context(), kubectl, "kustomize", dir).Output()
			if err != nil {
				t.Fatalf("kubectl kustomize %s: %v", dir, err)
			}
			path := filepath.Join(t.TempDir(), "rendered.yaml")
			if err := os.WriteFile(path, out, 0o644); err != nil {
				t.Fatal(err)
			}
			rendered, err := manifest.DecodeFile(path)
			if err != nil {
				t.Fatalf("kubectl kustomize output: %v", err)
			}
			ours := mustLoad(t, dir)
			// kustomize orders by kind; compare as sets keyed by identity.
			byKey := func(objs []object) map[string]any {
				m := map[string]any{}
				for _, o := range objs {
					var v any
					if err := json.Unmarshal(o.Raw, &v); err != nil {
						t.Fatal(err)
					}
					a := o.Obj.(metav1.Object)
					m[fmt.Sprintf("%s %s/%s", o.Obj.GetObjectKind().GroupVersionKind(), a.GetNamespace(), a.GetName())] = v
				}
				return m
			}
			got, want := byKey(rendered), byKey(ours)
			for k := range want {
				if _, ok := got[k]; !ok {
					t.Errorf("%s: kubectl kustomize does not render it", k)
				} else if !reflect.DeepEqual(got[k], want[k]) {
					t.Errorf("%s: kubectl kustomize renders it differently:\n%v\nwant\n%v", k, got[k], want[k])
				}
			}
			for k := range got {
				if _, ok := want[k]; !ok {
					t.Errorf("%s: rendered by kubectl kustomize only", k)
				}
			}
		})
	}
}

// TestExampleInvariants checks the seed example against what the controller
// assumes with its default flags.
func TestExampleInvariants(t *testing.T) {
	cfg := config.Default()
	_, rs, svc := exampleShape(t, "example")

	// One critical container, one that is not.
	var critical, other []corev1.Container
	for _, c := range rs.Spec.Template.Spec.Containers {
		if envValue(c, cfg.CriticalEnv) == cfg.CriticalValue {
			critical = append(critical, c)
		} else {
			other = append(other, c)
		}
	}
	if len(critical) != 1 || len(other) != 1 {
		t.Fatalf("%d containers with %s=%s and %d without, want 1 and 1", len(critical), cfg.CriticalEnv, cfg.CriticalValue, len(other))
	}
	app := critical[0]
	if app.Name != "app" || !strings.Contains(app.Image, "hapod-demo") {
		t.Errorf("critical container %s image %s, want app running hapod-demo", app.Name, app.Image)
	}
	// The kubelet leaves the dead critical container dead for hapod to
	// replace the pod (no CriticalRestartPolicy Event), and still restarts
	// the sidecar in place: restartPolicy Never on the container, the
	// pod-level default (Always) for the rest.
	spec := &rs.Spec.Template.Spec
	if rp := app.RestartPolicy; rp == nil || *rp != corev1.ContainerRestartPolicyNever || election.RestartsInPlace(spec, &app) {
		t.Errorf("critical container app: restartPolicy %q, restartPolicyRules %v; want Never and no rules", ptr.Deref(rp, ""), app.RestartPolicyRules)
	}
	if spec.RestartPolicy != "" && spec.RestartPolicy != corev1.RestartPolicyAlways {
		t.Errorf("pod restartPolicy %q, want the default (Always): a ReplicaSet requires it, and the sidecar is restarted in place", spec.RestartPolicy)
	}
	if side := other[0]; !election.RestartsInPlace(spec, &side) {
		t.Errorf("non-critical container %s is not restarted in place by the kubelet (restartPolicy %q)", side.Name, ptr.Deref(side.RestartPolicy, ""))
	}
	for env, field := range map[string]string{"POD_NAME": "metadata.name", "POD_UID": "metadata.uid"} {
		if got := fieldRef(app, env); got != field {
			t.Errorf("container app: env %s from %q, want the downward API %s", env, got, field)
		}
	}
	if p := port(app, "http"); p == nil || p.ContainerPort != 8080 || p.Protocol != corev1.ProtocolTCP {
		t.Errorf("container app: port http %+v, want 8080/TCP", p)
	}
	if p := port(app, "role"); p == nil || int(p.ContainerPort) != cfg.RolePort || p.Protocol != corev1.ProtocolUDP {
		t.Errorf("container app: port role %+v, want %d/UDP (the controller's -role-port)", p, cfg.RolePort)
	}
	if rp := app.ReadinessProbe; rp == nil || rp.HTTPGet == nil || rp.HTTPGet.Path != "/readyz" || resolvePort(app, rp.HTTPGet.Port) != 8080 {
		t.Errorf("container app: readinessProbe %+v, want GET /readyz on 8080", rp)
	}

	nonRootUsers(t, rs.Spec.Template.Spec.Containers)

	if resolvePort(app, svc.Spec.Ports[0].TargetPort) != 8080 {
		t.Errorf("Service ports %+v, want 80 -> 8080 in the app", svc.Spec.Ports)
	}
}

// exampleShape loads the example in dir and checks what every example
// shares with the controller's defaults: no namespace of its own; a
// ReplicaSet hapod of 2 whose selector is app=hapod only (a selector with
// the role label would orphan the pod relabelled active) and whose pods the
// controller's default -selector picks in either role; a ClusterIP Service
// hapod that selects the active alone, with one port, 80.
func exampleShape(t *testing.T, dir string) ([]object, *appsv1.ReplicaSet, *corev1.Service) {
	t.Helper()
	cfg := config.Default()
	objs := mustLoad(t, dir)
	for _, o := range objs {
		if ns := o.Obj.(metav1.Object).GetNamespace(); ns != "" {
			t.Errorf("%s: namespace %q; the example applies to the namespace given with -n", o, ns)
		}
		if _, ok := o.Obj.(*corev1.Namespace); ok {
			t.Errorf("%s: the example must not create a Namespace", o)
		}
	}
	rs := only[*appsv1.ReplicaSet](t, objs)
	if rs.Name != "hapod" || rs.Spec.Replicas == nil || *rs.Spec.Replicas != 2 {
		t.Errorf("ReplicaSet %s replicas %v, want hapod and 2", rs.Name, rs.Spec.Replicas)
	}
	sel := rs.Spec.Selector
	if sel == nil || !reflect.DeepEqual(sel.MatchLabels, map[string]string{"app": "hapod"}) || len(sel.MatchExpressions) != 0 {
		t.Errorf("ReplicaSet selector %v, want matchLabels {app: hapod} only", sel)
	}
	tmpl := rs.Spec.Template.Labels
	if tmpl["app"] != "hapod" || tmpl[cfg.RoleLabel] != cfg.StandbyValue {
		t.Errorf("pod template labels %v, want app=hapod and %s=%s", tmpl, cfg.RoleLabel, cfg.StandbyValue)
	}
	rsSel, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil {
		t.Fatalf("ReplicaSet selector: %v", err)
	}
	ctrlSel, err := cfg.PodSelector()
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []string{cfg.StandbyValue, cfg.ActiveValue} {
		l := labels.Merge(tmpl, labels.Set{cfg.RoleLabel: r})
		if !rsSel.Matches(l) {
			t.Errorf("ReplicaSet selector %s does not match its pod relabelled %s=%s: the pod would be orphaned", rsSel, cfg.RoleLabel, r)
		}
		if !ctrlSel.Matches(l) {
			t.Errorf("controller's default -selector %s does not match the example pod with %s=%s", ctrlSel, cfg.RoleLabel, r)
		}
	}
	svc := only[*corev1.Service](t, objs)
	want := map[string]string{"app": "hapod", cfg.RoleLabel: cfg.ActiveValue}
	if svc.Name != "hapod" || svc.Spec.Type != corev1.ServiceTypeClusterIP || !reflect.DeepEqual(svc.Spec.Selector, want) {
		t.Errorf("Service %s type %q selector %v, want hapod, ClusterIP, exactly %v", svc.Name, svc.Spec.Type, svc.Spec.Selector, want)
	}
	if len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].Port != 80 {
		t.Fatalf("Service ports %+v, want one, 80", svc.Spec.Ports)
	}
	return objs, rs, svc
}

// nonRootUsers checks that every container of an image not built by hapod
// (whose images run as USER 65532) sets a non-root runAsUser: runAsNonRoot
// (checked by Pod Security admission) only makes the kubelet refuse to
// start an image whose user is root.
func nonRootUsers(t *testing.T, cs []corev1.Container) {
	t.Helper()
	for _, c := range cs {
		if strings.HasPrefix(c.Image, "ghcr.io/hapod/") {
			continue
		}
		if sc := c.SecurityContext; sc == nil || sc.RunAsUser == nil || *sc.RunAsUser == 0 {
			t.Errorf("container %s (image %s): no non-root runAsUser; the kubelet would refuse to start it", c.Name, c.Image)
		}
	}
}

// TestControllerInvariants checks least privilege and the Deployment.
func TestControllerInvariants(t *testing.T) {
	objs := mustLoad(t, "controller")

	ns := only[*corev1.Namespace](t, objs)
	if ns.Name != controllerNamespace {
		t.Errorf("Namespace %s, want %s", ns.Name, controllerNamespace)
	}
	for _, o := range objs {
		a := o.Obj.(metav1.Object)
		if !clusterScoped(o.Obj) && a.GetNamespace() != controllerNamespace {
			t.Errorf("%s: namespace %q, want %s", o, a.GetNamespace(), controllerNamespace)
		}
	}
	sa := only[*corev1.ServiceAccount](t, objs)

	// Exactly these permissions: a missing one breaks the controller, an
	// extra one is more than it needs.
	cr := only[*rbacv1.ClusterRole](t, objs)
	checkRules(t, "ClusterRole "+cr.Name, cr.Rules, []string{
		"/pods get", "/pods list", "/pods watch", "/pods patch", "/pods delete",
		"/events create", "/events patch",
		"events.k8s.io/events create", "events.k8s.io/events patch",
		"coordination.k8s.io/leases get", "coordination.k8s.io/leases create", "coordination.k8s.io/leases update",
		"/nodes get", "/nodes list", "/nodes watch",
		"hapod.io/hagroups get", "hapod.io/hagroups list", "hapod.io/hagroups watch", "hapod.io/hagroups/status update",
	})
	role := only[*rbacv1.Role](t, objs)
	checkRules(t, "Role "+role.Name, role.Rules, []string{
		// The Deployment's leader-election Lease only (cmd/hapod-controller
		// names it hapod-controller), but create cannot be limited by name.
		"coordination.k8s.io/leases get hapod-controller", "coordination.k8s.io/leases update hapod-controller",
		"coordination.k8s.io/leases create",
		"/events create", "/events patch",
		"events.k8s.io/events create", "events.k8s.io/events patch",
	})
	subject := []rbacv1.Subject{{Kind: "ServiceAccount", Name: sa.Name, Namespace: sa.Namespace}}
	crb := only[*rbacv1.ClusterRoleBinding](t, objs)
	if crb.RoleRef != (rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: cr.Name}) || !reflect.DeepEqual(crb.Subjects, subject) {
		t.Errorf("ClusterRoleBinding %s binds %+v to %+v, want ClusterRole %s to %+v", crb.Name, crb.RoleRef, crb.Subjects, cr.Name, subject)
	}
	rb := only[*rbacv1.RoleBinding](t, objs)
	if rb.RoleRef != (rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: role.Name}) || !reflect.DeepEqual(rb.Subjects, subject) {
		t.Errorf("RoleBinding %s binds %+v to %+v, want Role %s to %+v", rb.Name, rb.RoleRef, rb.Subjects, role.Name, subject)
	}

	d := only[*appsv1.Deployment](t, objs)
	if d.Spec.Replicas == nil || *d.Spec.Replicas != 2 {
		t.Errorf("Deployment replicas %v, want 2", d.Spec.Replicas)
	}
	pod := d.Spec.Template.Spec
	if pod.ServiceAccountName != sa.Name {
		t.Errorf("Deployment serviceAccountName %q, want %s", pod.ServiceAccountName, sa.Name)
	}
	// The controller must not manage its own pods.
	cfg := config.Default()
	sel, err := cfg.PodSelector()
	if err != nil {
		t.Fatal(err)
	}
	if sel.Matches(labels.Set(d.Spec.Template.Labels)) {
		t.Errorf("controller pod labels %v match the controller's own default -selector %s", d.Spec.Template.Labels, sel)
	}
	if len(pod.Containers) != 1 {
		t.Fatalf("Deployment has %d containers, want 1", len(pod.Containers))
	}
	c := pod.Containers[0]
	if c.Image != "ghcr.io/hapod/hapod-controller:latest" {
		t.Errorf("image %q, want the placeholder ghcr.io/hapod/hapod-controller:latest", c.Image)
	}
	if !slices.Contains(c.Args, "--leader-elect") {
		t.Errorf("args %q: no --leader-elect with 2 replicas", c.Args)
	}
	// The leader-election Lease must be where the Role grants it.
	switch {
	case slices.Contains(c.Args, "--leader-election-namespace="+controllerNamespace):
	case slices.Contains(c.Args, "--leader-election-namespace=$(POD_NAMESPACE)") && fieldRef(c, "POD_NAMESPACE") == "metadata.namespace":
	default:
		t.Errorf("args %q: the leader-election namespace is neither %s nor the pod's namespace", c.Args, controllerNamespace)
	}
	for _, p := range []struct {
		name  string
		probe *corev1.Probe
		path  string
	}{{"liveness", c.LivenessProbe, "/healthz"}, {"readiness", c.ReadinessProbe, "/readyz"}} {
		if p.probe == nil || p.probe.HTTPGet == nil || p.probe.HTTPGet.Path != p.path || resolvePort(c, p.probe.HTTPGet.Port) != 8081 {
			t.Errorf("%s probe %+v, want GET %s on 8081", p.name, p.probe, p.path)
		}
	}
	if p := port(c, "metrics"); p == nil || p.ContainerPort != 8080 {
		t.Errorf("metrics port %+v, want 8080", p)
	}
	sc := c.SecurityContext
	switch sc {
	case nil:
		t.Error("container has no securityContext")
	default:
		if !isTrue(sc.RunAsNonRoot) && (pod.SecurityContext == nil || !isTrue(pod.SecurityContext.RunAsNonRoot)) {
			t.Error("runAsNonRoot is not set")
		}
		if !isTrue(sc.ReadOnlyRootFilesystem) {
			t.Error("readOnlyRootFilesystem is not set")
		}
		if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
			t.Error("allowPrivilegeEscalation is not false")
		}
		if sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) != 0 {
			t.Errorf("capabilities %+v, want drop ALL and add none", sc.Capabilities)
		}
	}
	for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		if _, ok := c.Resources.Requests[r]; !ok {
			t.Errorf("no %s request", r)
		}
		if _, ok := c.Resources.Limits[r]; !ok {
			t.Errorf("no %s limit", r)
		}
	}
}

// checkRules compares rules, expanded to "group/resource verb" (and
// " name" for each of a rule's resourceNames), with want, and refuses
// wildcards and non-resource URLs.
func checkRules(t *testing.T, what string, rules []rbacv1.PolicyRule, want []string) {
	t.Helper()
	var got []string
	for _, r := range rules {
		if len(r.NonResourceURLs) > 0 {
			t.Errorf("%s: rule %+v uses nonResourceURLs", what, r)
		}
		names := r.ResourceNames
		if len(names) == 0 {
			names = []string{""}
		}
		for _, g := range r.APIGroups {
			for _, res := range r.Resources {
				for _, v := range r.Verbs {
					if g == "*" || res == "*" || v == "*" {
						t.Errorf("%s: wildcard in %+v", what, r)
					}
					for _, n := range names {
						got = append(got, strings.TrimSpace(g+"/"+res+" "+v+" "+n))
					}
				}
			}
		}
	}
	slices.Sort(got)
	want = slices.Clone(want)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("%s grants\n  %s\nwant exactly\n  %s", what, strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
}

func envValue(c corev1.Container, name string) string {
	for _, e := range c.Env {
		if e.Name == name {
			return e.Value
		}
	}
	return ""
}

func fieldRef(c corev1.Container, name string) string {
	for _, e := range c.Env {
		if e.Name == name && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil {
			return e.ValueFrom.FieldRef.FieldPath
		}
	}
	return ""
}

func port(c corev1.Container, name string) *corev1.ContainerPort {
	for i := range c.Ports {
		if c.Ports[i].Name == name {
			return &c.Ports[i]
		}
	}
	return nil
}

// resolvePort returns the number a probe or Service port means in c, 0 if none.
func resolvePort(c corev1.Container, p intstr.IntOrString) int32 {
	if p.Type == intstr.Int {
		return p.IntVal
	}
	if cp := port(c, p.StrVal); cp != nil {
		return cp.ContainerPort
	}
	return 0
}

func isTrue(b *bool) bool { return b != nil && *b }

// warnings collects the API server's warnings (deprecations, Pod Security
// violations), which a clean manifest does not cause.
type warnings struct {
	mu   sync.Mutex
	list []string
}

func (w *warnings) HandleWarningHeaderWithContext(_ context.Context, _ int, _ string, text string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.list = append(w.list, text)
}

func (w *warnings) take() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	l := w.list
	w.list = nil
	return l
}

// server is a dynamic client with a REST mapper and a warning collector.
type server struct {
	dyn      dynamic.Interface
	mapper   meta.RESTMapperWithContext
	warnings *warnings
}

func newServer(t *testing.T) *server {
	t.Helper()
	cfg := clustertest.RESTConfig(t)
	w := &warnings{}
	cfg.WarningHandler, cfg.WarningHandlerWithContext = nil, w
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	groups, err := restmapper.GetAPIGroupResourcesWithContext(t.Context(), dc)
	if err != nil {
		t.Fatalf("discovery: %v", err)
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &server{dyn: dyn, mapper: restmapper.NewDiscoveryRESTMapperWithContext(groups), warnings: w}
}

// resource returns the client for u's kind, in u's namespace if namespaced.
func (s *server) resource(ctx context.Context, u *unstructured.Unstructured) (dynamic.ResourceInterface, bool, error) {
	gvk := u.GroupVersionKind()
	m, err := s.mapper.RESTMappingWithContext(ctx, gvk.GroupKind(), gvk.Version)
	if err != nil {
		return nil, false, err
	}
	if m.Scope.Name() == meta.RESTScopeNameNamespace {
		return s.dyn.Resource(m.Resource).Namespace(u.GetNamespace()), true, nil
	}
	return s.dyn.Resource(m.Resource), false, nil
}

// relocate returns the objects as unstructured, moved from namespace to
// namespace as moves says ("" for objects without one), ServiceAccount
// subjects of bindings included; the Namespace objects go first, as kubectl
// applies them.
func relocate(t *testing.T, objs []object, moves map[string]string) []*unstructured.Unstructured {
	t.Helper()
	var out []*unstructured.Unstructured
	for _, o := range objs {
		u := &unstructured.Unstructured{}
		if err := u.UnmarshalJSON(o.Raw); err != nil {
			t.Fatalf("%s: %v", o, err)
		}
		if !clusterScoped(o.Obj) {
			if to, ok := moves[u.GetNamespace()]; ok {
				u.SetNamespace(to)
			}
		}
		if subjects, ok, _ := unstructured.NestedSlice(u.Object, "subjects"); ok {
			for _, s := range subjects {
				if m, ok := s.(map[string]any); ok {
					if ns, _ := m["namespace"].(string); ns != "" && moves[ns] != "" {
						m["namespace"] = moves[ns]
					}
				}
			}
			if err := unstructured.SetNestedSlice(u.Object, subjects, "subjects"); err != nil {
				t.Fatal(err)
			}
		}
		out = append(out, u)
	}
	slices.SortStableFunc(out, func(a, b *unstructured.Unstructured) int {
		return boolInt(b.GetKind() == "Namespace") - boolInt(a.GetKind() == "Namespace")
	})
	return out
}

// clusterScoped reports whether an object of the manifests has no namespace.
func clusterScoped(obj runtime.Object) bool {
	switch obj.(type) {
	case *corev1.Namespace, *rbacv1.ClusterRole, *rbacv1.ClusterRoleBinding,
		*admissionv1.ValidatingAdmissionPolicy, *admissionv1.ValidatingAdmissionPolicyBinding:
		return true
	}
	return false
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

var dryRun = []string{metav1.DryRunAll}

// dryRunCreate creates u with server-side dry-run: admission, validation and
// defaulting run, nothing is stored.
func (s *server) dryRunCreate(t *testing.T, u *unstructured.Unstructured) {
	t.Helper()
	r, namespaced, err := s.resource(t.Context(), u)
	if err != nil {
		t.Fatalf("%s %s: %v", u.GetKind(), u.GetName(), err)
	}
	_, err = r.Create(t.Context(), u, metav1.CreateOptions{DryRun: dryRun, FieldManager: fieldManager, FieldValidation: metav1.FieldValidationStrict})
	switch {
	case err == nil:
	case apierrors.IsAlreadyExists(err) && !namespaced:
		// A cluster shared through HAPOD_KUBECONFIG may have the controller
		// installed; the apply below still checks the object.
		t.Logf("%s %s exists already; checked by apply only", u.GetKind(), u.GetName())
	default:
		t.Errorf("dry-run create %s %s: %v", u.GetKind(), u.GetName(), err)
	}
	s.noWarnings(t, "create", u)
}

// apply is server-side apply, what kubectl apply --server-side sends.
func (s *server) apply(t *testing.T, u *unstructured.Unstructured, opts []string) *unstructured.Unstructured {
	t.Helper()
	r, _, err := s.resource(t.Context(), u)
	if err != nil {
		t.Fatalf("%s %s: %v", u.GetKind(), u.GetName(), err)
	}
	data, err := u.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	force := true
	got, err := r.Patch(t.Context(), u.GetName(), types.ApplyPatchType, data, metav1.PatchOptions{
		DryRun: opts, Force: &force, FieldManager: fieldManager, FieldValidation: metav1.FieldValidationStrict,
	})
	if err != nil {
		t.Fatalf("apply (dry-run %v) %s %s: %v", opts, u.GetKind(), u.GetName(), err)
	}
	s.noWarnings(t, "apply", u)
	return got
}

func (s *server) noWarnings(t *testing.T, op string, u *unstructured.Unstructured) {
	t.Helper()
	for _, w := range s.warnings.take() {
		t.Errorf("%s %s %s: API server warning: %s", op, u.GetKind(), u.GetName(), w)
	}
}

// restrictNamespace labels a test namespace like hapod-system, so that Pod
// Security admission checks the pod templates (and warns) as it would there.
func restrictNamespace(t *testing.T, s *server, ns string, objs []object) {
	t.Helper()
	var want map[string]string
	for _, o := range objs {
		if n, ok := o.Obj.(*corev1.Namespace); ok {
			want = n.Labels
		}
	}
	if want == nil {
		want = map[string]string{"pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/warn": "restricted"}
	}
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"labels": want}})
	if err != nil {
		t.Fatal(err)
	}
	nsRes := s.dyn.Resource(corev1.SchemeGroupVersion.WithResource("namespaces"))
	if _, err := nsRes.Patch(t.Context(), ns, types.MergePatchType, patch, metav1.PatchOptions{FieldManager: fieldManager}); err != nil {
		t.Fatalf("label namespace %s: %v", ns, err)
	}
}

// TestControllerAppliesToCluster dry-runs deploy/controller and
// deploy/namespaced against a real API server. Their namespaced objects go to
// fresh namespaces, the controller's labelled like hapod-system, so the test
// never touches a real installation.
func TestControllerAppliesToCluster(t *testing.T) {
	for _, dir := range installs {
		t.Run(dir, func(t *testing.T) {
			s := newServer(t)
			objs := mustLoad(t, dir)
			ns, appNS := clustertest.Namespace(t), clustertest.Namespace(t)
			restrictNamespace(t, s, ns, objs)
			for _, u := range relocate(t, objs, map[string]string{controllerNamespace: ns, namespacedAppNamespace: appNS}) {
				s.dryRunCreate(t, u)
				// Twice: apply is idempotent, so a second kubectl apply is no error.
				s.apply(t, u, dryRun)
				s.apply(t, u, dryRun)
			}
		})
	}
}

// TestExampleAppliesToCluster applies deploy/example to a fresh namespace,
// dry-run first, then for real twice, and checks that the ReplicaSet keeps a
// pod relabelled active instead of replacing it.
func TestExampleAppliesToCluster(t *testing.T) {
	s := newServer(t)
	// Every example, each in its own namespace.
	for _, ex := range []struct{ dir, name string }{{"example", "hapod"}, {"example-agent", "hapod"}, {"example-plain", "hapod"}} {
		t.Run(ex.dir, func(t *testing.T) { exampleAppliesToCluster(t, s, ex.dir, ex.name) })
	}
}

func exampleAppliesToCluster(t *testing.T, s *server, dir, name string) {
	objs := mustLoad(t, dir)
	ns := clustertest.Namespace(t)
	restrictNamespace(t, s, ns, nil)
	us := relocate(t, objs, map[string]string{"": ns})
	for _, u := range us {
		s.dryRunCreate(t, u)
		s.apply(t, u, dryRun)
	}
	if t.Failed() {
		t.FailNow() // the pods below would not be created
	}

	// For real, twice: the second apply changes nothing. The ReplicaSet
	// controller writes status in between, so compare the generation (spec
	// changes) where there is one, else the resourceVersion.
	version := func(u *unstructured.Unstructured) string {
		if g := u.GetGeneration(); g != 0 {
			return fmt.Sprintf("generation %d", g)
		}
		return "resourceVersion " + u.GetResourceVersion()
	}
	first := map[string]string{}
	for _, u := range us {
		first[u.GetKind()] = version(s.apply(t, u, nil))
	}
	for _, u := range us {
		if v := version(s.apply(t, u, nil)); v != first[u.GetKind()] {
			t.Errorf("second apply of %s %s changed it (%s, then %s)", u.GetKind(), u.GetName(), first[u.GetKind()], v)
		}
		// And a dry-run over the existing object is fine too.
		s.apply(t, u, dryRun)
	}

	cs := clustertest.Clientset(t)
	ctx := t.Context()
	var pods []corev1.Pod
	clustertest.Eventually(t, 30*time.Second, func() (bool, error) {
		l, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=" + name})
		if err != nil {
			return false, err
		}
		pods = l.Items
		if len(pods) != 2 {
			return false, fmt.Errorf("%d pods, want 2", len(pods))
		}
		return true, nil
	})
	// What the controller does at a promotion.
	promoted := pods[0].Name
	patch := []byte(`{"metadata":{"labels":{"role":"active"}}}`)
	if _, err := cs.CoreV1().Pods(ns).Patch(ctx, promoted, types.MergePatchType, patch, metav1.PatchOptions{FieldManager: fieldManager}); err != nil {
		t.Fatal(err)
	}
	// Once the ReplicaSet controller has seen the relabelled pod it counts it
	// as a replica that no longer has the template's labels. Had its selector
	// excluded the pod, it would have released it and made a third.
	clustertest.Eventually(t, 30*time.Second, func() (bool, error) {
		rs, err := cs.AppsV1().ReplicaSets(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		if st := rs.Status; st.Replicas != 2 || st.FullyLabeledReplicas != 1 {
			return false, fmt.Errorf("ReplicaSet status replicas %d, fullyLabeledReplicas %d; want 2 and 1", st.Replicas, st.FullyLabeledReplicas)
		}
		return true, nil
	})
	l, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Items) != 2 {
		t.Errorf("%d pods after the relabel, want 2", len(l.Items))
	}
	for _, p := range l.Items {
		if p.Name == promoted && metav1.GetControllerOf(&p) == nil {
			t.Errorf("pod %s was orphaned by its relabel", p.Name)
		}
	}
}
