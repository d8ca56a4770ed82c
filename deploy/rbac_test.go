package deploy_test

import (
	"errors"
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/hapod/hapod/internal/dev/bintest"
	"github.com/hapod/hapod/internal/dev/clustertest"
)

// TestControllerRunsWithItsRBAC runs the real hapod-controller, with the
// Deployment's arguments, as the manifests' ServiceAccount (with a token of it)
// holding exactly the manifests' RBAC and under their admission policies,
// and drives it through a promotion and a critical-container death, once
// per install: cluster-wide (deploy/controller) and namespace-scoped
// (deploy/namespaced). Least privilege is only right if it is also enough:
// any refused call shows up as "forbidden" in its log.
func TestControllerRunsWithItsRBAC(t *testing.T) { forEachInstall(t, testControllerRuns) }

func testControllerRuns(t *testing.T, s *server, in *installed) {
	// With the HAGroup CRD served, the controller watches HAGroups and
	// writes their status: under its RBAC too.
	clustertest.InstallCRD(t)
	cs := clustertest.Clientset(t)
	ctx := t.Context()
	ns, appNS := in.ns, in.appNS

	// The Deployment's arguments, with the pod's namespace filled in and
	// local ports for the two HTTP endpoints; the cluster-wide install is
	// also told to watch appNS only, so that it leaves other tests alone.
	d := only[*appsv1.Deployment](t, in.objs)
	c := d.Spec.Template.Spec.Containers[0]
	var args []string
	namespaces := false
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
		if v, ok := strings.CutPrefix(a, "--namespaces="); ok {
			namespaces = true
			if v != namespacedAppNamespace {
				t.Fatalf("arg %s: the test moves namespace %s only", a, namespacedAppNamespace)
			}
			a = "--namespaces=" + appNS
		}
		args = append(args, a)
	}
	if !namespaces {
		args = append(args, "-namespaces", appNS)
	}
	args = append(args, "-kubeconfig", in.kubeconfig(t),
		"-metrics-bind-address", bintest.FreeAddr(t), "-health-probe-bind-address", bintest.FreeAddr(t))

	// The example's ReplicaSet (its pods are made Ready by kwok). The
	// controller starts once the policies are in force, or a pass would
	// prove nothing about them.
	var rs *appsv1.ReplicaSet
	for _, u := range relocate(t, mustLoad(t, "example"), map[string]string{"": appNS}) {
		if u.GetKind() == "ReplicaSet" {
			s.apply(t, u, nil)
			rs = only[*appsv1.ReplicaSet](t, mustLoad(t, "example"))
		}
	}
	var pod string
	clustertest.Eventually(t, 30*time.Second, func() (bool, error) {
		pods, err := cs.CoreV1().Pods(appNS).List(ctx, metav1.ListOptions{LabelSelector: "app=hapod"})
		if err != nil {
			return false, err
		}
		if len(pods.Items) == 0 {
			return false, errors.New("no pod of the ReplicaSet yet")
		}
		pod = pods.Items[0].Name
		return true, nil
	})
	in.waitForPolicies(t, pod)
	out := runController(t, args)
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
	if log := out.String(); strings.Contains(log, "forbidden") || strings.Contains(log, "ValidatingAdmissionPolicy") {
		t.Errorf("the controller was refused a call with the manifests' RBAC and admission policies:\n%s", log)
	}
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
