package controller

import (
	"bytes"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/hapod/hapod/internal/dev/keydir"
	"github.com/hapod/hapod/internal/notify"
	"github.com/hapod/hapod/internal/rolekey"
	"github.com/hapod/hapod/pkg/role"
)

// A key rotation under a running group, as an operator does it with
// mounted Secrets (the kubelet's ..data swap): the new key is added on
// both sides, the controller's Secret makes it current, the old key is
// removed. The real reconciler, renewal loop and Notifier renew the
// active's lease throughout over 127.0.0.1 to real listeners: no failover,
// no message or ack refused.
func TestKeyRotationUnderRunningGroup(t *testing.T) {
	const group = "ns/hapod"
	k1, k2 := bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 32)
	sub := func(masters map[string][]byte) map[string][]byte {
		out := map[string][]byte{}
		for kid, k := range masters {
			out[kid] = rolekey.GroupKey(k, group)
		}
		return out
	}
	masterDir, podDir := t.TempDir(), t.TempDir()
	write := func(dir string, keys map[string][]byte, current string) {
		t.Helper()
		if err := keydir.Write(dir, keys, current); err != nil {
			t.Fatal(err)
		}
	}
	write(masterDir, map[string][]byte{"k1": k1}, "")
	write(podDir, sub(map[string][]byte{"k1": k1}), "")
	// Short polls, so that the test does not wait for the defaults' 10s.
	const poll = 20 * time.Millisecond
	keys, err := rolekey.Open(masterDir, poll, 0)
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	w := newFakeWorld(t, []string{"a", "b"}, nil, worldOptions{
		listener: func(c *role.Config) { c.KeyDir, c.KeyPoll, c.Group = podDir, poll, group },
		notifier: func(c *notify.Config) { c.Keys, c.Registerer = keys, reg },
	})
	w.elect()
	active := w.apps["a"]
	// renewals waits until the active has taken n more renewals: each is
	// verified by the listener, and its ack by the Notifier.
	renewals := func(what string, n uint64) {
		t.Helper()
		target := active.Stats().Renewed + n
		deadline := time.Now().Add(20 * time.Second)
		for active.Stats().Renewed < target {
			if time.Now().After(deadline) {
				// Say what stopped the renewals: a refusal, a lapse, a failover.
				t.Fatalf("%s: %d renewals within 20s, want %d more; active holds %+v, its stats %+v; events %v",
					what, active.Stats().Renewed, n, active.State(), active.Stats(), w.events.list())
			}
			time.Sleep(10 * time.Millisecond)
		}
		if !w.labelled("a", "active", 1) || !w.holds("a", role.Active, 1) {
			t.Fatalf("%s: the active changed: a holds %+v", what, active.State())
		}
	}
	renewals("under k1", 3)

	// 1. The new key everywhere; the old one still signs.
	write(podDir, sub(map[string][]byte{"k1": k1, "k2": k2}), "")
	write(masterDir, map[string][]byte{"k1": k1, "k2": k2}, "k1")
	renewals("k2 added", 3)
	// 2. The new key signs.
	write(masterDir, map[string][]byte{"k1": k1, "k2": k2}, "k2")
	clusterPoll(t, func() bool { return keys.Ring(time.Now()).Current() == "k2" })
	renewals("k2 current", 3)
	// 3. The old key goes; what is renewed now is renewed under k2.
	write(masterDir, map[string][]byte{"k2": k2}, "")
	write(podDir, sub(map[string][]byte{"k2": k2}), "")
	clusterPoll(t, func() bool { _, ok := keys.Ring(time.Now()).Key("k1"); return !ok })
	renewals("k1 removed", 5)

	for name, l := range w.apps {
		if st := l.Stats(); st.Unauthenticated+st.UnknownKey+st.BadMAC+st.Expired+st.Replayed != 0 {
			t.Errorf("listener %s refused messages: %+v", name, st)
		}
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "hapod_notify_refused_acks_total" {
			for _, m := range mf.GetMetric() {
				if v := m.GetCounter().GetValue(); v != 0 {
					t.Errorf("refused acks %s: %v", labelOf(m), v)
				}
			}
		}
	}
	if n := w.events.count(ReasonLeaseLapsed); n != 0 {
		t.Errorf("%d LeaseLapsed events: %v", n, w.events.list())
	}
	w.history.Check(t)
}

func labelOf(m *dto.Metric) string {
	for _, l := range m.GetLabel() {
		return l.GetName() + "=" + l.GetValue()
	}
	return ""
}
