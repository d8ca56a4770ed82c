package deploy_test

import (
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/hapod/hapod/internal/config"
	"github.com/hapod/hapod/pkg/role"
)

// namespacedAppNamespace is the application namespace deploy/namespaced
// grants the controller.
const namespacedAppNamespace = "demo"

// leaderElectionLease is the Lease cmd/hapod-controller elects its leader with.
const leaderElectionLease = "hapod-controller"

// TestNamespacedInvariants checks that deploy/namespaced is deploy/controller
// with the pod and Lease rights moved from the ClusterRole into a Role of the
// application's namespace, and the controller told to watch only it.
func TestNamespacedInvariants(t *testing.T) {
	cfg := config.Default()
	objs := mustLoad(t, "namespaced")
	sa := only[*corev1.ServiceAccount](t, objs)
	subject := []rbacv1.Subject{{Kind: "ServiceAccount", Name: sa.Name, Namespace: sa.Namespace}}

	// Cluster-wide, nodes only (-watch-nodes).
	cr := only[*rbacv1.ClusterRole](t, objs)
	checkRules(t, "ClusterRole "+cr.Name, cr.Rules, []string{"/nodes get", "/nodes list", "/nodes watch"})
	crb := only[*rbacv1.ClusterRoleBinding](t, objs)
	if crb.RoleRef.Name != cr.Name || !reflect.DeepEqual(crb.Subjects, subject) {
		t.Errorf("ClusterRoleBinding %s binds %+v to %+v, want ClusterRole %s to %+v", crb.Name, crb.RoleRef, crb.Subjects, cr.Name, subject)
	}

	// The example's one group, and so its epoch Lease.
	rs := only[*appsv1.ReplicaSet](t, mustLoad(t, "example"))
	groupLease := cfg.LeasePrefix + rs.Spec.Template.Labels[cfg.GroupLabel]

	var app *rbacv1.Role
	for _, r := range all[*rbacv1.Role](objs) {
		if r.Namespace != controllerNamespace {
			if app != nil {
				t.Fatalf("Roles %s/%s and %s/%s outside %s, want one", app.Namespace, app.Name, r.Namespace, r.Name, controllerNamespace)
			}
			app = r
		}
	}
	if app == nil {
		t.Fatalf("no Role outside %s", controllerNamespace)
	}
	if app.Namespace != namespacedAppNamespace {
		t.Errorf("Role %s in namespace %s, want %s", app.Name, app.Namespace, namespacedAppNamespace)
	}
	checkRules(t, "Role "+app.Namespace+"/"+app.Name, app.Rules, []string{
		"/pods get", "/pods list", "/pods watch", "/pods patch", "/pods delete",
		"/events create", "/events patch",
		"events.k8s.io/events create", "events.k8s.io/events patch",
		"coordination.k8s.io/leases get " + groupLease, "coordination.k8s.io/leases update " + groupLease,
		"coordination.k8s.io/leases create",
		"hapod.io/hagroups get", "hapod.io/hagroups list", "hapod.io/hagroups watch", "hapod.io/hagroups/status update",
	})
	bound := false
	for _, rb := range all[*rbacv1.RoleBinding](objs) {
		if rb.Namespace == app.Namespace {
			bound = rb.RoleRef == (rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: app.Name}) && reflect.DeepEqual(rb.Subjects, subject)
			if !bound {
				t.Errorf("RoleBinding %s/%s binds %+v to %+v, want Role %s to %+v", rb.Namespace, rb.Name, rb.RoleRef, rb.Subjects, app.Name, subject)
			}
		}
	}
	if !bound {
		t.Errorf("no RoleBinding of Role %s/%s", app.Namespace, app.Name)
	}

	// A controller watching every namespace with rights in one would log
	// forbidden list calls and never sync.
	d := only[*appsv1.Deployment](t, objs)
	args := d.Spec.Template.Spec.Containers[0].Args
	if !slices.Contains(args, "--namespaces="+app.Namespace) {
		t.Errorf("Deployment args %q: no --namespaces=%s", args, app.Namespace)
	}

	// Everything else is deploy/controller's, so the two installs do not drift.
	if got, want := len(objs), len(mustLoad(t, "controller"))+2; got != want {
		t.Errorf("%d objects, want %d (deploy/controller, a Role and a RoleBinding)", got, want)
	}
	if len(all[*admissionv1.ValidatingAdmissionPolicy](objs)) == 0 {
		t.Error("no ValidatingAdmissionPolicy: the namespaced install must restrict pod patches too")
	}
}

// TestAdmissionPolicyInvariants checks that the ValidatingAdmissionPolicies
// are bound, refuse, apply to the controller's ServiceAccount, and agree with
// the controller's defaults.
func TestAdmissionPolicyInvariants(t *testing.T) {
	cfg := config.Default()
	objs := mustLoad(t, "controller")
	sa := only[*corev1.ServiceAccount](t, objs)
	user := fmt.Sprintf("request.userInfo.username == 'system:serviceaccount:%s:%s'", sa.Namespace, sa.Name)

	policies := all[*admissionv1.ValidatingAdmissionPolicy](objs)
	bindings := all[*admissionv1.ValidatingAdmissionPolicyBinding](objs)
	byName := map[string]*admissionv1.ValidatingAdmissionPolicy{}
	for _, p := range policies {
		byName[p.Name] = p
		if p.Spec.FailurePolicy == nil || *p.Spec.FailurePolicy != admissionv1.Fail {
			t.Errorf("policy %s: failurePolicy %v, want Fail", p.Name, p.Spec.FailurePolicy)
		}
		if len(p.Spec.MatchConditions) != 1 || p.Spec.MatchConditions[0].Expression != user {
			t.Errorf("policy %s: matchConditions %+v, want exactly %q", p.Name, p.Spec.MatchConditions, user)
		}
		n := 0
		for _, b := range bindings {
			if b.Spec.PolicyName == p.Name {
				n++
				if !slices.Equal(b.Spec.ValidationActions, []admissionv1.ValidationAction{admissionv1.Deny}) || b.Spec.MatchResources != nil || b.Spec.ParamRef != nil {
					t.Errorf("binding %s: actions %v, matchResources %+v, paramRef %+v; want Deny only, for everything", b.Name, b.Spec.ValidationActions, b.Spec.MatchResources, b.Spec.ParamRef)
				}
			}
		}
		if n != 1 {
			t.Errorf("policy %s has %d bindings, want 1", p.Name, n)
		}
	}
	for _, b := range bindings {
		if byName[b.Spec.PolicyName] == nil {
			t.Errorf("binding %s binds policy %q, which is not shipped", b.Name, b.Spec.PolicyName)
		}
	}

	quote := func(s string) string { return "'" + s + "'" }
	variables := func(name string, want map[string]string) {
		p := byName[name]
		if p == nil {
			t.Errorf("no policy %s", name)
			return
		}
		got := map[string]string{}
		for _, v := range p.Spec.Variables {
			got[v.Name] = v.Expression
		}
		for k, v := range want {
			if got[k] != v {
				t.Errorf("policy %s: variable %s = %q, want %q (the controller's default)", name, k, got[k], v)
			}
		}
	}
	variables("hapod-controller-pods", map[string]string{
		"roleLabel":        quote(cfg.RoleLabel),
		"roleValues":       "[" + quote(cfg.ActiveValue) + ", " + quote(cfg.StandbyValue) + "]",
		"annotationPrefix": quote("hapod.io/"),
	})
	variables("hapod-controller-leases", map[string]string{
		"leasePrefix": quote(cfg.LeasePrefix),
		"leaderLease": quote(leaderElectionLease),
	})
	// What the controller writes on a pod must pass.
	for _, a := range []string{role.EpochAnnotation} {
		if !strings.HasPrefix(a, "hapod.io/") {
			t.Errorf("the controller writes annotation %s, which the pod policy refuses", a)
		}
	}
}

// TestNetworkPolicyInvariants checks the example's NetworkPolicy: the role
// port from the controller's pods only, the Service's port as before.
func TestNetworkPolicyInvariants(t *testing.T) {
	for _, dir := range []string{"example", "example-agent", "example-plain"} {
		t.Run(dir, func(t *testing.T) { networkPolicyInvariants(t, dir) })
	}
}

// podPort resolves p in whichever of the pod's containers names it: in
// example-agent the role port is the agent's and the http port the app's.
func podPort(cs []corev1.Container, p intstr.IntOrString) int32 {
	for _, c := range cs {
		if n := resolvePort(c, p); n != 0 {
			return n
		}
	}
	return 0
}

func networkPolicyInvariants(t *testing.T, dir string) {
	cfg := config.Default()
	objs := mustLoad(t, dir)
	np := only[*networkingv1.NetworkPolicy](t, objs)
	rs := only[*appsv1.ReplicaSet](t, objs)
	svc := only[*corev1.Service](t, objs)
	ctrl := only[*appsv1.Deployment](t, mustLoad(t, "controller"))
	cs := rs.Spec.Template.Spec.Containers
	// The port the controller sends to: the role protocol's, or in plain
	// mode the app's own (any datagram there means "become active").
	rolePortNum := cfg.RolePort
	if n, ok := plainPort(rs); ok {
		rolePortNum = n
	}

	sel, err := metav1.LabelSelectorAsSelector(&np.Spec.PodSelector)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []string{cfg.StandbyValue, cfg.ActiveValue} {
		if l := labels.Merge(rs.Spec.Template.Labels, labels.Set{cfg.RoleLabel: r}); !sel.Matches(l) {
			t.Errorf("NetworkPolicy podSelector %s does not select the example pod with %s=%s", sel, cfg.RoleLabel, r)
		}
	}
	if !slices.Equal(np.Spec.PolicyTypes, []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}) {
		t.Errorf("policyTypes %v, want Ingress only", np.Spec.PolicyTypes)
	}

	// Every rule that admits the role port admits only the controller's pods.
	var rolePort, httpPort bool
	for i, rule := range np.Spec.Ingress {
		for _, p := range rule.Ports {
			if p.Port == nil || p.Protocol == nil {
				t.Errorf("ingress[%d]: port %+v without a port or protocol admits more than it says", i, p)
				continue
			}
			n := podPort(cs, *p.Port)
			switch {
			case *p.Protocol == corev1.ProtocolUDP && int(n) == rolePortNum:
				rolePort = true
				if !fromControllerOnly(t, rule.From, ctrl) {
					t.Errorf("ingress[%d] admits the role port from %+v, want the controller's pods in %s only", i, rule.From, controllerNamespace)
				}
			case *p.Protocol == corev1.ProtocolTCP && n == podPort(cs, svc.Spec.Ports[0].TargetPort):
				httpPort = true
			default:
				t.Errorf("ingress[%d]: port %v/%s is neither the role port nor the Service's", i, p.Port, *p.Protocol)
			}
		}
	}
	if !rolePort {
		t.Errorf("no rule admits UDP %d from the controller: role messages would be dropped", rolePortNum)
	}
	if !httpPort {
		t.Error("no rule admits the Service's target port: the policy would cut the example's traffic")
	}
}

// fromControllerOnly reports whether peers are exactly the controller
// Deployment's pods in its namespace.
func fromControllerOnly(t *testing.T, peers []networkingv1.NetworkPolicyPeer, ctrl *appsv1.Deployment) bool {
	t.Helper()
	if len(peers) != 1 || peers[0].NamespaceSelector == nil || peers[0].PodSelector == nil || peers[0].IPBlock != nil {
		return false
	}
	ns, err := metav1.LabelSelectorAsSelector(peers[0].NamespaceSelector)
	if err != nil {
		t.Fatal(err)
	}
	pods, err := metav1.LabelSelectorAsSelector(peers[0].PodSelector)
	if err != nil {
		t.Fatal(err)
	}
	// The API server labels every namespace with its name.
	return ns.Matches(labels.Set{corev1.LabelMetadataName: ctrl.Namespace}) &&
		!ns.Matches(labels.Set{corev1.LabelMetadataName: "default"}) &&
		pods.Matches(labels.Set(ctrl.Spec.Template.Labels)) && !pods.Empty()
}
