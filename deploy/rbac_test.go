package deploy_test

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/hapod/hapod/internal/dev/bintest"
	"github.com/hapod/hapod/internal/dev/clustertest"
)

// TestControllerRunsWithItsRBAC runs the real hapod-controller, with the
// Deployment's arguments, as the manifests' ServiceAccount (impersonated)
// holding exactly the manifests' RBAC, and drives it through a promotion and
// a critical-container death. Least privilege is only right if it is also
// enough: any refused call shows up as "forbidden" in its log.
func TestControllerRunsWithItsRBAC(t *testing.T) {
	s := newServer(t)
	cs := clustertest.Clientset(t)
	ctx := t.Context()
	// The controller's namespace, and the application's: apart, so that the
	// namespaced Role cannot stand in for a missing ClusterRole rule.
	ns, appNS := clustertest.Namespace(t), clustertest.Namespace(t)
	objs := mustLoad(t, "controller")

	// The RBAC for real: namespaced objects into ns, cluster-scoped ones
	// under a name of their own so that a real installation is not touched.
	suffix := "-" + ns
	var sa *corev1.ServiceAccount
	for _, u := range relocate(t, objs, controllerNamespace, ns) {
		switch u.GetKind() {
		case "ServiceAccount", "Role", "RoleBinding":
		case "ClusterRole", "ClusterRoleBinding":
			u.SetName(u.GetName() + suffix)
			if u.GetKind() == "ClusterRoleBinding" {
				name, _, _ := unstructured.NestedString(u.Object, "roleRef", "name")
				if err := unstructured.SetNestedField(u.Object, name+suffix, "roleRef", "name"); err != nil {
					t.Fatal(err)
				}
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
		if u.GetKind() == "ServiceAccount" {
			sa = &corev1.ServiceAccount{}
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, sa); err != nil {
				t.Fatal(err)
			}
		}
	}
	kubeconfig := impersonatingKubeconfig(t, "system:serviceaccount:"+ns+":"+sa.Name)

	// The Deployment's arguments, with the pod's namespace filled in and
	// local ports for the two HTTP endpoints.
	d := only[*appsv1.Deployment](t, objs)
	c := d.Spec.Template.Spec.Containers[0]
	var args []string
	for _, a := range c.Args {
		if strings.HasPrefix(a, "--metrics-bind-address") || strings.HasPrefix(a, "--health-probe-bind-address") {
			continue
		}
		if strings.HasPrefix(a, "--role-key-dir=") {
			// The key Secret is optional and absent here: the kubelet
			// would mount an empty directory.
			a = "--role-key-dir=" + t.TempDir()
		}
		for _, e := range c.Env {
			if e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "metadata.namespace" {
				a = strings.ReplaceAll(a, "$("+e.Name+")", ns)
			}
		}
		args = append(args, a)
	}
	args = append(args, "-kubeconfig", kubeconfig, "-namespaces", appNS,
		"-metrics-bind-address", bintest.FreeAddr(t), "-health-probe-bind-address", bintest.FreeAddr(t))
	out := runController(t, args)

	// The example's ReplicaSet (its pods are made Ready by kwok).
	var rs *appsv1.ReplicaSet
	for _, u := range relocate(t, mustLoad(t, "example"), "", appNS) {
		if u.GetKind() == "ReplicaSet" {
			s.apply(t, u, nil)
			rs = only[*appsv1.ReplicaSet](t, mustLoad(t, "example"))
		}
	}
	active := func(not string) string {
		var name string
		clustertest.Eventually(t, 30*time.Second, func() (bool, error) {
			pods, err := cs.CoreV1().Pods(appNS).List(ctx, metav1.ListOptions{LabelSelector: "app=hapod,role=active"})
			if err != nil {
				return false, err
			}
			if len(pods.Items) != 1 || pods.Items[0].Name == not {
				return false, fmt.Errorf("%d active pods (not %q wanted); controller log:\n%s", len(pods.Items), not, out.String())
			}
			name = pods.Items[0].Name
			return true, nil
		})
		return name
	}
	first := active("")

	// The critical container of the active pod dies: the controller fails
	// over (patch, lease update) and deletes the pod (delete).
	critical := ""
	for _, ct := range rs.Spec.Template.Spec.Containers {
		if envValue(ct, "pwcriticality") == "critical" {
			critical = ct.Name
		}
	}
	clustertest.Eventually(t, 30*time.Second, func() (bool, error) {
		p, err := cs.CoreV1().Pods(appNS).Get(ctx, first, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		return slices.ContainsFunc(p.Status.ContainerStatuses, func(s corev1.ContainerStatus) bool { return s.Name == critical }), nil
	})
	clustertest.SetContainerTerminated(t, appNS, first, critical, 1, "Error")
	active(first)
	clustertest.Eventually(t, 30*time.Second, func() (bool, error) {
		p, err := cs.CoreV1().Pods(appNS).Get(ctx, first, metav1.GetOptions{})
		if apierrors.IsNotFound(err) || (err == nil && p.DeletionTimestamp != nil) {
			return true, nil
		}
		return false, fmt.Errorf("pod %s with a dead critical container is not deleted (%w)", first, err)
	})

	// What each permission was for, seen from the API.
	if _, err := cs.CoordinationV1().Leases(appNS).Get(ctx, "hapod-hapod", metav1.GetOptions{}); err != nil {
		t.Errorf("group epoch Lease: %v", err)
	}
	if _, err := cs.CoordinationV1().Leases(ns).Get(ctx, "hapod-controller", metav1.GetOptions{}); err != nil {
		t.Errorf("leader-election Lease in the controller's namespace: %v", err)
	}
	clustertest.Eventually(t, 10*time.Second, func() (bool, error) {
		evs, err := cs.EventsV1().Events(appNS).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err
		}
		var seen []string
		for _, e := range evs.Items {
			if e.ReportingController == "hapod-controller" || e.DeprecatedSource.Component == "hapod-controller" {
				return true, nil
			}
			seen = append(seen, e.ReportingController+"/"+e.Reason)
		}
		return false, fmt.Errorf("no event from hapod-controller, only %v", seen)
	})
	if log := out.String(); strings.Contains(log, "forbidden") {
		t.Errorf("the controller was refused a call with the manifests' RBAC:\n%s", log)
	}
}

// impersonatingKubeconfig writes a copy of the test cluster's admin
// kubeconfig that acts as user.
func impersonatingKubeconfig(t *testing.T, user string) string {
	t.Helper()
	cfg, err := clientcmd.LoadFromFile(clustertest.Kubeconfig(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range cfg.AuthInfos {
		a.Impersonate = user
	}
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		t.Fatal(err)
	}
	return path
}

// runController builds cmd/hapod-controller once and runs it until the test
// ends. The returned buffer collects its output.
func runController(t *testing.T, args []string) *bintest.Buffer {
	t.Helper()
	controller := bintest.Build(t, "github.com/hapod/hapod/cmd/hapod-controller")
	out := &bintest.Buffer{}
	cmd := exec.Command(controller, args...)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done
		if t.Failed() {
			t.Logf("controller output:\n%s", out.String())
		}
	})
	return out
}
