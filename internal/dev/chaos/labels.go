package chaos

import (
	"context"
	"fmt"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// labels follows the role labels of every pod of the run from the
// recorder's own watch, one event at a time in the order the watch
// delivered them, and records each group's active-labelled pods after every
// event that concerns the group. A pod counts as labelled active from an
// event that shows it so until one that shows it otherwise or deleted
// (a terminating pod still carries its label, and still counts).
type labels struct {
	rec                           *Recorder
	groupLabel, roleLabel, active string
	byGroup                       map[string]map[string]bool // group → pods labelled active
	onPod                         func(p *corev1.Pod, deleted bool)
	factory                       informers.SharedInformerFactory
	stopFactory                   context.CancelFunc
}

// groupOf is a pod's group as the controller names it: namespace/value of
// the group label.
func groupOf(p *corev1.Pod, groupLabel string) string {
	return p.Namespace + "/" + p.Labels[groupLabel]
}

// watchLabels starts the watch of the pods that match selector in every
// namespace; onPod gets every event after the recorder (the run's kubelets
// start and stop apps from it).
func watchLabels(ctx context.Context, cs kubernetes.Interface, selector, groupLabel, roleLabel, active string, rec *Recorder, onPod func(*corev1.Pod, bool)) (*labels, error) {
	l := &labels{rec: rec, roleLabel: roleLabel, active: active, groupLabel: groupLabel,
		byGroup: map[string]map[string]bool{}, onPod: onPod}
	ctx, l.stopFactory = context.WithCancel(ctx)
	l.factory = informers.NewSharedInformerFactoryWithOptions(cs, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = selector }))
	if _, err := l.factory.Core().V1().Pods().Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { l.see(obj, false) },
		UpdateFunc: func(_, obj any) { l.see(obj, false) },
		DeleteFunc: func(obj any) { l.see(obj, true) },
	}); err != nil {
		return nil, err
	}
	l.factory.Start(ctx.Done())
	for typ, ok := range l.factory.WaitForCacheSync(ctx.Done()) {
		if !ok {
			l.stop()
			return nil, fmt.Errorf("the recorder's watch of %v did not sync", typ)
		}
	}
	return l, nil
}

func (l *labels) stop() {
	l.stopFactory()
	l.factory.Shutdown()
}

// see runs on the informer's one handler goroutine, so events arrive one at
// a time, in order.
func (l *labels) see(obj any, deleted bool) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return
	}
	g := groupOf(p, l.groupLabel)
	set := l.byGroup[g]
	if set == nil {
		set = map[string]bool{}
		l.byGroup[g] = set
	}
	was := set[p.Name]
	now := !deleted && p.Labels[l.roleLabel] == l.active
	if now {
		set[p.Name] = true
	} else {
		delete(set, p.Name)
	}
	if was != now || len(set) > 1 {
		names := make([]string, 0, len(set))
		for n := range set {
			names = append(names, n)
		}
		slices.Sort(names)
		l.rec.Label(LabelState{At: time.Now(), ResourceVersion: p.ResourceVersion, Group: g, Active: names})
	}
	if l.onPod != nil {
		l.onPod(p, deleted)
	}
}
