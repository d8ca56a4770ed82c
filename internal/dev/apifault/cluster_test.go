package apifault

import (
	"context"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/hapod/hapod/internal/dev/clustertest"
)

const fieldManager = "hapod-apifault-test"

// Against the real API server, through the proxy with client-go as a controller
// uses it: reads and writes work; injected write failures are what client-go
// reports as 500 and 429; a watch streams events until a partition cuts it; an
// informer started before the partition recovers by itself after Reset.
func TestRealAPIServer(t *testing.T) {
	direct := clustertest.Clientset(t)
	ns := clustertest.Namespace(t)
	p, err := Start(clustertest.RESTConfig(t), Options{Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := p.Close(); err != nil {
			t.Error(err)
		}
	}()
	cs, err := kubernetes.NewForConfig(p.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	cms := cs.CoreV1().ConfigMaps(ns)
	cm, err := cms.Create(t.Context(), &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "cm"}}, metav1.CreateOptions{FieldManager: fieldManager})
	if err != nil {
		t.Fatalf("create through the proxy: %v", err)
	}
	patch := func(c kubernetes.Interface, value string) error {
		_, err := c.CoreV1().ConfigMaps(ns).Patch(t.Context(), cm.Name, types.MergePatchType,
			[]byte(`{"data":{"v":"`+value+`"}}`), metav1.PatchOptions{FieldManager: fieldManager})
		return err
	}
	if err := patch(cs, "1"); err != nil {
		t.Fatalf("patch through the proxy: %v", err)
	}
	if got, err := cms.Get(t.Context(), cm.Name, metav1.GetOptions{}); err != nil || got.Data["v"] != "1" {
		t.Fatalf("get through the proxy: %v, %v; want v=1", got.Data, err)
	}

	t.Run("write failures", func(t *testing.T) {
		p.SetFaults(Faults{WriteFailure: 1, Failure: InternalError})
		if err := patch(cs, "2"); !apierrors.IsInternalError(err) {
			t.Errorf("patch with failing writes: %v, want an InternalError", err)
		}
		if _, err := cms.Get(t.Context(), cm.Name, metav1.GetOptions{}); err != nil {
			t.Errorf("a read while writes fail: %v", err)
		}
		// client-go honours the Retry-After: 1 itself, up to 10 times, before
		// it returns the 429.
		p.SetFaults(Faults{WriteFailure: 1, Failure: TooManyRequests})
		before := p.Stats().Failed
		began := time.Now()
		if err := patch(cs, "2"); !apierrors.IsTooManyRequests(err) {
			t.Errorf("patch with writes shed: %v, want TooManyRequests", err)
		}
		attempts := p.Stats().Failed - before
		t.Logf("client-go sent the patch %d times over %s before it returned the 429", attempts, time.Since(began).Round(time.Millisecond))
		if attempts < 2 {
			t.Errorf("client-go sent the patch %d times, want it to retry a 429 with Retry-After", attempts)
		}
		p.Reset()
		if err := patch(cs, "3"); err != nil {
			t.Errorf("patch after Reset: %v", err)
		}
	})

	t.Run("watch and partition", func(t *testing.T) {
		w, err := cms.Watch(t.Context(), metav1.ListOptions{
			FieldSelector:   fields.OneTermEqualSelector("metadata.name", cm.Name).String(),
			ResourceVersion: currentVersion(t, direct, ns, cm.Name),
		})
		if err != nil {
			t.Fatal(err)
		}
		defer w.Stop()
		informed := startInformer(t, cs, ns)

		if err := patch(direct, "watched"); err != nil {
			t.Fatal(err)
		}
		waitEvent(t, w.ResultChan(), "watched")
		waitValue(t, informed, cm.Name, "watched")

		cut := p.Stats().Cut
		p.Partition(true)
		waitClosed(t, w.ResultChan())
		if got := p.Stats().Cut - cut; got < 2 {
			t.Errorf("%d requests cut, want at least the watch and the informer's", got)
		}
		if err := patch(cs, "partitioned"); err == nil {
			t.Error("a patch went through the partition")
		} else {
			t.Logf("a patch during the partition: %v", err)
		}
		began := time.Now()
		if _, err := cms.Get(t.Context(), cm.Name, metav1.GetOptions{}); err == nil {
			t.Error("a get went through the partition")
		} else {
			t.Logf("a get during the partition, after %s: %v", time.Since(began).Round(time.Millisecond), err)
		}
		// Changed behind the partition: the informer must catch up after it.
		if err := patch(direct, "after"); err != nil {
			t.Fatal(err)
		}

		p.Reset()
		began = time.Now()
		waitValue(t, informed, cm.Name, "after")
		t.Logf("the informer caught up %s after Reset", time.Since(began).Round(time.Millisecond))
		w2, err := cms.Watch(t.Context(), metav1.ListOptions{
			FieldSelector:   fields.OneTermEqualSelector("metadata.name", cm.Name).String(),
			ResourceVersion: currentVersion(t, direct, ns, cm.Name),
		})
		if err != nil {
			t.Fatalf("watch after Reset: %v", err)
		}
		defer w2.Stop()
		if err := patch(cs, "healed"); err != nil {
			t.Fatalf("patch after Reset: %v", err)
		}
		waitEvent(t, w2.ResultChan(), "healed")
	})
	t.Logf("stats %+v", p.Stats())
}

func currentVersion(t *testing.T, cs kubernetes.Interface, ns, name string) string {
	t.Helper()
	cm, err := cs.CoreV1().ConfigMaps(ns).Get(t.Context(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return cm.ResourceVersion
}

// startInformer starts a ConfigMap informer on ns and returns its store, synced.
func startInformer(t *testing.T, cs kubernetes.Interface, ns string) cache.Store {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	factory := informers.NewSharedInformerFactoryWithOptions(cs, 0, informers.WithNamespace(ns))
	t.Cleanup(func() { cancel(); factory.Shutdown() })
	informer := factory.Core().V1().ConfigMaps().Informer()
	factory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), informer.HasSynced) {
		t.Fatal("the informer did not sync")
	}
	return informer.GetStore()
}

// waitEvent waits for a Modified event with data v=value.
func waitEvent(t *testing.T, events <-chan watch.Event, value string) {
	t.Helper()
	readWatch(t, events, "an event with v="+value, func(ev watch.Event, open bool) bool {
		if !open {
			t.Fatalf("the watch ended before v=%s", value)
		}
		cm, isCM := ev.Object.(*corev1.ConfigMap)
		return isCM && ev.Type == watch.Modified && cm.Data["v"] == value
	})
}

// waitClosed waits for a watch's channel to close, as client-go closes it when
// the stream breaks.
func waitClosed(t *testing.T, events <-chan watch.Event) {
	t.Helper()
	readWatch(t, events, "the end of the watch", func(ev watch.Event, open bool) bool {
		if open {
			t.Logf("the cut watch delivered a %s event", ev.Type)
		}
		return !open
	})
}

// readWatch reads events until done returns true (open is false once the channel
// has closed), and fails the test if 30 s pass first.
func readWatch(t *testing.T, events <-chan watch.Event, what string, done func(ev watch.Event, open bool) bool) {
	t.Helper()
	timeout := time.After(30 * time.Second)
	for {
		select {
		case ev, open := <-events:
			if done(ev, open) {
				return
			}
			if !open {
				t.Fatalf("the watch closed before %s", what)
			}
		case <-timeout:
			t.Fatalf("%s did not come within 30 s", what)
		}
	}
}

// waitValue waits until the informer's store holds the ConfigMap with v=value. The
// informer retries with backoff after its watch fails (up to 30 s apart).
func waitValue(t *testing.T, store cache.Store, name, value string) {
	t.Helper()
	clustertest.Eventually(t, 2*time.Minute, func() (bool, error) {
		for _, obj := range store.List() {
			if cm := obj.(*corev1.ConfigMap); cm.Name == name && cm.Data["v"] == value {
				return true, nil
			}
		}
		return false, nil
	})
}
