package controller_test

import (
	"bytes"
	"strings"
	"testing"

	"k8s.io/cli-runtime/pkg/genericiooptions"

	"github.com/hapod/hapod/api/v1alpha1"
	"github.com/hapod/hapod/internal/controller"
	"github.com/hapod/hapod/internal/dev/clustertest"
	"github.com/hapod/hapod/internal/hapodctl"
	"github.com/hapod/hapod/pkg/role"
)

// kubectl hapod against the real controller: status shows the group the
// controller runs, a switchover moves the active and waits for the
// controller's report, a pause refuses one, and the apps are never both
// active.
func TestPluginAgainstController(t *testing.T) {
	e := newEnv(t)
	e.history = &controller.AppHistory{}
	c, ls, first := e.activeHAGroup()
	e.status(c, "hapod", func(s v1alpha1.HAGroupStatus) bool { return s.Active == first.Name })
	run := func(args ...string) (string, error) {
		t.Helper()
		var out, errOut bytes.Buffer
		err := hapodctl.Run(t.Context(), append(args, "--kubeconfig", clustertest.Kubeconfig(t), "-n", e.ns),
			genericiooptions.IOStreams{In: strings.NewReader(""), Out: &out, ErrOut: &errOut})
		t.Logf("$ kubectl hapod %s\n%s%s(err %v)", strings.Join(args, " "), out.String(), errOut.String(), err)
		return out.String(), err
	}
	if out, err := run("status"); err != nil || !strings.Contains(out, first.Name) || !strings.Contains(out, "1/1") {
		t.Fatalf("status does not show %s active with 1/1 standbys: %v", first.Name, err)
	}
	out, err := run("switchover", "hapod")
	if err != nil || !strings.Contains(out, "Succeeded") {
		t.Fatalf("switchover: %v", err)
	}
	second := e.active("hapod", first.Name)
	waitRole(t, ls[second.Name], role.Active, epochOf(second))
	if _, err := run("switchover", "hapod", "--to", "nosuchpod"); err == nil {
		t.Errorf("a switchover to a pod that does not exist was not refused")
	}
	if _, err := run("pause", "hapod"); err != nil {
		t.Fatal(err)
	}
	if _, err := run("switchover", "hapod"); err == nil {
		t.Errorf("a switchover of a paused group was not refused")
	}
	if _, err := run("resume", "hapod"); err != nil {
		t.Fatal(err)
	}
	if out, err := run("switchover", "hapod", "--to", first.Name); err != nil || !strings.Contains(out, "Succeeded") {
		t.Fatalf("switchover back to %s: %v", first.Name, err)
	}
	waitRole(t, ls[first.Name], role.Active, epochOf(second)+1)
	if out, err := run("history", "hapod"); err != nil || !strings.Contains(out, "PlannedSwitchover") {
		t.Errorf("history lacks the switchovers: %v", err)
	}
	e.history.Check(t)
}
