package netns

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hapod/hapod/internal/dev/child"
	"github.com/hapod/hapod/internal/dev/poll"
)

const cgroupFS = "/sys/fs/cgroup"

// killAll SIGKILLs every process in namespace name or in one of its cgroups
// until none is left. The nodes' own processes die with their parent
// (Pdeathsig), but containerd starts its shims detached and the containers
// are their children, in their own pod namespaces: those are found by cgroup.
func killAll(ctx context.Context, name string) error {
	nsIno, nsErr := inode(filepath.Join(runDir, name))
	self := os.Getpid()
	var left []int
	err := poll.Until(ctx, time.Hour, func() (bool, error) { // bounded by ctx
		left = left[:0]
		seen := map[int]bool{}
		add := func(pid int) {
			if pid != self && !seen[pid] && !child.Exited(pid) {
				seen[pid] = true
				left = append(left, pid)
			}
		}
		if nsErr == nil {
			for _, pid := range allPIDs() {
				if ino, err := inode("/proc/" + strconv.Itoa(pid) + "/ns/net"); err == nil && ino == nsIno {
					add(pid)
				}
			}
		}
		for _, dir := range cgroupRoots(CgroupPrefix(name)) {
			_ = filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
				if err != nil || !d.IsDir() {
					return nil
				}
				for _, pid := range readPIDs(filepath.Join(path, "cgroup.procs")) {
					add(pid)
				}
				return nil
			})
		}
		for _, pid := range left {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		return len(left) == 0, nil
	})
	if err != nil {
		return fmt.Errorf("processes still alive after SIGKILL: %v: %w", left, err)
	}
	return nil
}

func allPIDs() []int {
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		if pid, err := strconv.Atoi(e.Name()); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}

func readPIDs(path string) []int {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	var pids []int
	for _, f := range strings.Fields(string(data)) {
		if pid, err := strconv.Atoi(f); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}

// cgroupRoots lists the cgroup directories named prefix* at the top of every
// hierarchy (cgroup v1 has one per controller; v2 or hybrid has unified/).
func cgroupRoots(prefix string) []string {
	var roots []string
	for _, pattern := range []string{filepath.Join(cgroupFS, "*", prefix+"*"), filepath.Join(cgroupFS, prefix+"*")} {
		m, _ := filepath.Glob(pattern)
		for _, d := range m {
			if fi, err := os.Stat(d); err == nil && fi.IsDir() {
				roots = append(roots, d)
			}
		}
	}
	return roots
}

// removeCgroups removes the cgroups named prefix*, children first (a cgroup
// with children or tasks cannot be removed).
func removeCgroups(prefix string) error {
	var errs []error
	for _, root := range cgroupRoots(prefix) {
		var dirs []string
		_ = filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, path)
			}
			return nil
		})
		sort.Slice(dirs, func(i, j int) bool { return len(dirs[i]) > len(dirs[j]) })
		for _, d := range dirs {
			// A cgroup whose last task was just killed can be busy for a moment.
			var err error
			for range 50 {
				if err = syscall.Rmdir(d); err == nil || errors.Is(err, syscall.ENOENT) || !errors.Is(err, syscall.EBUSY) {
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
			if err != nil && !errors.Is(err, syscall.ENOENT) {
				errs = append(errs, fmt.Errorf("rmdir %s: %w", d, err))
			}
		}
	}
	return errors.Join(errs...)
}

// unmountUnder detaches every mount at or below dir (overlay snapshots, pod
// volumes, pod network namespaces), deepest first, until none is left.
func unmountUnder(dir string) error {
	for range 10 {
		mounts, err := mountsUnder(dir)
		if err != nil || len(mounts) == 0 {
			return err
		}
		for _, m := range mounts {
			_ = syscall.Unmount(m, syscall.MNT_DETACH)
		}
	}
	mounts, _ := mountsUnder(dir)
	if len(mounts) > 0 {
		return fmt.Errorf("still mounted under %s: %v", dir, mounts)
	}
	return nil
}

func mountsUnder(dir string) ([]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }()
	var mounts []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMount(fields[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			mounts = append(mounts, mp)
		}
	}
	sort.Slice(mounts, func(i, j int) bool { return len(mounts[i]) > len(mounts[j]) })
	return mounts, sc.Err()
}

// unescapeMount undoes mountinfo's octal escapes (\040 is a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// Where the tools write whatever their configuration says.
const (
	cniCache         = "/var/lib/cni"        // libcni's result cache
	containerLogs    = "/var/log/containers" // the kubelet's log symlinks
	shimSockets      = "/run/containerd/s"   // containerd's shim sockets
	kubeletRoot      = "/var/lib/kubelet"
	devicePluginsDir = "/var/lib/kubelet/device-plugins"
)

// removeToolFiles removes what the nodes of namespace name wrote to the
// tools' hard-coded places: CNI cache entries of its networks (named
// <name>-...), log symlinks into its state directory, and sockets there that
// nobody listens on any more (every process of the namespace is dead by now).
func removeToolFiles(name, state string) {
	for _, sub := range []string{"results", "networks"} {
		m, _ := filepath.Glob(filepath.Join(cniCache, sub, name+"-*"))
		for _, p := range m {
			_ = os.RemoveAll(p)
		}
	}
	if entries, err := os.ReadDir(containerLogs); err == nil {
		for _, e := range entries {
			p := filepath.Join(containerLogs, e.Name())
			if target, err := os.Readlink(p); err == nil && strings.HasPrefix(target, state+"/") {
				_ = os.Remove(p)
			}
		}
	}
	for _, dir := range []string{shimSockets, devicePluginsDir} {
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			p := filepath.Join(dir, e.Name())
			if e.Type()&os.ModeSocket != 0 && !listening(p) {
				_ = os.Remove(p)
			}
		}
	}
	// Remove the directories if the nodes made them and nothing else is left.
	for _, d := range []string{cniCache + "/results", cniCache + "/networks", cniCache, containerLogs, shimSockets, "/run/containerd", devicePluginsDir, kubeletRoot} {
		_ = os.Remove(d) // fails, harmlessly, unless empty
	}
}

func listening(sock string) bool {
	c, err := net.DialTimeout("unix", sock, 200*time.Millisecond)
	if err != nil {
		return false
	}
	_ = c.Close()
	return true
}
