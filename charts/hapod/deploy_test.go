package hapod_test

import (
	"encoding/json"
	"flag"
	"path/filepath"
	"reflect"
	"slices"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"

	"github.com/hapod/hapod/internal/config"
	"github.com/hapod/hapod/internal/dev/manifest"
)

// haGroupRules are the HAGroup rules of the controller's RBAC. The chart
// grants them; deploy/ on this branch predates them (main's
// deploy/controller/rbac.yaml has exactly these), so the comparisons below
// add them to the kustomize side when missing. Once both sides have them,
// adding changes nothing.
var haGroupRules = []rbacv1.PolicyRule{
	{APIGroups: []string{"hapod.io"}, Resources: []string{"hagroups"}, Verbs: []string{"get", "list", "watch"}},
	{APIGroups: []string{"hapod.io"}, Resources: []string{"hagroups/status"}, Verbs: []string{"update"}},
}

func withHAGroupRules(rules []rbacv1.PolicyRule) []rbacv1.PolicyRule {
	out := slices.Clone(rules)
	for _, r := range haGroupRules {
		if !slices.ContainsFunc(out, func(o rbacv1.PolicyRule) bool { return reflect.DeepEqual(o, r) }) {
			out = append(out, r)
		}
	}
	return out
}

// sameRules compares rules as sets: their order means nothing to RBAC.
func sameRules(t *testing.T, what string, got, want []rbacv1.PolicyRule) {
	t.Helper()
	key := func(rules []rbacv1.PolicyRule) []string {
		var out []string
		for _, r := range rules {
			b, err := json.Marshal(r)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, string(b))
		}
		slices.Sort(out)
		return out
	}
	if g, w := key(got), key(want); !slices.Equal(g, w) {
		t.Errorf("%s rules:\n%v\nwant (deploy/):\n%v", what, g, w)
	}
}

func loadDeploy(t *testing.T, dir string) []manifest.Object {
	t.Helper()
	objs, err := manifest.Load(filepath.Join("..", "..", "deploy", dir))
	if err != nil {
		t.Fatal(err)
	}
	return objs
}

func deployOnly[T any](t *testing.T, objs []manifest.Object, keep func(T) bool) T {
	t.Helper()
	var found []T
	for _, o := range objs {
		if v, ok := o.Obj.(T); ok && (keep == nil || keep(v)) {
			found = append(found, v)
		}
	}
	if len(found) != 1 {
		var zero T
		t.Fatalf("deploy/: want exactly one %T, found %d", zero, len(found))
	}
	return found[0]
}

// checkArgs checks that the chart's container args are deploy's, in their
// order, and besides them only controller flags that restate the
// controller's defaults (the chart passes every value the admission policy
// and RBAC depend on explicitly).
func checkArgs(t *testing.T, got, want []string) {
	t.Helper()
	var extra []string
	i := 0
	for _, a := range got {
		if i < len(want) && a == want[i] {
			i++
			continue
		}
		extra = append(extra, a)
	}
	if i != len(want) {
		t.Fatalf("chart args %q lack deploy's %q (in that order)", got, want[i:])
	}
	cfg := config.Default()
	fs := flag.NewFlagSet("extra", flag.ContinueOnError)
	cfg.Bind(fs)
	if err := fs.Parse(extra); err != nil || fs.NArg() > 0 {
		t.Fatalf("chart args beyond deploy's %q: %v, %q left", extra, err, fs.Args())
	}
	if !reflect.DeepEqual(cfg, config.Default()) {
		t.Errorf("chart args beyond deploy's %q change the controller's defaults: %+v", extra, cfg)
	}
}

// checkDeployment compares what runs: the pod's and container's security
// contexts, args, env, ports, probes, resources, volumes. Names and labels
// are Helm's, the image tag the chart's appVersion.
func checkDeployment(t *testing.T, got, want *appsv1.Deployment) {
	t.Helper()
	if got.Name != want.Name || *got.Spec.Replicas != *want.Spec.Replicas {
		t.Errorf("Deployment %s, %d replicas; want %s, %d", got.Name, *got.Spec.Replicas, want.Name, *want.Spec.Replicas)
	}
	gp, wp := got.Spec.Template.Spec, want.Spec.Template.Spec
	for _, f := range []struct {
		name      string
		got, want any
	}{
		{"pod securityContext", gp.SecurityContext, wp.SecurityContext},
		{"terminationGracePeriodSeconds", gp.TerminationGracePeriodSeconds, wp.TerminationGracePeriodSeconds},
		{"serviceAccountName", gp.ServiceAccountName, wp.ServiceAccountName},
		{"volumes", gp.Volumes, wp.Volumes},
		{"containers", len(gp.Containers), len(wp.Containers)},
	} {
		if !reflect.DeepEqual(f.got, f.want) {
			t.Errorf("%s: %+v, want %+v", f.name, f.got, f.want)
		}
	}
	if len(gp.Containers) != 1 || len(wp.Containers) != 1 {
		t.Fatal("want one container each")
	}
	gc, wc := gp.Containers[0], wp.Containers[0]
	checkArgs(t, gc.Args, wc.Args)
	for _, f := range []struct {
		name      string
		got, want any
	}{
		{"name", gc.Name, wc.Name},
		{"securityContext", gc.SecurityContext, wc.SecurityContext},
		{"ports", gc.Ports, wc.Ports},
		{"livenessProbe", gc.LivenessProbe, wc.LivenessProbe},
		{"readinessProbe", gc.ReadinessProbe, wc.ReadinessProbe},
		{"resources", gc.Resources, wc.Resources},
		{"env", gc.Env, wc.Env},
		{"volumeMounts", gc.VolumeMounts, wc.VolumeMounts},
		{"imagePullPolicy", gc.ImagePullPolicy, wc.ImagePullPolicy},
	} {
		if !reflect.DeepEqual(f.got, f.want) {
			t.Errorf("container %s: %+v, want %+v", f.name, f.got, f.want)
		}
	}
}

func namespaceIs(ns string) func(*rbacv1.Role) bool {
	return func(r *rbacv1.Role) bool { return r.Namespace == ns }
}

// TestDefaultMatchesDeploy renders the chart as `helm install hapod -n
// hapod-system` and checks that it runs the controller as deploy/controller
// does, with the same RBAC (plus haGroupRules) and Service.
func TestDefaultMatchesDeploy(t *testing.T) {
	docs := render(t, "hapod", "hapod-system")
	want := loadDeploy(t, "controller")

	checkDeployment(t, only[*appsv1.Deployment](t, docs), deployOnly[*appsv1.Deployment](t, want, nil))

	cr, wcr := only[*rbacv1.ClusterRole](t, docs), deployOnly[*rbacv1.ClusterRole](t, want, nil)
	sameRules(t, "ClusterRole "+cr.Name, cr.Rules, withHAGroupRules(wcr.Rules))
	crb, wcrb := only[*rbacv1.ClusterRoleBinding](t, docs), deployOnly[*rbacv1.ClusterRoleBinding](t, want, nil)
	if !reflect.DeepEqual(crb.RoleRef, wcrb.RoleRef) || !reflect.DeepEqual(crb.Subjects, wcrb.Subjects) {
		t.Errorf("ClusterRoleBinding %+v %+v, want %+v %+v", crb.RoleRef, crb.Subjects, wcrb.RoleRef, wcrb.Subjects)
	}
	le, wle := only[*rbacv1.Role](t, docs), deployOnly[*rbacv1.Role](t, want, nil)
	if le.Name != wle.Name {
		t.Errorf("leader-election Role %s, want %s", le.Name, wle.Name)
	}
	sameRules(t, "Role "+le.Name, le.Rules, wle.Rules)

	svc, wsvc := only[*corev1.Service](t, docs), deployOnly[*corev1.Service](t, want, nil)
	if svc.Name != wsvc.Name || !reflect.DeepEqual(svc.Spec.Ports, wsvc.Spec.Ports) {
		t.Errorf("Service %s %+v, want %s %+v", svc.Name, svc.Spec.Ports, wsvc.Name, wsvc.Spec.Ports)
	}
}

// TestNamespacedMatchesDeploy renders the namespace-scoped install of
// deploy/namespaced (namespace demo, the example's group hapod) and checks
// its RBAC and args against it.
func TestNamespacedMatchesDeploy(t *testing.T) {
	docs := render(t, "hapod", "hapod-system", "--set", "watchNamespaces={demo}", "--set", "groups={hapod}")
	want := loadDeploy(t, "namespaced")

	d, wd := only[*appsv1.Deployment](t, docs), deployOnly[*appsv1.Deployment](t, want, nil)
	checkArgs(t, d.Spec.Template.Spec.Containers[0].Args, wd.Spec.Template.Spec.Containers[0].Args)

	cr, wcr := only[*rbacv1.ClusterRole](t, docs), deployOnly[*rbacv1.ClusterRole](t, want, nil)
	sameRules(t, "ClusterRole "+cr.Name, cr.Rules, wcr.Rules)

	var app *rbacv1.Role
	for _, r := range all[*rbacv1.Role](docs) {
		if r.Namespace == "demo" {
			app = r
		}
	}
	if app == nil {
		t.Fatal("no Role in namespace demo")
	}
	wapp := deployOnly(t, want, namespaceIs("demo"))
	sameRules(t, "Role demo/"+app.Name, app.Rules, withHAGroupRules(wapp.Rules))
	sameRules(t, "leader-election Role", deployOnly(t, docsAsObjects(docs), namespaceIs("hapod-system")).Rules,
		deployOnly(t, want, namespaceIs("hapod-system")).Rules)
}

// docsAsObjects lets deployOnly pick from the chart's documents too.
func docsAsObjects(docs []doc) []manifest.Object {
	var out []manifest.Object
	for _, d := range docs {
		if d.obj != nil {
			out = append(out, manifest.Object{Obj: d.obj})
		}
	}
	return out
}
