// Package realpod is what the tests, the bench and the demo on the local
// cluster's real nodes share about the example's pods: their template (the
// demo app as the critical container, the pause binary as a non-critical
// sidecar, role records on a hostPath), killing one of their containers as
// a crash would, and reading the role records each app wrote from inside its
// container.
package realpod

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/hapod/hapod/internal/dev/child"
	"github.com/hapod/hapod/internal/dev/localcluster"
	"github.com/hapod/hapod/internal/dev/netns"
	"github.com/hapod/hapod/internal/dev/rolerecord"
	"github.com/hapod/hapod/pkg/role"
)

// DemoImage runs cmd/hapod-demo (the local cluster imports it into every
// real node); pods name it with imagePullPolicy Never.
const DemoImage = "localhost/hapod/demo:dev"

// AgentImage runs cmd/hapod-agent, the sidecar that writes the role file.
const AgentImage = "localhost/hapod/agent:dev"

// FileAppImage runs cmd/hapod-file-app, the app that knows hapod only by
// the role file the agent writes.
const FileAppImage = "localhost/hapod/file-app:dev"

// LEAppImage runs cmd/hapod-le-app, the leader-election baseline.
const LEAppImage = "localhost/hapod/le-app:dev"

// KubeconfigFile is the kubeconfig, in the records directory, that the
// leader-election baseline's app reads (localcluster.Cluster.WritePodKubeconfig).
const KubeconfigFile = "kubeconfig"

// The containers of the example's pod.
const (
	Critical = "app"     // the demo app, env pwcriticality=critical
	Sidecar  = "sidecar" // the pause binary: non-critical
)

// recordsMount is where the app's container sees the records directory.
const recordsMount = "/records"

// Options shape the pod template.
type Options struct {
	// Labels of the pods (the group label and role=standby, for hapod).
	Labels map[string]string
	// Records is the host directory the apps write their role records to,
	// one file per pod (hostPath).
	Records string
	// CriticalNever sets restartPolicy: Never on the critical container, as
	// deploy/example does: the kubelet then leaves it dead.
	CriticalNever bool
	// InitDelay is the app's slow start (hapod-demo -init-delay).
	InitDelay time.Duration
	// AlwaysActive: the app serves as active with no controller (hapod-demo
	// -always-active), for the baselines without hapod.
	AlwaysActive bool
	// Spread, if set, is the label set the pods spread over the nodes by
	// (one per node where possible).
	Spread map[string]string
	// LeaderElection, if set, runs the leader-election baseline
	// (LEAppImage) as the app instead of hapod-demo.
	LeaderElection *LeaderElection
	// RoleFile runs the app that knows hapod only by a role file
	// (FileAppImage) with hapod-agent (AgentImage) as its sidecar, the two
	// sharing an emptyDir at RoleFileDir.
	RoleFile bool
}

// RoleFileDir is where the agent writes, and the file app reads, the role
// file in a RoleFile pod.
const RoleFileDir = "/run/hapod"

// LeaderElection configures the leader-election baseline's app.
type LeaderElection struct {
	// Lease names the Lease; Peers is the replicas' label selector.
	Lease, Peers                              string
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration
}

// Template is the example's pod (deploy/example) on the real nodes' images.
func Template(o Options) corev1.PodTemplateSpec {
	env := func(name, path string) corev1.EnvVar {
		return corev1.EnvVar{Name: name, ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: path}}}
	}
	app := corev1.Container{
		Name: Critical, Image: DemoImage, ImagePullPolicy: corev1.PullNever,
		Env: []corev1.EnvVar{
			{Name: "pwcriticality", Value: "critical"},
			env("POD_NAME", "metadata.name"), env("POD_UID", "metadata.uid"),
			{Name: "INIT_DELAY", Value: o.InitDelay.String()},
			{Name: "ROLE_RECORDS", Value: recordsMount + "/$(POD_NAME).jsonl"},
		},
		Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}, {Name: "role", ContainerPort: role.DefaultPort, Protocol: corev1.ProtocolUDP}},
		ReadinessProbe: &corev1.Probe{
			ProbeHandler:  corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/readyz", Port: intstr.FromString("http")}},
			PeriodSeconds: 1, FailureThreshold: 3,
		},
		Resources:    corev1.ResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("10m")}},
		VolumeMounts: []corev1.VolumeMount{{Name: "records", MountPath: recordsMount}},
	}
	if le := o.LeaderElection; le != nil {
		app.Image = LEAppImage
		app.Ports = app.Ports[:1] // no role messages
		app.Env = []corev1.EnvVar{
			env("POD_NAME", "metadata.name"), env("POD_NAMESPACE", "metadata.namespace"),
			{Name: "KUBECONFIG", Value: recordsMount + "/" + KubeconfigFile},
			{Name: "LEASE", Value: le.Lease}, {Name: "PEERS", Value: le.Peers},
			{Name: "LEASE_DURATION", Value: le.LeaseDuration.String()},
			{Name: "RENEW_DEADLINE", Value: le.RenewDeadline.String()},
			{Name: "RETRY_PERIOD", Value: le.RetryPeriod.String()},
			{Name: "INIT_DELAY", Value: o.InitDelay.String()},
			{Name: "ROLE_RECORDS", Value: recordsMount + "/$(POD_NAME).jsonl"},
		}
	}
	sidecar := corev1.Container{Name: Sidecar, Image: localcluster.PauseImage, ImagePullPolicy: corev1.PullNever}
	var volumes []corev1.Volume
	if o.RoleFile {
		// The app has no role port: the agent receives the role messages.
		app.Image, app.Ports = FileAppImage, app.Ports[:1]
		app.Env = []corev1.EnvVar{
			{Name: "pwcriticality", Value: "critical"},
			env("POD_NAME", "metadata.name"),
			{Name: "ROLE_FILE", Value: RoleFileDir + "/role"},
			{Name: "ROLE_RECORDS", Value: recordsMount + "/$(POD_NAME).jsonl"},
		}
		mount := corev1.VolumeMount{Name: "role", MountPath: RoleFileDir}
		app.VolumeMounts = append(app.VolumeMounts, mount)
		sidecar = corev1.Container{
			Name: Sidecar, Image: AgentImage, ImagePullPolicy: corev1.PullNever,
			Env: []corev1.EnvVar{
				env("POD_NAME", "metadata.name"), env("POD_UID", "metadata.uid"),
				{Name: "ROLE_FILE", Value: RoleFileDir + "/role"},
				// The app's death gives the role up at once (the agent
				// releases it and exits), not at the kubelet's report.
				{Name: "APP_HEALTH", Value: "http://127.0.0.1:8080/healthz"},
			},
			Ports:        []corev1.ContainerPort{{Name: "role", ContainerPort: role.DefaultPort, Protocol: corev1.ProtocolUDP}},
			Resources:    corev1.ResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("10m")}},
			VolumeMounts: []corev1.VolumeMount{mount},
		}
		volumes = append(volumes, corev1.Volume{Name: "role", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{Medium: corev1.StorageMediumMemory}}})
	}
	if o.AlwaysActive {
		app.Env = append(app.Env, corev1.EnvVar{Name: "ALWAYS_ACTIVE", Value: "true"})
	}
	if o.CriticalNever {
		app.RestartPolicy = ptr.To(corev1.ContainerRestartPolicyNever)
	}
	spec := corev1.PodSpec{
		// Only a real node runs these images (a cluster may have kwok nodes too).
		NodeSelector:                  map[string]string{localcluster.RealNodeLabel: "true"},
		EnableServiceLinks:            ptr.To(false),
		AutomountServiceAccountToken:  ptr.To(false),
		TerminationGracePeriodSeconds: ptr.To[int64](5),
		Containers:                    []corev1.Container{app, sidecar},
		Volumes: append([]corev1.Volume{{Name: "records", VolumeSource: corev1.VolumeSource{
			HostPath: &corev1.HostPathVolumeSource{Path: o.Records, Type: ptr.To(corev1.HostPathDirectory)},
		}}}, volumes...),
	}
	if o.Spread != nil {
		spec.TopologySpreadConstraints = []corev1.TopologySpreadConstraint{{
			MaxSkew: 1, TopologyKey: "kubernetes.io/hostname", WhenUnsatisfiable: corev1.ScheduleAnyway,
			LabelSelector: &metav1.LabelSelector{MatchLabels: o.Spread},
		}}
	}
	return corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: o.Labels}, Spec: spec}
}

// RecordsDir makes a records directory named name under the network
// namespace's state directory (removed with it), writable by any container
// user.
func RecordsDir(name string) (string, error) {
	ns, ok := netns.Inside()
	if !ok {
		return "", errors.New("realpod: not inside a real-node network namespace")
	}
	dir := filepath.Join(netns.StateDir(ns), "records", name)
	return dir, MakeRecordsDir(dir)
}

// MakeRecordsDir makes dir (and its parents) writable by any container
// user: the apps write their records as whatever user their image runs as.
func MakeRecordsDir(dir string) error {
	if err := os.MkdirAll(dir, 0o777); err != nil {
		return err
	}
	// Chmod as well: MkdirAll's mode is cut by the umask.
	return os.Chmod(dir, 0o777)
}

// Records reads every app's role records in dir, in the order each app
// wrote them. A line being written is skipped.
func Records(dir string) map[string][]rolerecord.Change {
	out := map[string][]rolerecord.Change{}
	files, _ := filepath.Glob(filepath.Join(dir, "*.jsonl"))
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(bytes.NewReader(data))
		for sc.Scan() {
			c, err := rolerecord.Decode(sc.Bytes())
			if err != nil {
				continue
			}
			out[c.Pod] = append(out[c.Pod], c)
		}
	}
	return out
}

// Latest is each app's latest record.
func Latest(dir string) map[string]rolerecord.Change {
	out := map[string]rolerecord.Change{}
	for pod, cs := range Records(dir) {
		out[pod] = cs[len(cs)-1]
	}
	return out
}

// ContainerID is the ID of the pod's running container, or "".
func ContainerID(pod *corev1.Pod, container string) string {
	for _, cs := range pod.Status.ContainerStatuses {
		if cs.Name == container && cs.State.Running != nil {
			_, id, _ := strings.Cut(cs.ContainerID, "://")
			return id
		}
	}
	return ""
}

// RestartCount is how often the kubelet has restarted the pod's container
// in place (0 if it has no status yet).
func RestartCount(pod *corev1.Pod, container string) int32 {
	for _, cs := range pod.Status.ContainerStatuses {
		if cs.Name == container {
			return cs.RestartCount
		}
	}
	return 0
}

// DeathReported reports whether the kubelet has reported the death of the
// pod's container, which had restarts restarts before it: terminated, or
// restarted since.
func DeathReported(pod *corev1.Pod, container string, restarts int32) bool {
	for _, cs := range pod.Status.ContainerStatuses {
		if cs.Name == container && (cs.State.Terminated != nil || cs.RestartCount > restarts) {
			return true
		}
	}
	return false
}

// Kill SIGKILLs every process of the pod's running container, as a crash
// would, and returns when it sent the signal. The processes are found by
// the container's cgroup, which the kubelet (cgroupfs driver) names by its
// ID under the node's cgroup root.
func Kill(pod *corev1.Pod, container string) (time.Time, []int, error) {
	pids, err := PIDs(pod, container)
	if err != nil {
		return time.Time{}, nil, err
	}
	at := time.Now()
	for _, pid := range pids {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	return at, pids, nil
}

// PIDs are the host pids of every process of the pod's running container,
// found by its cgroup (see Kill).
func PIDs(pod *corev1.Pod, container string) ([]int, error) {
	id := ContainerID(pod, container)
	if id == "" {
		return nil, fmt.Errorf("pod %s has no running container %s", pod.Name, container)
	}
	ns, _ := netns.Inside()
	roots, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup/pids", netns.CgroupPrefix(ns)+"*"))
	var pids []int
	for _, root := range roots {
		_ = filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
			if err != nil || !d.IsDir() || filepath.Base(path) != id {
				return nil
			}
			data, _ := os.ReadFile(filepath.Join(path, "cgroup.procs"))
			for _, f := range strings.Fields(string(data)) {
				if pid, err := strconv.Atoi(f); err == nil {
					pids = append(pids, pid)
				}
			}
			return filepath.SkipDir
		})
	}
	if len(pids) == 0 {
		return nil, fmt.Errorf("no processes of container %s/%s (%s) under %v", pod.Name, container, id, roots)
	}
	return pids, nil
}

// Dead reports whether every pid has exited.
func Dead(pids []int) bool {
	for _, pid := range pids {
		if syscall.Kill(pid, 0) == nil && !child.Exited(pid) {
			return false
		}
	}
	return true
}

// Overlap is a moment two apps held active at once.
type Overlap struct {
	A, B           string // the pods
	EpochA, EpochB uint64
	From           time.Time // when the later of the two became active
	For            time.Duration
}

func (o Overlap) String() string {
	return fmt.Sprintf("apps %s (active@%d) and %s (active@%d) were active at once from %s for %s",
		o.A, o.EpochA, o.B, o.EpochB, o.From.Format(time.StampMicro), o.For)
}

// Overlaps finds the moments two apps held active at once, from their role
// records (all written on one machine's clock) and, for apps that were
// killed, when (a killed app writes nothing: its death ends its role). An
// app holds active from an active record to its next record, its "stopped"
// record, its death, or now. It also reports two apps told active at the
// same epoch.
func Overlaps(records map[string][]rolerecord.Change, killed map[string][]time.Time, now time.Time) (overlaps []Overlap, sameEpoch []string) {
	type interval struct {
		pod      string
		epoch    uint64
		from, to time.Time
	}
	var ivs []interval
	byEpoch := map[uint64]string{}
	for pod, cs := range records {
		events := append([]rolerecord.Change(nil), cs...)
		for _, at := range killed[pod] {
			events = append(events, rolerecord.Change{At: at, Pod: pod, Role: rolerecord.Stopped})
		}
		slices.SortStableFunc(events, func(a, b rolerecord.Change) int { return a.At.Compare(b.At) })
		var open *interval
		for _, c := range events {
			if open != nil {
				open.to = c.At
				ivs = append(ivs, *open)
				open = nil
			}
			if c.Role == string(role.Active) {
				if p, ok := byEpoch[c.Epoch]; ok && p != pod {
					sameEpoch = append(sameEpoch, fmt.Sprintf("apps %s and %s were both told active at epoch %d", p, pod, c.Epoch))
				}
				byEpoch[c.Epoch] = pod
				open = &interval{pod: pod, epoch: c.Epoch, from: c.At}
			}
		}
		if open != nil {
			open.to = now
			ivs = append(ivs, *open)
		}
	}
	slices.SortFunc(ivs, func(a, b interval) int { return a.from.Compare(b.from) })
	for i := range ivs {
		for j := i + 1; j < len(ivs) && ivs[j].from.Before(ivs[i].to); j++ {
			if ivs[j].pod != ivs[i].pod {
				end := min(ivs[i].to.UnixNano(), ivs[j].to.UnixNano())
				overlaps = append(overlaps, Overlap{A: ivs[i].pod, B: ivs[j].pod, EpochA: ivs[i].epoch, EpochB: ivs[j].epoch,
					From: ivs[j].from, For: time.Duration(end - ivs[j].from.UnixNano())})
			}
		}
	}
	return overlaps, sameEpoch
}
