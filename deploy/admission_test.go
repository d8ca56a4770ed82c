package deploy_test

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/utils/ptr"

	"github.com/hapod/hapod/internal/dev/clustertest"
	"github.com/hapod/hapod/pkg/role"
)

// installed is one install of the controller's RBAC and admission policies
// (deploy/controller or deploy/namespaced) in a test's own namespaces.
type installed struct {
	dir  string
	objs []object
	// ns stands for hapod-system, appNS for the application's namespace
	// (demo in deploy/namespaced).
	ns, appNS string
	// user is the controller's ServiceAccount's username; token one of its
	// tokens, with which as calls the API.
	user, token string
	as          kubernetes.Interface
	// policies are the names the admission policies got here.
	policies []string
}

// installRBAC applies the ServiceAccount, the RBAC and the admission
// policies of deploy/<dir>: namespaced objects into fresh namespaces,
// cluster-scoped ones under names of their own (and the policies matching
// the test's ServiceAccount instead of hapod-system's), so that a real
// installation is not touched and tests do not see each other's.
func installRBAC(t *testing.T, s *server, dir string) *installed {
	t.Helper()
	ctx := t.Context()
	in := &installed{dir: dir, objs: mustLoad(t, dir), ns: clustertest.Namespace(t), appNS: clustertest.Namespace(t)}
	suffix := "-" + in.ns
	var saName string
	for _, u := range relocate(t, in.objs, map[string]string{controllerNamespace: in.ns, namespacedAppNamespace: in.appNS}) {
		switch u.GetKind() {
		case "ServiceAccount":
			saName = u.GetName()
			in.user = "system:serviceaccount:" + in.ns + ":" + saName
		case "Role", "RoleBinding":
		case "ClusterRole", "ClusterRoleBinding", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding":
			u = renameClusterScoped(t, u, suffix, in.ns)
			if u.GetKind() == "ValidatingAdmissionPolicy" {
				in.policies = append(in.policies, u.GetName())
			}
			r, _, err := s.resource(ctx, u)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				// t.Context() is done when cleanups run.
				ctx, cancel := context.WithTimeout(context.WithoutCancel(t.Context()), 30*time.Second)
				defer cancel()
				err := r.Delete(ctx, u.GetName(), metav1.DeleteOptions{})
				if err != nil && !apierrors.IsNotFound(err) {
					t.Errorf("delete %s %s: %v", u.GetKind(), u.GetName(), err)
				}
			})
		default:
			continue // Namespace, Deployment, Service: not needed to run it
		}
		s.apply(t, u, nil)
	}
	if in.user == "" || len(in.policies) == 0 {
		t.Fatalf("deploy/%s: ServiceAccount %q, policies %v", dir, in.user, in.policies)
	}
	// A real token of the ServiceAccount, as its pod would mount: the API
	// server authenticates it as the username the policies match (and adds
	// the ServiceAccount groups RBAC may bind).
	tok, err := clustertest.Clientset(t).CoreV1().ServiceAccounts(in.ns).CreateToken(ctx, saName, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr.To[int64](3600)},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	in.token = tok.Status.Token
	cfg := rest.AnonymousClientConfig(clustertest.RESTConfig(t))
	cfg.BearerToken = in.token
	as, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	in.as = as
	return in
}

// kubeconfig writes a kubeconfig for the test cluster that authenticates
// with the ServiceAccount's token.
func (in *installed) kubeconfig(t *testing.T) string {
	t.Helper()
	cfg, err := clientcmd.LoadFromFile(clustertest.Kubeconfig(t))
	if err != nil {
		t.Fatal(err)
	}
	for name := range cfg.AuthInfos {
		cfg.AuthInfos[name] = &clientcmdapi.AuthInfo{Token: in.token}
	}
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		t.Fatal(err)
	}
	return path
}

// forEachInstall runs test as a subtest per install, each on its own
// installRBAC.
func forEachInstall(t *testing.T, test func(*testing.T, *server, *installed)) {
	for _, dir := range installs {
		t.Run(dir, func(t *testing.T) {
			s := newServer(t)
			test(t, s, installRBAC(t, s, dir))
		})
	}
}

// renameClusterScoped gives a cluster-scoped object the suffix, and what
// refers to it (a binding's roleRef or policyName) too; the policies'
// username of the controller moves to namespace ns.
func renameClusterScoped(t *testing.T, u *unstructured.Unstructured, suffix, ns string) *unstructured.Unstructured {
	t.Helper()
	data, err := u.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	const user = "system:serviceaccount:" + controllerNamespace + ":"
	if !strings.Contains(string(data), user) && strings.HasPrefix(u.GetKind(), "ValidatingAdmissionPolicy") && u.GetKind() != "ValidatingAdmissionPolicyBinding" {
		t.Fatalf("policy %s does not name the controller's user %s...", u.GetName(), user)
	}
	data = []byte(strings.ReplaceAll(string(data), user, "system:serviceaccount:"+ns+":"))
	out := &unstructured.Unstructured{}
	if err := out.UnmarshalJSON(data); err != nil {
		t.Fatal(err)
	}
	out.SetName(out.GetName() + suffix)
	for _, ref := range [][]string{{"roleRef", "name"}, {"spec", "policyName"}} {
		if name, ok, _ := unstructured.NestedString(out.Object, ref...); ok {
			if err := unstructured.SetNestedField(out.Object, name+suffix, ref...); err != nil {
				t.Fatal(err)
			}
		}
	}
	return out
}

// deniedByPolicy reports whether err is a refusal by one of the policies.
func (in *installed) deniedByPolicy(err error) bool {
	if !apierrors.IsForbidden(err) {
		return false
	}
	for _, p := range in.policies {
		if strings.Contains(err.Error(), "ValidatingAdmissionPolicy '"+p+"'") {
			return true
		}
	}
	return false
}

// refused is nil if err is a policy's refusal, else says why not yet.
func (in *installed) refused(probe string, err error) error {
	switch {
	case err == nil:
		return fmt.Errorf("%s allowed: the policies are not in force yet", probe)
	case !in.deniedByPolicy(err):
		return fmt.Errorf("%s not refused by a policy: %w", probe, err)
	}
	return nil
}

// waitForPolicies returns once both policies refuse: the API server loads
// new policies and bindings asynchronously (through an informer, then a
// compile), so for a while after they are created they do not apply yet.
// The probes are dry runs that only the policies refuse: a label on pod
// (in appNS) and a Lease not named hapod-*.
func (in *installed) waitForPolicies(t *testing.T, pod string) {
	t.Helper()
	ctx := t.Context()
	dry := []string{metav1.DryRunAll}
	clustertest.Eventually(t, 60*time.Second, func() (bool, error) {
		patch := []byte(`{"metadata":{"labels":{"hapod-probe":"x"}}}`)
		_, err := in.as.CoreV1().Pods(in.appNS).Patch(ctx, pod, types.MergePatchType, patch, metav1.PatchOptions{DryRun: dry})
		if err := in.refused("pod probe", err); err != nil {
			return false, err
		}
		l := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: "probe", Namespace: in.appNS}}
		_, err = in.as.CoordinationV1().Leases(in.appNS).Create(ctx, l, metav1.CreateOptions{DryRun: dry})
		if err := in.refused("Lease probe", err); err != nil {
			return false, err
		}
		return true, nil
	})
}

// outcome is what the API server answers one call of the controller's
// ServiceAccount.
type outcome int

const (
	allowed  outcome = iota
	byRBAC           // 403 from the authorizer
	byPolicy         // 403 from a ValidatingAdmissionPolicy
)

func (o outcome) String() string {
	return [...]string{"allowed", "forbidden by RBAC", "denied by the admission policy"}[o]
}

func (in *installed) outcome(err error) (outcome, error) {
	switch {
	case err == nil:
		return allowed, nil
	case in.deniedByPolicy(err):
		return byPolicy, nil
	case apierrors.IsForbidden(err) && strings.Contains(err.Error(), "cannot "):
		return byRBAC, nil
	}
	return 0, err
}

// TestAdmissionPolicy applies each install's RBAC and admission policies
// and checks, as the controller's ServiceAccount, what the API server lets
// it do: the role label and hapod.io/* annotations of a pod and the
// hapod-<group> Leases, and nothing else. The cluster-wide install leans on
// the policies alone; the namespace-scoped one is stopped by RBAC first
// outside its namespace.
func TestAdmissionPolicy(t *testing.T) { forEachInstall(t, testAdmissionPolicy) }

func testAdmissionPolicy(t *testing.T, _ *server, in *installed) {
	admin := clustertest.Clientset(t)
	ctx := t.Context()
	otherNS := clustertest.Namespace(t)
	namespaced := in.dir == "namespaced"
	// What RBAC does outside what the namespaced install grants (its
	// namespace, its Lease names): it lets the cluster-wide install through
	// to the policies.
	outside := func(cluster outcome) outcome {
		if namespaced {
			return byRBAC
		}
		return cluster
	}

	// A managed pod in the application's namespace and one elsewhere. They
	// need no node: nothing here runs them.
	newPod := func(ns string) string {
		p := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{
				Name: "app", Namespace: ns,
				Labels:      map[string]string{"app": "hapod", "role": "standby", "tier": "web"},
				Annotations: map[string]string{"note": "mine", role.EpochAnnotation: "1"},
			},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "ghcr.io/hapod/hapod-demo:latest"}}},
		}
		if _, err := admin.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{FieldManager: fieldManager}); err != nil {
			t.Fatal(err)
		}
		return p.Name
	}
	pod, outsidePod := newPod(in.appNS), newPod(otherNS)
	in.waitForPolicies(t, pod)

	// The type checker (kube-controller-manager's status controller) finds
	// nothing wrong: a misspelt field would be an error at every request,
	// and with failurePolicy Fail refuse the controller everything.
	for _, name := range in.policies {
		clustertest.Eventually(t, 60*time.Second, func() (bool, error) {
			p, err := admin.AdmissionregistrationV1().ValidatingAdmissionPolicies().Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return false, err
			}
			if p.Status.ObservedGeneration != p.Generation || p.Status.TypeChecking == nil {
				return false, fmt.Errorf("policy %s not type-checked yet", name)
			}
			for _, w := range p.Status.TypeChecking.ExpressionWarnings {
				t.Errorf("policy %s: %s: %s", name, w.FieldRef, w.Warning)
			}
			return true, nil
		})
	}

	// Leases that are not hapod's, made by the admin: in the application's
	// namespace, in another, and node heartbeats (one named like a hapod
	// Lease: the policy keeps kube-node-lease out whatever the name).
	newLease := func(ns, name string) *coordinationv1.Lease {
		l := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}}
		got, err := admin.CoordinationV1().Leases(ns).Create(ctx, l, metav1.CreateOptions{FieldManager: fieldManager})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.WithoutCancel(t.Context()), 30*time.Second)
			defer cancel()
			_ = admin.CoordinationV1().Leases(ns).Delete(ctx, name, metav1.DeleteOptions{})
		})
		return got
	}
	appLease := newLease(in.appNS, "other")
	otherLease := newLease(otherNS, "other")
	nodeLease := newLease(corev1.NamespaceNodeLease, in.ns)
	hapodNodeLease := newLease(corev1.NamespaceNodeLease, "hapod-"+in.ns)

	dry := []string{metav1.DryRunAll}
	patchPod := func(ns, name, patch string, dryRun []string) func() error {
		return func() error {
			_, err := in.as.CoreV1().Pods(ns).Patch(ctx, name, types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{DryRun: dryRun, FieldManager: "hapod-controller"})
			return err
		}
	}
	// Updates are dry runs: the objects are not the test's to change.
	updateLease := func(l *coordinationv1.Lease) func() error {
		return func() error {
			l := l.DeepCopy()
			holder := "hapod"
			l.Spec.HolderIdentity = &holder
			_, err := in.as.CoordinationV1().Leases(l.Namespace).Update(ctx, l, metav1.UpdateOptions{DryRun: dry})
			return err
		}
	}
	createLease := func(ns, name string, dryRun []string) func() error {
		return func() error {
			l := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}}
			_, err := in.as.CoordinationV1().Leases(ns).Create(ctx, l, metav1.CreateOptions{DryRun: dryRun})
			return err
		}
	}
	// The controller's own calls, for real: get, then update what it got.
	getUpdateLease := func(ns, name string) func() error {
		return func() error {
			l, err := in.as.CoordinationV1().Leases(ns).Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			holder := "hapod"
			l.Spec.HolderIdentity = &holder
			_, err = in.as.CoordinationV1().Leases(ns).Update(ctx, l, metav1.UpdateOptions{})
			return err
		}
	}
	// Some control-plane Lease (kube-apiserver's identity) if there is one.
	var controlPlane *coordinationv1.Lease
	if l, err := admin.CoordinationV1().Leases(metav1.NamespaceSystem).List(ctx, metav1.ListOptions{}); err == nil && len(l.Items) > 0 {
		controlPlane = &l.Items[0]
	}

	groupLease := "hapod-hapod"
	// why is what a policy's refusal says, if it is the expected outcome.
	cases := []struct {
		name string
		call func() error
		want outcome
		why  string
	}{
		// What the controller does.
		{"promote: role label and epoch annotation", patchPod(in.appNS, pod, `{"metadata":{"labels":{"role":"active"},"annotations":{"hapod.io/epoch":"2"}}}`, nil), allowed, ""},
		{"demote: role label", patchPod(in.appNS, pod, `{"metadata":{"labels":{"role":"standby"}}}`, nil), allowed, ""},
		{"create the group Lease", createLease(in.appNS, groupLease, nil), allowed, ""},
		{"get and update the group Lease", getUpdateLease(in.appNS, groupLease), allowed, ""},
		{"create the leader-election Lease", createLease(in.ns, leaderElectionLease, nil), allowed, ""},
		{"get and update the leader-election Lease", getUpdateLease(in.ns, leaderElectionLease), allowed, ""},

		// The rest of a pod.
		{"role label set to another value", patchPod(in.appNS, pod, `{"metadata":{"labels":{"role":"boss"}}}`, dry), byPolicy, "the active or the standby value only"},
		{"image", patchPod(in.appNS, pod, `{"spec":{"containers":[{"name":"app","image":"evil:latest"}]}}`, dry), byPolicy, "may not change a pod's spec"},
		{"another label changed", patchPod(in.appNS, pod, `{"metadata":{"labels":{"tier":"db"}}}`, dry), byPolicy, "no pod label but the role label"},
		{"another label added", patchPod(in.appNS, pod, `{"metadata":{"labels":{"role":"active","extra":"x"}}}`, dry), byPolicy, "no pod label but the role label"},
		{"another label removed", patchPod(in.appNS, pod, `{"metadata":{"labels":{"tier":null}}}`, dry), byPolicy, "no pod label but the role label"},
		{"non-hapod annotation", patchPod(in.appNS, pod, `{"metadata":{"annotations":{"note":"theirs"}}}`, dry), byPolicy, "no pod annotation but hapod.io/*"},
		{"finalizer", patchPod(in.appNS, pod, `{"metadata":{"finalizers":["example.com/hold"]}}`, dry), byPolicy, "finalizers or owner references"},
		{"role label of a pod in another namespace", patchPod(otherNS, outsidePod, `{"metadata":{"labels":{"role":"active"}}}`, dry), outside(allowed), ""},
		{"image of a pod in another namespace", patchPod(otherNS, outsidePod, `{"spec":{"containers":[{"name":"app","image":"evil:latest"}]}}`, dry), outside(byPolicy), "may not change a pod's spec"},

		// Other Leases.
		{"create a non-hapod Lease", createLease(in.appNS, "other2", dry), byPolicy, "may write only hapod-<group> Leases"},
		// Outside the namespaced Role's resourceNames.
		{"update a non-hapod Lease", updateLease(appLease), outside(byPolicy), "may write only hapod-<group> Leases"},
		{"update a Lease in another namespace", updateLease(otherLease), outside(byPolicy), "may write only hapod-<group> Leases"},
		{"create a hapod Lease in another namespace", createLease(otherNS, groupLease, dry), outside(allowed), ""},
		{"update a node heartbeat", updateLease(nodeLease), outside(byPolicy), "may write only hapod-<group> Leases"},
		{"update a node heartbeat named hapod-*", updateLease(hapodNodeLease), outside(byPolicy), "may write only hapod-<group> Leases"},
		{"create a Lease in kube-node-lease", createLease(corev1.NamespaceNodeLease, "hapod-x-"+in.ns, dry), outside(byPolicy), "may write only hapod-<group> Leases"},
	}
	if controlPlane != nil {
		cases = append(cases, struct {
			name string
			call func() error
			want outcome
			why  string
		}{"update a control-plane Lease (" + controlPlane.Name + ")", updateLease(controlPlane), outside(byPolicy), "may write only hapod-<group> Leases"})
	}
	for _, c := range cases {
		err := c.call()
		got, unexpected := in.outcome(err)
		if unexpected != nil {
			t.Errorf("%s: %v, want %s", c.name, unexpected, c.want)
		} else if got != c.want {
			t.Errorf("%s: %s (%v), want %s", c.name, got, err, c.want)
		} else if got == byPolicy && !strings.Contains(err.Error(), c.why) {
			t.Errorf("%s: refused for another reason: %v; want %q", c.name, err, c.why)
		}
	}

	// The allowed patches changed only what they said.
	p, err := admin.CoreV1().Pods(in.appNS).Get(ctx, pod, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	got, _ := json.Marshal(map[string]any{"labels": p.Labels, "annotations": p.Annotations, "image": p.Spec.Containers[0].Image})
	want := `{"annotations":{"hapod.io/epoch":"2","note":"mine"},"image":"ghcr.io/hapod/hapod-demo:latest","labels":{"app":"hapod","role":"standby","tier":"web"}}`
	if string(got) != want {
		t.Errorf("pod after the calls: %s, want %s", got, want)
	}
}
