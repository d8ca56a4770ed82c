package localcluster

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hapod/hapod/internal/dev/child"
	"github.com/hapod/hapod/internal/dev/poll"
)

// Versions pins the version of every component of the control plane.
type Versions struct {
	// Kubernetes is the k8s.io/kubernetes version of kube-apiserver,
	// kube-controller-manager and kube-scheduler, e.g. "v1.37.2".
	Kubernetes string
	// Etcd is the go.etcd.io/etcd/server/v3 version, e.g. "v3.6.16".
	Etcd string
	// Kwok is the sigs.k8s.io/kwok version, e.g. "v0.8.0".
	Kwok string
	// Containerd is the github.com/containerd/containerd/v2 version of a real
	// node's runtime (containerd, its runc shim, ctr), e.g. "v2.4.2".
	Containerd string
	// CNIPlugins is the github.com/containernetworking/plugins version of a real
	// node's pod network (bridge, host-local, loopback, portmap), e.g. "v1.10.0".
	CNIPlugins string
}

// DefaultVersions returns the versions hapod is tested with.
func DefaultVersions() Versions {
	return Versions{Kubernetes: "v1.37.2", Etcd: "v3.6.16", Kwok: "v0.8.0", Containerd: "v2.4.2", CNIPlugins: "v1.10.0"}
}

func (v Versions) withDefaults() Versions {
	d := DefaultVersions()
	if v.Kubernetes == "" {
		v.Kubernetes = d.Kubernetes
	}
	if v.Etcd == "" {
		v.Etcd = d.Etcd
	}
	if v.Kwok == "" {
		v.Kwok = d.Kwok
	}
	if v.Containerd == "" {
		v.Containerd = d.Containerd
	}
	if v.CNIPlugins == "" {
		v.CNIPlugins = d.CNIPlugins
	}
	return v
}

// Binaries holds the absolute paths of the component binaries.
type Binaries struct {
	Etcd                  string
	KubeAPIServer         string
	KubeControllerManager string
	KubeScheduler         string
	Kwok                  string

	// A real node's binaries, set when built with BuildOptions.RealNode.
	Kubelet, KubeProxy         string
	Containerd, ContainerdShim string
	Ctr                        string
	// CNIBinDirs hold one CNI plugin each (the cache keeps a directory per
	// binary); containerd searches them all.
	CNIBinDirs []string
}

// HasRealNode reports whether b holds a real node's binaries.
func (b Binaries) HasRealNode() bool { return b.Kubelet != "" && b.Containerd != "" }

// BuildOptions configures [Build].
type BuildOptions struct {
	// CacheDir is the cluster cache; empty means .cache/cluster under the repository
	// root (the nearest directory above the working directory holding go.mod).
	CacheDir string
	// Versions of the components; zero fields take [DefaultVersions].
	Versions Versions
	// Logger receives progress; nil means slog.Default().
	Logger *slog.Logger
	// RealNode also builds what a real node runs: kubelet and kube-proxy (with
	// the control plane, sharing its build), containerd with its runc shim and
	// ctr, and the CNI plugins.
	RealNode bool
}

// The names of the binaries, which are also the component names in the cache layout.
const (
	etcdBin      = "etcd"
	apiserverBin = "kube-apiserver"
	kcmBin       = "kube-controller-manager"
	schedulerBin = "kube-scheduler"
	kwokBin      = "kwok"
	kubeletBin   = "kubelet"
	proxyBin     = "kube-proxy"
	ctrdBin      = "containerd"
	shimBin      = "containerd-shim-runc-v2"
	ctrBin       = "ctr"
)

// cniPlugins are the CNI plugins a real node's pod network uses (package
// paths under github.com/containernetworking/plugins/plugins).
var cniPlugins = []string{"main/bridge", "main/loopback", "ipam/host-local", "meta/portmap"}

// coldBuildNote is logged with every build so nobody wonders why it takes so long.
const coldBuildNote = "a cold build takes about 15 minutes on 2 cores (the kubernetes binaries dominate; a real node adds about 5); with a warm Go build cache about 20 seconds"

// buildGroup is one go invocation that produces one or more binaries at one version.
type buildGroup struct {
	name     string // for logs and the build directory
	version  string
	binaries []string
	build    func(ctx context.Context, b *builder, g buildGroup, outDir string) error
}

func buildGroups(v Versions, realNode bool) []buildGroup {
	k8s := []string{apiserverBin, kcmBin, schedulerBin}
	if realNode {
		k8s = append(k8s, kubeletBin, proxyBin)
	}
	groups := []buildGroup{
		{name: "etcd", version: v.Etcd, binaries: []string{etcdBin}, build: buildEtcd},
		{name: "kubernetes", version: v.Kubernetes, binaries: k8s, build: buildKubernetes},
		{name: "kwok", version: v.Kwok, binaries: []string{kwokBin}, build: buildKwok},
	}
	if realNode {
		var cni []string
		for _, p := range cniPlugins {
			cni = append(cni, filepath.Base(p))
		}
		groups = append(groups,
			buildGroup{name: "containerd", version: v.Containerd, binaries: []string{ctrdBin, shimBin, ctrBin}, build: buildContainerd},
			buildGroup{name: "cni-plugins", version: v.CNIPlugins, binaries: cni, build: buildCNIPlugins})
	}
	return groups
}

// binaryPath is where the cache keeps binary name at version.
func binaryPath(cacheDir, name, version string) string {
	return filepath.Join(cacheDir, "bin", name+"-"+version, name)
}

func binariesIn(cacheDir string, v Versions, realNode bool) Binaries {
	b := Binaries{
		Etcd:                  binaryPath(cacheDir, etcdBin, v.Etcd),
		KubeAPIServer:         binaryPath(cacheDir, apiserverBin, v.Kubernetes),
		KubeControllerManager: binaryPath(cacheDir, kcmBin, v.Kubernetes),
		KubeScheduler:         binaryPath(cacheDir, schedulerBin, v.Kubernetes),
		Kwok:                  binaryPath(cacheDir, kwokBin, v.Kwok),
	}
	if realNode {
		b.Kubelet = binaryPath(cacheDir, kubeletBin, v.Kubernetes)
		b.KubeProxy = binaryPath(cacheDir, proxyBin, v.Kubernetes)
		b.Containerd = binaryPath(cacheDir, ctrdBin, v.Containerd)
		b.ContainerdShim = binaryPath(cacheDir, shimBin, v.Containerd)
		b.Ctr = binaryPath(cacheDir, ctrBin, v.Containerd)
		for _, p := range cniPlugins {
			b.CNIBinDirs = append(b.CNIBinDirs, filepath.Dir(binaryPath(cacheDir, filepath.Base(p), v.CNIPlugins)))
		}
	}
	return b
}

// Build makes sure every component binary is in the cache at its pinned version and
// returns their paths. Cached binaries whose stamp verifies are reused; the others are
// built from the Go module proxy with the go command on PATH. Concurrent calls (also from
// other processes) are serialised by a lock file in the cache.
func Build(ctx context.Context, opts BuildOptions) (Binaries, error) {
	cacheDir, err := resolveCacheDir(opts.CacheDir)
	if err != nil {
		return Binaries{}, err
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	v := opts.Versions.withDefaults()
	for _, d := range []string{filepath.Join(cacheDir, "bin"), filepath.Join(cacheDir, "build")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return Binaries{}, fmt.Errorf("create cluster cache: %w", err)
		}
	}
	unlock, err := lockFile(ctx, filepath.Join(cacheDir, "build.lock"))
	if err != nil {
		return Binaries{}, err
	}
	defer unlock()

	b := &builder{cacheDir: cacheDir, log: log}
	for _, g := range buildGroups(v, opts.RealNode) {
		reason := verifyGroup(cacheDir, g)
		if reason == nil {
			log.Debug("cluster binaries cached", "component", g.name, "version", g.version)
			continue
		}
		log.Info("building cluster binaries", "component", g.name, "version", g.version,
			"binaries", strings.Join(g.binaries, ","), "reason", reason.Error(), "note", coldBuildNote)
		start := time.Now()
		if err := b.buildGroup(ctx, g); err != nil {
			return Binaries{}, err
		}
		log.Info("built cluster binaries", "component", g.name, "version", g.version,
			"took", time.Since(start).Round(100*time.Millisecond).String())
	}
	return binariesIn(cacheDir, v, opts.RealNode), nil
}

// verifyGroup returns nil if every binary of g is in the cache with a valid stamp, else
// the first reason it is not.
func verifyGroup(cacheDir string, g buildGroup) error {
	errs := make([]error, len(g.binaries))
	var wg sync.WaitGroup
	for i, name := range g.binaries {
		wg.Go(func() { errs[i] = verifyStamp(binaryPath(cacheDir, name, g.version), name, g.version) })
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

type builder struct {
	cacheDir string
	log      *slog.Logger
	logFile  io.Writer
	logPath  string
}

func (b *builder) buildGroup(ctx context.Context, g buildGroup) (err error) {
	logPath := filepath.Join(b.cacheDir, "build", g.name+"-"+g.version+".log")
	f, err := os.Create(logPath)
	if err != nil {
		return fmt.Errorf("create build log: %w", err)
	}
	defer func() {
		if cerr := f.Close(); err == nil && cerr != nil {
			err = cerr
		}
	}()
	b.logFile, b.logPath = f, logPath

	out, err := os.MkdirTemp(filepath.Join(b.cacheDir, "bin"), ".build-"+g.name+"-")
	if err != nil {
		return fmt.Errorf("create build output dir: %w", err)
	}
	defer func() { _ = os.RemoveAll(out) }()

	if err := g.build(ctx, b, g, out); err != nil {
		return fmt.Errorf("build %s %s: %w", g.name, g.version, err)
	}
	for _, name := range g.binaries {
		if err := install(filepath.Join(out, name), b.cacheDir, name, g.version); err != nil {
			return fmt.Errorf("install %s %s: %w", name, g.version, err)
		}
	}
	return nil
}

// install moves a freshly built binary into the cache: it goes with its stamp into a
// temporary directory, which then replaces <cache>/bin/<name>-<version> by rename, so a
// reader sees either the old directory or the complete new one.
func install(built, cacheDir, name, version string) error {
	final := filepath.Dir(binaryPath(cacheDir, name, version))
	staging, err := os.MkdirTemp(filepath.Dir(final), ".install-"+name+"-")
	if err != nil {
		return err
	}
	defer func() { _ = os.RemoveAll(staging) }()
	bin := filepath.Join(staging, name)
	if err := os.Rename(built, bin); err != nil {
		return err
	}
	if err := os.Chmod(bin, 0o755); err != nil {
		return err
	}
	if err := writeStamp(bin, name, version); err != nil {
		return err
	}
	if err := os.RemoveAll(final); err != nil {
		return err
	}
	return os.Rename(staging, final)
}

// goCmd runs the go command in dir with a build environment that matches how the
// binaries are meant to be built (static, no VCS stamping), appending output to the
// build log.
func (b *builder) goCmd(ctx context.Context, dir string, extraEnv []string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(),
		"GOTOOLCHAIN=local", "CGO_ENABLED=0", "GOFLAGS=-mod=mod -buildvcs=false", "GOWORK=off", "GO111MODULE=on")
	cmd.Env = append(cmd.Env, extraEnv...)
	var stdout bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = b.logFile
	_, _ = fmt.Fprintf(b.logFile, "+ (cd %s && go %s)\n", dir, strings.Join(args, " "))
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("go %s: %w; tail of %s:\n%s", args[0], err, b.logPath, child.Tail(b.logPath, 30))
	}
	return stdout.Bytes(), nil
}

// moduleDir makes a fresh throwaway module for a build under <cache>/build.
func (b *builder) moduleDir(name, version, goMod string) (string, error) {
	dir := filepath.Join(b.cacheDir, "build", name+"-"+version)
	if err := os.RemoveAll(dir); err != nil {
		return "", err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	return dir, os.WriteFile(filepath.Join(dir, "go.mod"), []byte(goMod), 0o644)
}

// buildEtcd: etcd's own go.mod has replace directives, so `go install` cannot build it;
// a throwaway module that requires the server module can.
func buildEtcd(ctx context.Context, b *builder, g buildGroup, out string) error {
	version := g.version
	dir, err := b.moduleDir("etcd", version, "module hapod.local/clusterbuild/etcd\n\ngo 1.26.0\n")
	if err != nil {
		return err
	}
	const pkg = "go.etcd.io/etcd/server/v3"
	if _, err := b.goCmd(ctx, dir, nil, "get", pkg+"@"+version); err != nil {
		return err
	}
	_, err = b.goCmd(ctx, dir, nil, "build", "-trimpath", "-ldflags", "-s -w", "-o", filepath.Join(out, etcdBin), pkg)
	return err
}

// buildKubernetes: k8s.io/kubernetes replaces every staging module k8s.io/X with a local
// directory, so a throwaway module points each of them at its published v0.N.P version.
func buildKubernetes(ctx context.Context, b *builder, g buildGroup, out string) error {
	version := g.version
	minor, staging, err := stagingVersion(version)
	if err != nil {
		return err
	}
	dir, err := b.moduleDir("kubernetes", version, "module hapod.local/clusterbuild/kubernetes\n\ngo 1.26.0\n")
	if err != nil {
		return err
	}
	js, err := b.goCmd(ctx, dir, nil, "mod", "download", "-json", "k8s.io/kubernetes@"+version)
	if err != nil {
		return err
	}
	var info struct{ GoMod string }
	if err := json.Unmarshal(js, &info); err != nil || info.GoMod == "" {
		return fmt.Errorf("go mod download k8s.io/kubernetes@%s: no go.mod in its answer", version)
	}
	upstream, err := os.ReadFile(info.GoMod)
	if err != nil {
		return err
	}
	goMod, err := kubernetesGoMod(upstream, version, staging)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "go.mod"), goMod, 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "tools.go"), []byte(kubernetesTools), 0o644); err != nil {
		return err
	}
	if _, err := b.goCmd(ctx, dir, nil, "mod", "tidy"); err != nil {
		return err
	}
	// Without these the binaries report v0.0.0-master, which kubectl and clients warn about.
	var ldflags []string
	ldflags = append(ldflags, "-s", "-w")
	for _, p := range []string{"k8s.io/component-base/version", "k8s.io/client-go/pkg/version"} {
		ldflags = append(ldflags,
			"-X", p+".gitVersion="+version,
			"-X", p+".gitMajor=1",
			"-X", p+".gitMinor="+minor,
			"-X", p+".gitTreeState=clean")
	}
	// One go build for all of them: they share most packages.
	args := []string{"build", "-trimpath", "-ldflags", strings.Join(ldflags, " "), "-o", out + string(filepath.Separator)}
	for _, name := range g.binaries {
		args = append(args, "k8s.io/kubernetes/cmd/"+name)
	}
	_, err = b.goCmd(ctx, dir, nil, args...)
	return err
}

const kubernetesTools = `//go:build tools

// Package tools pins the commands this throwaway module builds.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubelet"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
)
`

var stagingReplace = regexp.MustCompile(`(?m)^\s*(k8s\.io/[a-z0-9-]+)\s+=>\s+\./staging/`)

// kubernetesGoMod writes the throwaway module's go.mod from k8s.io/kubernetes's own.
func kubernetesGoMod(upstream []byte, version, staging string) ([]byte, error) {
	var buf bytes.Buffer
	fmt.Fprintf(&buf, "module hapod.local/clusterbuild/kubernetes\n\ngo 1.26.0\n\nrequire k8s.io/kubernetes %s\n\nreplace (\n", version)
	n := 0
	for _, m := range stagingReplace.FindAllSubmatch(upstream, -1) {
		mod := string(m[1])
		if mod == "k8s.io/sample-cli-plugin" || mod == "k8s.io/sample-controller" {
			continue // not needed by the commands, and not always published
		}
		fmt.Fprintf(&buf, "\t%s => %s %s\n", mod, mod, staging)
		n++
	}
	buf.WriteString(")\n")
	if n == 0 {
		return nil, errors.New("k8s.io/kubernetes go.mod has no staging replace directives; cannot build it this way")
	}
	return buf.Bytes(), nil
}

// stagingVersion maps v1.37.2 to ("37", "v0.37.2").
func stagingVersion(version string) (minor, staging string, err error) {
	parts := strings.Split(strings.TrimPrefix(version, "v"), ".")
	if len(parts) != 3 || parts[0] != "1" {
		return "", "", fmt.Errorf("kubernetes version %q: want v1.MINOR.PATCH", version)
	}
	return parts[1], "v0." + parts[1] + "." + parts[2], nil
}

// buildKwok: kwok's go.mod has no replace directives, so `go install` builds it.
func buildKwok(ctx context.Context, b *builder, g buildGroup, out string) error {
	return b.goInstall(ctx, g, out, nil, "-s -w", "sigs.k8s.io/kwok/cmd/kwok")
}

// buildContainerd: containerd v2's go.mod has no replace directives either. The
// tags leave out snapshotters that need cgo or kernel features a dev node does
// not use.
func buildContainerd(ctx context.Context, b *builder, g buildGroup, out string) error {
	const mod = "github.com/containerd/containerd/v2"
	ld := "-s -w -X " + mod + "/version.Version=" + g.version + " -X " + mod + "/version.Revision=modproxy"
	return b.goInstall(ctx, g, out, []string{"-tags", "no_btrfs no_devmapper no_zfs"}, ld,
		mod+"/cmd/containerd", mod+"/cmd/containerd-shim-runc-v2", mod+"/cmd/ctr")
}

func buildCNIPlugins(ctx context.Context, b *builder, g buildGroup, out string) error {
	var pkgs []string
	for _, p := range cniPlugins {
		pkgs = append(pkgs, "github.com/containernetworking/plugins/plugins/"+p)
	}
	return b.goInstall(ctx, g, out, nil, "-s -w", pkgs...)
}

// goInstall runs go install pkg@version for each package into out, from a
// throwaway module (so the repository's go.mod is not consulted).
func (b *builder) goInstall(ctx context.Context, g buildGroup, out string, flags []string, ldflags string, pkgs ...string) error {
	dir, err := b.moduleDir(g.name, g.version, "module hapod.local/clusterbuild/"+g.name+"\n\ngo 1.26.0\n")
	if err != nil {
		return err
	}
	args := append([]string{"install", "-trimpath", "-ldflags", ldflags}, flags...)
	for _, p := range pkgs {
		args = append(args, p+"@"+g.version)
	}
	_, err = b.goCmd(ctx, dir, []string{"GOBIN=" + out}, args...)
	return err
}

// lockFile takes an exclusive flock on path, waiting until ctx is done.
func lockFile(ctx context.Context, path string) (unlock func(), err error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open build lock: %w", err)
	}
	// Bounded by ctx; a cold build by another process takes about 8 minutes.
	err = poll.Until(ctx, time.Hour, func() (bool, error) {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err != nil && !errors.Is(err, syscall.EWOULDBLOCK) {
			return false, poll.Stop(fmt.Errorf("lock %s: %w", path, err))
		}
		return err == nil, nil
	})
	if err != nil {
		_ = f.Close()
		if ctx.Err() != nil {
			return nil, fmt.Errorf("waiting for another build of the cluster binaries (lock %s): %w", path, ctx.Err())
		}
		return nil, err
	}
	return func() { _ = f.Close() }, nil // closing releases the lock
}
