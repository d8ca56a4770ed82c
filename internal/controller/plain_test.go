package controller_test

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/hapod/hapod/internal/dev/clustertest"
	"github.com/hapod/hapod/pkg/role"
)

// seedApp is an app written as the seed design describes it: one UDP
// socket on which any datagram means "become active", and nothing sent
// back. It records what it receives, and the test records when it dies.
type seedApp struct {
	name string
	conn *net.UDPConn

	mu     sync.Mutex
	got    []seedDatagram
	deadAt time.Time // zero while it runs
}

type seedDatagram struct {
	at      time.Time
	payload []byte
}

// seedApps are the apps of one group, by pod name.
type seedApps struct {
	t    *testing.T
	port int
	apps map[string]*seedApp
}

func newSeedApps(t *testing.T) *seedApps {
	return &seedApps{t: t, port: 20000 + rand.IntN(40000), apps: map[string]*seedApp{}}
}

// start binds the app of each pod not yet running one, on the pod's
// (loopback) IP and the group's plain port.
func (s *seedApps) start(pods []corev1.Pod) {
	s.t.Helper()
	for _, p := range pods {
		if s.apps[p.Name] != nil {
			continue
		}
		ip, err := netip.ParseAddr(p.Status.PodIP)
		if err != nil || !ip.IsLoopback() {
			s.t.Fatalf("pod %s has IP %q; the test needs a loopback pod IP", p.Name, p.Status.PodIP)
		}
		conn, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(ip, uint16(s.port))))
		if err != nil {
			s.t.Fatal(err)
		}
		a := &seedApp{name: p.Name, conn: conn}
		s.apps[p.Name] = a
		s.t.Cleanup(func() { conn.Close() })
		go a.serve()
	}
}

func (a *seedApp) serve() {
	buf := make([]byte, 2048)
	for {
		n, _, err := a.conn.ReadFromUDP(buf)
		if err != nil {
			return // closed
		}
		a.mu.Lock()
		a.got = append(a.got, seedDatagram{at: time.Now(), payload: bytes.Clone(buf[:n])})
		a.mu.Unlock()
	}
}

func (a *seedApp) received() []seedDatagram {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]seedDatagram(nil), a.got...)
}

// kill records the app's death; the caller then makes the API show it.
func (a *seedApp) kill() {
	a.mu.Lock()
	a.deadAt = time.Now()
	a.mu.Unlock()
	// A dead app holds no port: a new pod may get its IP.
	a.conn.Close()
}

// waitCopies waits until the app has received n datagrams.
func (s *seedApps) waitCopies(name string, n int) {
	s.t.Helper()
	clustertest.Eventually(s.t, 15*time.Second, func() (bool, error) {
		return len(s.apps[name].received()) >= n, nil
	})
}

// check asserts what every app held over the whole test: each app that was
// promoted received exactly copies datagrams of payload (one "become
// active", repeated), every other app nothing, nothing reached an app after
// its death, and no app became active (its first datagram) before the app
// active before it had died.
func (s *seedApps) check(payload string, copies int, promoted ...string) {
	s.t.Helper()
	want := map[string]bool{}
	for _, p := range promoted {
		want[p] = true
	}
	var prev *seedApp
	for _, name := range promoted {
		a := s.apps[name]
		got := a.received()
		if len(got) == 0 {
			s.t.Errorf("%s: promoted, but its app received nothing", name)
			continue
		}
		if prev != nil && (prev.deadAt.IsZero() || got[0].at.Before(prev.deadAt)) {
			s.t.Errorf("%s became active at %s while %s was alive (died %s): two apps acting active",
				name, got[0].at.Format(time.StampMicro), prev.name, prev.deadAt.Format(time.StampMicro))
		}
		prev = a
	}
	for name, a := range s.apps {
		got := a.received()
		if !want[name] {
			if len(got) != 0 {
				s.t.Errorf("%s was never promoted, but its app received %d datagrams (a seed-style app takes each as \"become active\")", name, len(got))
			}
			continue
		}
		if len(got) != copies {
			s.t.Errorf("%s received %d datagrams, want the %d copies of one promotion", name, len(got), copies)
		}
		for _, d := range got {
			if string(d.payload) != payload {
				s.t.Errorf("%s received %q, want %q", name, d.payload, payload)
			}
			if !a.deadAt.IsZero() && d.at.After(a.deadAt) {
				s.t.Errorf("%s received a datagram after its death", name)
			}
		}
	}
}

// plainGroup creates a ReplicaSet of two pods in plain mode, with the
// annotations given on top of the mode and the port, and their apps.
func plainGroup(t *testing.T, e *env, ann map[string]string) (*seedApps, []corev1.Pod) {
	t.Helper()
	apps := newSeedApps(t)
	tmpl := e.podTemplate("hapod")
	tmpl.Annotations = map[string]string{role.RoleMessagesAnnotation: "plain", role.PlainPortAnnotation: fmt.Sprint(apps.port)}
	for k, v := range ann {
		tmpl.Annotations[k] = v
	}
	if _, err := e.cs.AppsV1().ReplicaSets(e.ns).Create(t.Context(), newRS("hapod", 2, tmpl), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pods := e.runningPods("hapod", 2)
	apps.start(pods)
	return apps, pods
}

// Seed-style apps in plain mode: the active's app is sent the default
// payload, three copies, after its label; no standby is sent anything; a
// failover waits for the API to show the old app dead (its critical
// container terminated) or its pod gone (a deletion held by a finalizer
// until the test lets it finish).
func TestPlainDatagramFailover(t *testing.T) {
	e := newEnv(t)
	e.neverTwoActive("hapod")
	apps, _ := plainGroup(t, e, nil)
	e.startController()
	first := e.active("hapod")
	apps.waitCopies(first.Name, 3)
	e.hasEvent("", "PlainRoleMessages")

	// The app dies; the kubelet reports it.
	apps.apps[first.Name].kill()
	clustertest.SetContainerTerminated(t, e.ns, first.Name, "app", 137, "Error")
	second := e.active("hapod", first.Name)
	apps.waitCopies(second.Name, 3)
	e.gone(first)
	apps.start(e.runningPods("hapod", 2))

	// A deletion: the app runs until the kubelet has stopped it, which the
	// finalizer stands for. The switch must wait.
	hold := `{"metadata":{"finalizers":["hapod.io/test-hold"]}}`
	if _, err := e.cs.CoreV1().Pods(e.ns).Patch(t.Context(), second.Name, types.MergePatchType, []byte(hold), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := e.cs.CoreV1().Pods(e.ns).Delete(t.Context(), second.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	e.hasEvent(second.Name, "SwitchStuck")
	apps.start(e.runningPods("hapod", 2)) // the third and second's replacement
	for name, a := range apps.apps {
		if name != first.Name && name != second.Name && len(a.received()) != 0 {
			t.Fatalf("%s was told active while the old active %s was still being deleted", name, second.Name)
		}
	}
	apps.apps[second.Name].kill()
	release := `{"metadata":{"finalizers":null}}`
	if _, err := e.cs.CoreV1().Pods(e.ns).Patch(t.Context(), second.Name, types.MergePatchType, []byte(release), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	next := e.active("hapod", first.Name, second.Name)
	apps.waitCopies(next.Name, 3)
	e.runningPods("hapod", 2)

	apps.check("GoActiveDuringFailover", 3, first.Name, second.Name, next.Name)
}

// An active that is merely not Ready may still run: in plain mode it
// cannot be told to stop, so nobody is promoted until the API proves its
// app dead. With one copy configured, the new active receives exactly one
// datagram, the configured payload.
func TestPlainWaitsForProofOfDeath(t *testing.T) {
	e := newEnv(t)
	e.cfg.NotReadyGrace = 300 * time.Millisecond
	e.neverTwoActive("hapod")
	apps, _ := plainGroup(t, e, map[string]string{role.PlainPayloadAnnotation: "BECOME-ACTIVE", role.PlainRepeatsAnnotation: "1"})
	e.startController()
	first := e.active("hapod")
	apps.waitCopies(first.Name, 1)

	setReady(t, e, first.Name, corev1.ConditionFalse)
	e.hasEvent(first.Name, "SwitchStuck")
	cur, err := e.cs.CoreV1().Pods(e.ns).Get(t.Context(), first.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if cur.Labels["role"] != "active" {
		t.Errorf("%s lost its label while its app may still run", first.Name)
	}
	for name, a := range apps.apps {
		if name != first.Name && len(a.received()) != 0 {
			t.Fatalf("%s was told active while the old active's app may still run", name)
		}
	}

	apps.apps[first.Name].kill()
	clustertest.SetContainerTerminated(t, e.ns, first.Name, "app", 137, "Error")
	second := e.active("hapod", first.Name)
	apps.waitCopies(second.Name, 1)
	e.gone(first)
	e.runningPods("hapod", 2)

	apps.check("BECOME-ACTIVE", 1, first.Name, second.Name)
}
