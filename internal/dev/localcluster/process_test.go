package localcluster

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/hapod/hapod/internal/dev/child"
	"github.com/hapod/hapod/internal/dev/poll"
)

// startSleep starts a process that would run for a minute, reaped in the background,
// and returns its pid and its executable's path as /proc shows it.
func startSleep(t *testing.T) (int, string, <-chan struct{}) {
	t.Helper()
	cmd := exec.Command("sleep", "60")
	if err := child.Start(cmd); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() { _ = cmd.Process.Kill(); <-done })
	exe, err := os.Readlink("/proc/" + strconv.Itoa(cmd.Process.Pid) + "/exe")
	if err != nil {
		t.Fatal(err)
	}
	return cmd.Process.Pid, exe, done
}

// StopRunDir signals only processes that still run the recorded binary: a reused pid
// running something else is left alone.
func TestStopRunDirGuardsPIDReuse(t *testing.T) {
	pid, exe, done := startSleep(t)
	dir := t.TempDir()
	s := &State{Processes: []StateProcess{{Name: "etcd", PID: pid, Exe: "/nonexistent/etcd"}}}
	if err := writeState(dir, s); err != nil {
		t.Fatal(err)
	}
	if err := StopRunDir(dir, time.Second); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
		t.Fatal("StopRunDir killed a process that runs another binary")
	default:
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("run dir not removed: %v", err)
	}

	// With the right binary recorded it is stopped.
	dir = t.TempDir()
	s.Processes[0].Exe = exe
	if err := writeState(dir, s); err != nil {
		t.Fatal(err)
	}
	if err := StopRunDir(dir, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("StopRunDir did not stop the recorded process")
	}
}

// A run directory whose owner has died is stopped and removed; one whose owner lives
// is left alone.
func TestRemoveStaleRunDirs(t *testing.T) {
	root := t.TempDir()
	me, err := child.StartTime(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	pid, exe, done := startSleep(t)
	stale := filepath.Join(root, "stale")
	live := filepath.Join(root, "live")
	for _, d := range []string{stale, live} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// Same pid as ours but another start time: the owner died and its pid was reused.
	if err := writeState(stale, &State{OwnerPID: os.Getpid(), OwnerStartTime: me + 1,
		Processes: []StateProcess{{Name: "kwok", PID: pid, Exe: exe}}}); err != nil {
		t.Fatal(err)
	}
	if err := writeState(live, &State{OwnerPID: os.Getpid(), OwnerStartTime: me}); err != nil {
		t.Fatal(err)
	}
	removeStaleRunDirs(root, 5*time.Second)
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the stale cluster's process still runs")
	}
	if _, err := os.Stat(stale); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stale run dir not removed: %v", err)
	}
	if _, err := os.Stat(live); err != nil {
		t.Errorf("live run dir removed: %v", err)
	}
}

// A component that fails to start is reported with the tail of its log, and nothing
// is left behind.
func TestStartReportsComponentFailure(t *testing.T) {
	fake := filepath.Join(t.TempDir(), "etcd")
	script := "#!/bin/sh\necho 'fake etcd: cannot open data dir' >&2\nexit 3\n"
	if err := os.WriteFile(fake, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	runDir := filepath.Join(t.TempDir(), "run")
	_, err := Start(t.Context(), Options{
		CacheDir: t.TempDir(),
		RunDir:   runDir,
		Binaries: &Binaries{Etcd: fake},
		Timeout:  20 * time.Second,
	})
	if err == nil {
		t.Fatal("Start succeeded with a failing etcd")
	}
	for _, want := range []string{"etcd exited", "cannot open data dir"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	if _, err := os.Stat(runDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("run dir left behind: %v", err)
	}
}

func TestFreePortsDistinct(t *testing.T) {
	ps, err := FreePorts(5)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[int]bool{}
	for _, p := range ps {
		if p <= 0 || seen[p] {
			t.Fatalf("ports %v: not distinct and positive", ps)
		}
		seen[p] = true
	}
}

// Two real clusters run at once; the API server of each is restarted
// (checkRestartAPIServer); then one is stopped by Stop, the other from its state
// file as 'hapod-cluster down' does. Both leave no process (the restarted API
// servers included) and no run directory. Needs the binaries: built if missing
// (about 8 minutes cold).
func TestStartStopTwoClusters(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real control planes")
	}
	bins, err := Build(t.Context(), BuildOptions{})
	if err != nil {
		t.Fatal(err)
	}
	type result struct {
		c   *Cluster
		err error
	}
	results := make(chan result, 2)
	began := time.Now()
	for range 2 {
		go func() {
			c, err := Start(t.Context(), Options{Binaries: &bins, RunDir: filepath.Join(t.TempDir(), "run")})
			results <- result{c, err}
		}()
	}
	var cs []*Cluster
	for range 2 {
		r := <-results
		if r.err != nil {
			t.Error(r.err)
			continue
		}
		cs = append(cs, r.c)
		t.Cleanup(func() { _ = r.c.Stop() })
	}
	if t.Failed() {
		t.FailNow()
	}
	t.Logf("two clusters up in %s", time.Since(began).Round(10*time.Millisecond))
	if cs[0].RESTConfig().Host == cs[1].RESTConfig().Host {
		t.Fatalf("both clusters serve at %s", cs[0].RESTConfig().Host)
	}

	for _, c := range cs {
		client, err := kubernetes.NewForConfig(c.RESTConfig())
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		if err := c.CreateNode(ctx, "extra", "127.64.9.0/24"); err != nil {
			t.Fatal(err)
		}
		cancel()
		nodes, err := client.CoreV1().Nodes().List(t.Context(), metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(nodes.Items) != 3 {
			t.Errorf("%d nodes, want kwok-node-0, kwok-node-1 and extra", len(nodes.Items))
		}
	}

	// Both at once: they are independent, and each takes seconds.
	t.Run("RestartAPIServer", func(t *testing.T) {
		for i, c := range cs {
			t.Run(strconv.Itoa(i), func(t *testing.T) {
				t.Parallel()
				checkRestartAPIServer(t, c)
			})
		}
	})
	if t.Failed() {
		t.FailNow()
	}

	// The states as they are after the restarts: Stop and StopRunDir must end
	// the restarted API servers.
	states := make([]*State, len(cs))
	for i, c := range cs {
		if states[i], err = ReadState(c.RunDir()); err != nil {
			t.Fatal(err)
		}
		if len(states[i].Processes) != 5 {
			t.Fatalf("state lists %d processes, want 5", len(states[i].Processes))
		}
		for _, p := range states[i].Processes {
			if !runs(p.PID, p.Exe) {
				t.Errorf("%s (pid %d) does not run", p.Name, p.PID)
			}
		}
	}

	began = time.Now()
	if err := cs[0].Stop(); err != nil {
		t.Fatal(err)
	}
	t.Logf("Stop took %s", time.Since(began).Round(10*time.Millisecond))
	began = time.Now()
	if err := StopRunDir(cs[1].RunDir(), 10*time.Second); err != nil {
		t.Fatal(err)
	}
	t.Logf("StopRunDir took %s", time.Since(began).Round(10*time.Millisecond))

	for i, c := range cs {
		for _, p := range states[i].Processes {
			// Stop returns once the binary no longer runs (its exe link is
			// gone); the kernel may take a moment more to finish the exit
			// on a loaded machine, so "gone or a zombie" is polled for.
			err := poll.Until(t.Context(), 10*time.Second, func() (bool, error) {
				err := syscall.Kill(p.PID, 0)
				return !runs(p.PID, p.Exe) && (err != nil || zombie(p.PID)), nil
			})
			if err != nil {
				t.Errorf("cluster %d: %s (pid %d) still runs", i, p.Name, p.PID)
			}
		}
		if _, err := os.Stat(c.RunDir()); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("cluster %d: run dir left behind: %v", i, err)
		}
	}
	if err := cs[1].Stop(); err != nil {
		t.Errorf("Stop after StopRunDir: %v", err)
	}
}

// zombie reports whether pid has exited but is not reaped yet.
func zombie(pid int) bool {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && len(s) > i+2 && s[i+2] == 'Z'
}

// checkRestartAPIServer restarts c's API server under a running informer and
// checks that the API answers afterwards, that the informer, whose watch the
// restart broke, sees an object created after it (client-go resumes by itself),
// that the old process is gone and the state file names the new one, and that
// the cluster does not count the kill as a failure.
func checkRestartAPIServer(t *testing.T, c *Cluster) {
	client, err := kubernetes.NewForConfig(c.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	factory := informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithNamespace(metav1.NamespaceDefault))
	defer func() { cancel(); factory.Shutdown() }()
	const name = "after-restart"
	seen := make(chan struct{}, 1)
	informer := factory.Core().V1().ConfigMaps().Informer()
	if _, err := informer.AddEventHandler(cache.ResourceEventHandlerFuncs{AddFunc: func(obj any) {
		if cm, ok := obj.(*corev1.ConfigMap); ok && cm.Name == name {
			seen <- struct{}{}
		}
	}}); err != nil {
		t.Fatal(err)
	}
	factory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), informer.HasSynced) {
		t.Fatal("informer did not sync")
	}
	before := apiserverState(t, c)

	down, err := c.RestartAPIServer(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("kube-apiserver down for %s", down.Round(time.Millisecond))

	after := apiserverState(t, c)
	if after.PID == before.PID || after.Exe != before.Exe {
		t.Errorf("state file after the restart: %+v, before: %+v; want a new pid, the same binary", after, before)
	}
	if runs(before.PID, before.Exe) {
		t.Errorf("the killed kube-apiserver (pid %d) still runs", before.PID)
	}
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if _, err := client.CoreV1().ConfigMaps(metav1.NamespaceDefault).Create(t.Context(), cm, metav1.CreateOptions{FieldManager: FieldManager}); err != nil {
		t.Fatalf("create after the restart: %v", err)
	}
	// The informer's watch retries with backoff (up to 30 s between tries).
	select {
	case <-seen:
	case <-time.After(2 * time.Minute):
		t.Fatal("the informer did not see the ConfigMap created after the restart")
	}
	if err := c.Err(); err != nil {
		t.Errorf("the restart failed the cluster: %v", err)
	}
}

// apiserverState returns the state file's entry for kube-apiserver.
func apiserverState(t *testing.T, c *Cluster) StateProcess {
	t.Helper()
	s, err := ReadState(c.RunDir())
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range s.Processes {
		if p.Name == apiserverBin {
			return p
		}
	}
	t.Fatalf("state file of %s has no %s", c.RunDir(), apiserverBin)
	return StateProcess{}
}
