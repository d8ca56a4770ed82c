package realtour

import (
	"fmt"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/hapod/hapod/internal/config"
	"github.com/hapod/hapod/internal/dev/localcluster"
	"github.com/hapod/hapod/internal/dev/realpod"
	"github.com/hapod/hapod/internal/dev/tour"
)

// recordsMount is where the app's container sees the records directory.
const recordsMount = "/hapod-records"

// plan is the example as the tour applies it on the real nodes.
type plan struct {
	rs                *appsv1.ReplicaSet
	svc               *corev1.Service
	group             string // the pods' group label's value
	critical, sidecar string // container names
	images            string // what the pods run, for the timeline
	about             string // what the group is, said when it is applied
}

// fileGroup is the group (app label) whose app knows hapod only by the role
// file that hapod-agent, its sidecar, writes.
const fileGroup = "hapod-file"

// fileAppPlan is the file group's ReplicaSet and Service in namespace ns:
// two replicas of hapod-file-app, critical and restartPolicy Never as the
// example's app, with hapod-agent as the sidecar that receives the role
// messages and writes the role file (realpod.Options.RoleFile); the apps
// write their role records to records. Its Service selects the active as
// the example's does.
func fileAppPlan(ns, records string, cfg config.Config) *plan {
	labels := map[string]string{cfg.GroupLabel: fileGroup}
	tpl := realpod.Template(realpod.Options{
		Labels:  map[string]string{cfg.GroupLabel: fileGroup, cfg.RoleLabel: cfg.StandbyValue},
		Records: records, CriticalNever: true, RoleFile: true, Spread: labels,
	})
	rs := &appsv1.ReplicaSet{
		ObjectMeta: metav1.ObjectMeta{Name: fileGroup, Namespace: ns, Labels: labels},
		Spec: appsv1.ReplicaSetSpec{
			Replicas: ptr.To[int32](2),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: tpl,
		},
	}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: fileGroup, Namespace: ns, Labels: labels},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{cfg.GroupLabel: fileGroup, cfg.RoleLabel: cfg.ActiveValue},
			Ports:    []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromString("http"), Protocol: corev1.ProtocolTCP}},
		},
	}
	return &plan{rs: rs, svc: svc, group: fileGroup, critical: realpod.Critical, sidecar: realpod.Sidecar,
		images: realpod.FileAppImage + ", " + realpod.AgentImage,
		about: "a second group, " + fileGroup + ": its app (hapod-file-app) knows nothing of hapod but the role file /run/hapod/role, " +
			"which hapod-agent, its sidecar, writes from the role messages it receives; the controller selects both groups"}
}

// forRealNodes returns the example's ReplicaSet and Service in namespace ns,
// with only what the local cluster needs changed: the images are the ones it
// imported (hapod-demo for the critical container, pause for the others, never
// pulled), the pods run on real nodes, and the app writes its role records to
// records (a hostPath) and starts in initDelay. Everything else (probes, ports,
// restartPolicy, security context, resources) is the example's. The shipped
// objects are not changed.
func forRealNodes(ex *tour.Example, ns, records string, initDelay time.Duration, cfg config.Config) (*plan, error) {
	p := &plan{rs: ex.ReplicaSet.DeepCopy(), svc: ex.Service.DeepCopy(), images: realpod.DemoImage + ", pause"}
	p.rs.Namespace, p.svc.Namespace = ns, ns
	if p.rs.Spec.Replicas != nil && *p.rs.Spec.Replicas < 2 {
		return nil, fmt.Errorf("the example's ReplicaSet has %d replicas; the scenes need an active and a standby", *p.rs.Spec.Replicas)
	}
	spec := &p.rs.Spec.Template.Spec
	if spec.NodeSelector == nil {
		spec.NodeSelector = map[string]string{}
	}
	spec.NodeSelector[localcluster.RealNodeLabel] = "true"
	spec.Volumes = append(spec.Volumes, corev1.Volume{Name: "hapod-records", VolumeSource: corev1.VolumeSource{
		HostPath: &corev1.HostPathVolumeSource{Path: records, Type: ptr.To(corev1.HostPathDirectory)},
	}})
	for i := range spec.Containers {
		c := &spec.Containers[i]
		c.ImagePullPolicy = corev1.PullNever
		if !critical(c, cfg) {
			// The pause binary: a sidecar that only waits, as the example's
			// busybox loop does.
			c.Image, c.Command, c.Args = localcluster.PauseImage, nil, nil
			if p.sidecar == "" {
				p.sidecar = c.Name
			}
			continue
		}
		if p.critical != "" {
			return nil, fmt.Errorf("the example's pod has two critical containers (%s, %s); the tour plays one", p.critical, c.Name)
		}
		p.critical = c.Name
		c.Image = realpod.DemoImage
		c.Env = append(c.Env,
			corev1.EnvVar{Name: "INIT_DELAY", Value: initDelay.String()},
			corev1.EnvVar{Name: "ROLE_RECORDS", Value: recordsMount + "/$(POD_NAME).jsonl"})
		c.VolumeMounts = append(c.VolumeMounts, corev1.VolumeMount{Name: "hapod-records", MountPath: recordsMount})
	}
	if p.group = p.rs.Spec.Template.Labels[cfg.GroupLabel]; p.group == "" || p.group == fileGroup {
		return nil, fmt.Errorf("the example's pods need a group label %s other than %q (the tour's second group)", cfg.GroupLabel, fileGroup)
	}
	if p.critical == "" || p.sidecar == "" {
		return nil, fmt.Errorf("the example's pod template needs a critical container (env %s=%s) and a non-critical one", cfg.CriticalEnv, cfg.CriticalValue)
	}
	if len(p.svc.Spec.Ports) == 0 {
		return nil, fmt.Errorf("the example's Service %s has no port", p.svc.Name)
	}
	return p, nil
}

func critical(c *corev1.Container, cfg config.Config) bool {
	for _, e := range c.Env {
		if e.Name == cfg.CriticalEnv && e.Value == cfg.CriticalValue {
			return true
		}
	}
	return false
}
