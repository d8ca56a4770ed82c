package tour

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/utils/ptr"

	"github.com/hapod/hapod/internal/config"
	"github.com/hapod/hapod/internal/dev/child"
)

func TestFormatOffset(t *testing.T) {
	tests := []struct {
		d    time.Duration
		want string
	}{
		{0, "+0.0 ms"},
		{20 * time.Microsecond, "+0.0 ms"},  // rounds to zero without a sign flip
		{-20 * time.Microsecond, "+0.0 ms"}, // no "-0.0"
		{1234567 * time.Nanosecond, "+1.2 ms"},
		{-1072 * time.Millisecond, "-1072.0 ms"},
		{1055650 * time.Microsecond, "+1055.7 ms"},
	}
	for _, tc := range tests {
		if got := formatOffset(tc.d); got != tc.want {
			t.Errorf("formatOffset(%v) = %q, want %q", tc.d, got, tc.want)
		}
	}
}

func TestTimelineLines(t *testing.T) {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	tl := Timeline{Trigger: t0}
	tl.Add(t0.Add(30*time.Millisecond), "later")
	tl.Add(t0, "trigger")
	tl.Add(time.Time{}, "never happened") // dropped
	tl.Add(t0.Add(-1500*time.Millisecond), "before")
	tl.Add(t0.Add(30*time.Millisecond), "same time, added second")
	tl.Note("a note")
	got := strings.Join(tl.Lines(), "\n")
	want := strings.Join([]string{
		"-1500.0 ms  before",
		"   +0.0 ms  trigger",
		"  +30.0 ms  later",
		"  +30.0 ms  same time, added second",
		"            a note",
	}, "\n")
	if got != want {
		t.Fatalf("got\n%s\nwant\n%s", got, want)
	}
}

func TestMsSince(t *testing.T) {
	t0 := time.Now()
	if got := MsSince(t0, t0.Add(1500*time.Microsecond)); got != 1.5 {
		t.Errorf("MsSince = %v, want 1.5", got)
	}
	if !math.IsNaN(MsSince(t0, time.Time{})) || !math.IsNaN(MsSince(time.Time{}, t0)) {
		t.Error("MsSince with an unknown time is not NaN")
	}
	if FormatMs(math.NaN()) != "-" || FormatMs(12.34) != "12.3" {
		t.Errorf("FormatMs: %q %q", FormatMs(math.NaN()), FormatMs(12.34))
	}
}

func TestWriteSummary(t *testing.T) {
	a := newScene("a", "initial election", true)
	a.Ran, a.Failover, a.LabelMs, a.AckMs, a.SliceMs, a.StandbyMs = true, true, 19.54, 11.5, 27.3, 21
	b := newScene("b", "the active pod is deleted", true)
	b.Ran, b.Failover = true, true
	b.Requests = Requests{OK: 202, NoEndpoint: 6, ConnError: 3}
	b.problem("something")
	c := newScene("c", "skipped one", true)
	var buf bytes.Buffer
	if err := WriteSummary(&buf, []*Scene{a, b, c}); err != nil {
		t.Fatal(err)
	}
	want := `scene                        failover  label ms  ack ms  slice ms  standby ms  requests ok/failed  result
a initial election           yes       19.5      11.5    27.3      21.0        -                   ok
b the active pod is deleted  yes       -         -       -         -           202/9               UNEXPECTED
c skipped one                -         -         -       -         -           -                   skipped
`
	if buf.String() != want {
		t.Fatalf("got\n%s\nwant\n%s", buf.String(), want)
	}
	r := &Result{Scenes: []*Scene{a}}
	if !r.OK() {
		t.Error("a result with one good scene is not OK")
	}
	r.Scenes = append(r.Scenes, c)
	if r.OK() {
		t.Error("a result with a skipped scene is OK")
	}
}

func TestRequestsDescribe(t *testing.T) {
	r := Requests{OK: 10}
	if got := r.describe(); got != "10 requests, all answered 200" {
		t.Errorf("got %q", got)
	}
	r = Requests{OK: 10, NoEndpoint: 2, BadStatus: 1}
	if got := r.describe(); got != "13 requests, 10 answered 200, 3 failed (2 no ready endpoint, 1 non-200 answer)" {
		t.Errorf("got %q", got)
	}
}

func TestRoute(t *testing.T) {
	loop := map[string]netip.Addr{
		"198.51.100.1": netip.MustParseAddr("127.77.0.1"),
		"198.51.100.2": netip.MustParseAddr("127.77.0.2"),
		"198.51.100.9": netip.MustParseAddr("10.0.0.9"), // never a destination
	}
	tests := []struct {
		name string
		eps  []endpoint
		n    int
		want string // "" for an error
		noEP bool   // the error is errNoEndpoint
	}{
		{"the one ready endpoint", []endpoint{{IP: "198.51.100.1", Ready: true}}, 0, "127.77.0.1:8080", false},
		// A not-ready endpoint gets no traffic, as with kube-proxy.
		{"not ready skipped", []endpoint{{IP: "198.51.100.1", Ready: false}, {IP: "198.51.100.2", Ready: true}}, 0, "127.77.0.2:8080", false},
		{"turns among ready", []endpoint{{IP: "198.51.100.1", Ready: true}, {IP: "198.51.100.2", Ready: true}}, 1, "127.77.0.2:8080", false},
		{"none ready", []endpoint{{IP: "198.51.100.1", Ready: false}}, 0, "", true},
		{"empty", nil, 0, "", true},
		// An endpoint whose pod the tour does not know (yet) has nowhere to go.
		{"unknown pod", []endpoint{{IP: "198.51.100.7", Ready: true}}, 0, "", true},
		// The guard: only loopback destinations.
		{"non-loopback refused", []endpoint{{IP: "198.51.100.9", Ready: true}}, 0, "", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := route(tc.eps, loop, 8080, tc.n)
			if tc.want == "" {
				if err == nil {
					t.Fatalf("routed to %s, want an error", got)
				}
				if errors.Is(err, errNoEndpoint) != tc.noEP {
					t.Fatalf("error %v: errNoEndpoint %t, want %t", err, errors.Is(err, errNoEndpoint), tc.noEP)
				}
				return
			}
			if err != nil || got.String() != tc.want {
				t.Fatalf("got %v, %v; want %s", got, err, tc.want)
			}
		})
	}
}

func TestExampleForTour(t *testing.T) {
	ex, err := LoadExample(filepath.Join("..", "..", "..", "deploy", "example"))
	if err != nil {
		t.Fatal(err)
	}
	p, err := ex.forTour("ns1", "node1", config.Default())
	if err != nil {
		t.Fatal(err)
	}
	tmpl := p.rs.Spec.Template
	switch {
	case p.rs.Namespace != "ns1" || p.svc.Namespace != "ns1":
		t.Errorf("namespaces %q %q", p.rs.Namespace, p.svc.Namespace)
	case tmpl.Annotations[ExternalReadinessAnnotation] != "true":
		t.Errorf("template annotations %v", tmpl.Annotations)
	case tmpl.Spec.NodeSelector[hostnameLabel] != "node1":
		t.Errorf("nodeSelector %v", tmpl.Spec.NodeSelector)
	case p.critical != "app" || p.sidecar != "sidecar":
		t.Errorf("critical %q, sidecar %q", p.critical, p.sidecar)
	case p.httpPort != 8080 || p.rolePort != 7477:
		t.Errorf("ports %d %d", p.httpPort, p.rolePort)
	case p.rs.Spec.Selector.MatchLabels["app"] != "hapod" || len(p.rs.Spec.Selector.MatchLabels) != 1:
		t.Errorf("selector %v: the tour must not change it", p.rs.Spec.Selector)
	}
	// The shipped objects are untouched.
	if ex.ReplicaSet.Namespace != "" || ex.ReplicaSet.Spec.Template.Annotations[ExternalReadinessAnnotation] != "" {
		t.Error("forTour changed the loaded example")
	}
	// The apply patch carries no status and no empty timestamps.
	data, err := applyJSON(p.rs)
	if err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{`"status"`, `"creationTimestamp"`} {
		if bytes.Contains(data, []byte(bad)) {
			t.Errorf("apply patch contains %s: %s", bad, data)
		}
	}
	if !bytes.Contains(data, []byte(`"kind":"ReplicaSet"`)) {
		t.Errorf("apply patch has no kind: %s", data)
	}
}

func TestExampleRefusals(t *testing.T) {
	ex, err := LoadExample(filepath.Join("..", "..", "..", "deploy", "example"))
	if err != nil {
		t.Fatal(err)
	}
	one := *ex
	one.ReplicaSet = ex.ReplicaSet.DeepCopy()
	one.ReplicaSet.Spec.Replicas = ptr.To(int32(1))
	if _, err := one.forTour("ns", "node", config.Default()); err == nil {
		t.Error("a single replica accepted: the scenes need a standby")
	}
	noCrit := *ex
	noCrit.ReplicaSet = ex.ReplicaSet.DeepCopy()
	for i := range noCrit.ReplicaSet.Spec.Template.Spec.Containers {
		noCrit.ReplicaSet.Spec.Template.Spec.Containers[i].Env = nil
	}
	if _, err := noCrit.forTour("ns", "node", config.Default()); err == nil {
		t.Error("a pod without a critical container accepted")
	}
	if _, err := LoadExample(t.TempDir()); err == nil {
		t.Error("a directory without kustomization.yaml accepted")
	}
}

func TestOwnerAlive(t *testing.T) {
	parent := os.Getppid()
	start, err := child.StartTime(parent)
	if err != nil {
		t.Skipf("no /proc: %v", err)
	}
	tests := []struct {
		owner string
		want  bool
	}{
		{fmt.Sprintf("%d %d", parent, start), true},           // another live process: in use
		{fmt.Sprintf("%d %d", parent, start+1), false},        // its pid, reused by a later process
		{ownerValue(), false},                                 // ourselves: a leftover of this process
		{"", false}, {"12 x", false}, {"not an owner", false}, // no or bad annotation
	}
	for _, tc := range tests {
		if got := ownerAlive(tc.owner); got != tc.want {
			t.Errorf("ownerAlive(%q) = %t, want %t", tc.owner, got, tc.want)
		}
	}
}
