package ctrlproc

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/hapod/hapod/internal/dev/bintest"
	"github.com/hapod/hapod/internal/dev/clustertest"
	"github.com/hapod/hapod/internal/record"
	"github.com/hapod/hapod/pkg/role"
)

func TestMain(m *testing.M) { clustertest.Main(m, bintest.Cleanup) }

func controllerBin(t *testing.T) string {
	return bintest.Build(t, "github.com/hapod/hapod/cmd/hapod-controller")
}

// The controller runs, promotes a pod, and its record arrives with the
// timings; Stop is not a failure.
func TestStartFollowsRecords(t *testing.T) {
	cs := clustertest.Clientset(t)
	ns := clustertest.Namespace(t)
	node := clustertest.Node(t)
	app, err := role.Listen(t.Context(), role.Config{Addr: "127.0.0.1:0", PodName: "app-0"})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = app.Close() }()
	var seen []record.Record
	c, err := Start(t.Context(), Options{
		Bin: controllerBin(t), Kubeconfig: clustertest.Kubeconfig(t), Namespaces: ns,
		LogPath:  filepath.Join(t.TempDir(), "controller.log"),
		OnRecord: func(r record.Record) { seen = append(seen, r) },
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Stop()

	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: "app-0", Labels: map[string]string{"app": "hapod", "role": "standby"},
			Annotations: map[string]string{role.RoleAddressAnnotation: app.Addr().String()},
		},
		Spec: corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "app", Image: "app"}}},
	}
	if _, err := cs.CoreV1().Pods(ns).Create(t.Context(), pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	deadline := time.After(30 * time.Second)
	var r record.Record
	for ok := false; !ok; {
		changed := c.Changed()
		if r, ok = c.Promotion("app-0"); ok {
			break
		}
		select {
		case <-changed:
		case <-c.Failed():
			t.Fatal(c.Err())
		case <-deadline:
			t.Fatalf("no failover record within 30s; tail of the log:\n%s", tailOf(c))
		}
	}
	if r.Kind != record.Promoted || r.Group != ns+"/hapod" || r.Epoch == 0 || r.Seen.IsZero() || r.Acked.IsZero() || r.Labelled.IsZero() {
		t.Errorf("record %+v: want a promotion of %s/hapod with an epoch, seen, labelled and acked", r, ns)
	}
	if s := app.State(); s.Role != role.Active || s.Epoch != r.Epoch {
		t.Errorf("the app holds %s at epoch %d, the record says active at %d", s.Role, s.Epoch, r.Epoch)
	}
	c.Stop()
	select {
	case <-c.Failed():
		t.Fatalf("Stop counted as a failure: %v", c.Err())
	default:
	}
	if len(seen) != len(c.Records()) {
		t.Errorf("OnRecord saw %d records, Records has %d", len(seen), len(c.Records()))
	}
}

// A controller that cannot start is reported at once, with its own words.
func TestStartReportsExit(t *testing.T) {
	dir := t.TempDir()
	_, err := Start(t.Context(), Options{
		Bin: controllerBin(t), Kubeconfig: filepath.Join(dir, "missing"), Namespaces: "x",
		LogPath: filepath.Join(dir, "controller.log"),
	})
	if err == nil || !strings.Contains(err.Error(), "exited") || !strings.Contains(err.Error(), "kubeconfig") {
		t.Fatalf("Start = %v, want the exit and the controller's message about the kubeconfig", err)
	}
}

func tailOf(c *Controller) string {
	b, _ := os.ReadFile(c.LogPath())
	return string(b)
}
