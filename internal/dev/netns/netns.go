// Package netns gives dev tooling a network namespace of its own to run real
// Kubernetes nodes in, and removes everything such a node leaves on the
// machine when the run ends.
//
// Why: a real node (kubelet, containerd, CNI bridges, kube-proxy's rules) puts
// addresses, routes and netfilter rules into the network namespace it runs in.
// In the host's namespace a packet to a ClusterIP that kube-proxy has not yet
// programmed follows the default route off the machine. In a namespace made
// by [Run] there is only lo and what the nodes add: no interface leads out, so
// nothing can leave by construction, and deleting the namespace deletes every
// rule and address with it.
//
// A namespace hapod-<hex> owns, by name, everything else a real node leaves
// outside it: the state directory [StateDir] (containerd's and the kubelet's
// roots: overlay and volume mounts), the cgroups named [CgroupPrefix]* in
// every hierarchy (the containers), and files named after it in the few
// places the tools hard-code (/var/lib/cni, /var/log/containers,
// /run/containerd/s, /var/lib/kubelet/device-plugins). [Cleanup] removes them
// all; [Run] calls it after the command exits, and first for any namespace
// whose owner died without cleaning up.
package netns

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hapod/hapod/internal/dev/child"
)

// EnvName names, in the environment of a command that Run started, the
// namespace it runs in.
const EnvName = "HAPOD_NETNS"

// prefix of every namespace Run creates; Cleanup refuses other names.
const prefix = "hapod-"

// runDir is where ip netns keeps the namespaces' bind mounts.
const runDir = "/run/netns"

// StateDir is the directory that namespace name owns: real nodes keep their
// state under it, and Cleanup removes it. It is short on purpose: unix
// socket paths under it must stay below 108 bytes.
func StateDir(name string) string { return filepath.Join("/tmp", name) }

// CgroupPrefix starts the name of every cgroup root of the nodes in
// namespace name (a kubelet's cgroupRoot is /<prefix><node>).
func CgroupPrefix(name string) string { return name + "-" }

// Inside returns the namespace this process runs in if Run started it (or an
// ancestor of it), checked against the namespace itself, not only the
// environment.
func Inside() (string, bool) {
	name := os.Getenv(EnvName)
	if name == "" || !strings.HasPrefix(name, prefix) {
		return "", false
	}
	want, err := inode(filepath.Join(runDir, name))
	if err != nil {
		return "", false
	}
	got, err := inode("/proc/self/ns/net")
	return name, err == nil && got == want
}

// Usable says why Run cannot work here, nil if it can: it needs root
// (network namespaces, cgroups, mounts), ip and nsenter.
func Usable() error {
	if os.Geteuid() != 0 {
		return errors.New("a real node needs root (network namespaces, cgroups, mounts)")
	}
	for _, tool := range []string{"ip", "nsenter"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s is not installed (Debian: iproute2, util-linux): %w", tool, err)
		}
	}
	return nil
}

// Run creates a fresh namespace, runs argv inside it with $HAPOD_NETNS set
// (stdin, stdout and stderr shared; SIGINT and SIGTERM passed on), waits for
// it, then removes everything left in and around the namespace. It returns
// the command's exit code. Namespaces of earlier runs whose owner has died
// are removed first.
func Run(argv []string) (int, error) {
	if err := Usable(); err != nil {
		return 0, err
	}
	removeStale()
	// containerd starts its shims detached: orphans, reparented to the
	// nearest subreaper. Be it, so that they are reaped here (see reap)
	// rather than left as zombies under an init that may not reap.
	if _, _, errno := syscall.RawSyscall(syscall.SYS_PRCTL, prSetChildSubreaper, 1, 0); errno != 0 {
		return 0, fmt.Errorf("prctl(PR_SET_CHILD_SUBREAPER): %w", errno)
	}
	name, err := create()
	if err != nil {
		return 0, err
	}
	defer func() {
		if err := Cleanup(name); err != nil {
			fmt.Fprintf(os.Stderr, "netns: %v\n", err)
		}
		reap()
	}()

	// nsenter --net switches the network namespace only. (ip netns exec would
	// also remount /sys for the namespace, which drops the cgroup
	// hierarchies mounted under it that the kubelet needs.)
	args := append([]string{"--net=" + filepath.Join(runDir, name), "--"}, argv...)
	cmd := exec.Command("nsenter", args...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(), EnvName+"="+name)
	if err := child.Start(cmd); err != nil {
		return 0, fmt.Errorf("start %s in namespace %s: %w", argv[0], name, err)
	}
	// child.Start gives the command its own process group, so a terminal's
	// Ctrl-C reaches only us: pass it on, and let the command stop itself.
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)
	done := make(chan struct{})
	go func() {
		tick := time.NewTicker(2 * time.Second)
		defer tick.Stop()
		for {
			select {
			case s := <-sigs:
				_ = cmd.Process.Signal(s)
			case <-tick.C:
				reapOrphans(cmd.Process.Pid)
			case <-done:
				return
			}
		}
	}()
	err = cmd.Wait()
	close(done)
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		if ws, ok := exit.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal()), nil
		}
		return exit.ExitCode(), nil
	}
	return 0, err
}

const prSetChildSubreaper = 36 // linux/prctl.h

// reap collects every exited child, the orphans this process adopted as a
// subreaper included. It runs after the command has been waited for, so it
// takes no exit status anyone else waits for.
func reap() {
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
		if pid <= 0 || err != nil {
			return
		}
	}
}

// reapOrphans collects the exited children of this process other than
// except (the command, which cmd.Wait collects): the shims of dead
// containers, adopted as a subreaper, would stay zombies until the end.
func reapOrphans(except int) {
	self := strconv.Itoa(os.Getpid())
	for _, pid := range allPIDs() {
		if pid == except || !child.Exited(pid) {
			continue
		}
		data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil {
			continue
		}
		st := string(data)
		i := strings.LastIndexByte(st, ')')
		if f := strings.Fields(st[i+1:]); len(f) > 1 && f[1] == self {
			var ws syscall.WaitStatus
			_, _ = syscall.Wait4(pid, &ws, syscall.WNOHANG, nil)
		}
	}
}

// create adds namespace hapod-<hex> with lo up, and its state directory with
// an owner file naming this process (for removeStale).
func create() (string, error) {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	name := prefix + hex.EncodeToString(b)
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		return "", fmt.Errorf("ip netns add %s: %w: %s", name, err, strings.TrimSpace(string(out)))
	}
	if out, err := exec.Command("ip", "-n", name, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		_ = Cleanup(name)
		return "", fmt.Errorf("ip -n %s link set lo up: %w: %s", name, err, strings.TrimSpace(string(out)))
	}
	if err := os.MkdirAll(StateDir(name), 0o700); err != nil {
		_ = Cleanup(name)
		return "", err
	}
	owner := strconv.Itoa(os.Getpid()) + " " + procStart(os.Getpid())
	if err := os.WriteFile(filepath.Join(StateDir(name), "owner"), []byte(owner), 0o600); err != nil {
		_ = Cleanup(name)
		return "", err
	}
	return name, nil
}

// removeStale cleans up after earlier runs whose owner is gone (killed before
// it could clean up: Pdeathsig stops the nodes' own processes, not the
// containers and shims they started).
func removeStale() {
	entries, _ := os.ReadDir(runDir)
	for _, e := range entries {
		name := e.Name()
		if !strings.HasPrefix(name, prefix) || ownerAlive(name) {
			continue
		}
		if err := Cleanup(name); err != nil {
			fmt.Fprintf(os.Stderr, "netns: stale namespace %s: %v\n", name, err)
		}
	}
}

func ownerAlive(name string) bool {
	data, err := os.ReadFile(filepath.Join(StateDir(name), "owner"))
	if err != nil {
		return false
	}
	f := strings.Fields(string(data))
	if len(f) != 2 {
		return false
	}
	pid, err := strconv.Atoi(f[0])
	return err == nil && procStart(pid) == f[1]
}

// procStart is the process's start time as text (child.StartTime), "" if
// it is gone.
func procStart(pid int) string {
	start, err := child.StartTime(pid)
	if err != nil {
		return ""
	}
	return strconv.FormatUint(start, 10)
}

func inode(path string) (uint64, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}

// Cleanup removes namespace name and everything its nodes left: it kills
// every process in the namespace and in its cgroups, unmounts and removes
// its state directory, removes its cgroups and its files in the tools'
// hard-coded places, and deletes the namespace. It goes on past errors and
// returns them all.
func Cleanup(name string) error {
	if !strings.HasPrefix(name, prefix) || strings.ContainsAny(name, "/.") {
		return fmt.Errorf("cleanup %q: not a namespace of this package", name)
	}
	var errs []error
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := killAll(ctx, name); err != nil {
		errs = append(errs, err)
	}
	state := StateDir(name)
	if err := unmountUnder(state); err != nil {
		errs = append(errs, err)
	}
	if err := removeCgroups(CgroupPrefix(name)); err != nil {
		errs = append(errs, err)
	}
	removeToolFiles(name, state)
	if err := os.RemoveAll(state); err != nil {
		errs = append(errs, err)
	}
	if _, err := os.Stat(filepath.Join(runDir, name)); err == nil {
		if out, err := exec.Command("ip", "netns", "delete", name).CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("ip netns delete %s: %w: %s", name, err, strings.TrimSpace(string(out))))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("clean up namespace %s: %w", name, errors.Join(errs...))
	}
	return nil
}
