package localcluster

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fakeBinary writes an executable file with content into the cache layout and stamps it,
// as a finished build does.
func fakeBinary(t *testing.T, cacheDir, name, version, content string) string {
	t.Helper()
	built := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(built, []byte(content), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(cacheDir, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := install(built, cacheDir, name, version); err != nil {
		t.Fatal(err)
	}
	return binaryPath(cacheDir, name, version)
}

func TestVerifyStamp(t *testing.T) {
	tests := []struct {
		name    string
		damage  func(t *testing.T, bin string) // what happened to the cache after a good build
		version string                         // version asked for; "" means the one built
		wantErr string                         // "" means the binary may be reused
	}{
		// A finished build is reused.
		{name: "intact", damage: func(*testing.T, string) {}},
		// The binary was changed after the build: corrupt, rebuild.
		{name: "corrupt binary", damage: func(t *testing.T, bin string) { appendTo(t, bin, "x") }, wantErr: "does not match its stamp"},
		// A build that died while writing: truncated binary.
		{name: "truncated binary", damage: func(t *testing.T, bin string) {
			if err := os.Truncate(bin, 3); err != nil {
				t.Fatal(err)
			}
		}, wantErr: "does not match its stamp"},
		// A build that died before the stamp was written.
		{name: "no stamp", damage: func(t *testing.T, bin string) { remove(t, stampPath(bin)) }, wantErr: "has no stamp"},
		// Garbage in the stamp file.
		{name: "corrupt stamp", damage: func(t *testing.T, bin string) {
			if err := os.WriteFile(stampPath(bin), []byte("{not json"), 0o644); err != nil {
				t.Fatal(err)
			}
		}, wantErr: "stamp of"},
		// The binary is gone.
		{name: "no binary", damage: func(t *testing.T, bin string) { remove(t, bin) }, wantErr: "is not built"},
		// Lost its execute bit.
		{name: "not executable", damage: func(t *testing.T, bin string) {
			if err := os.Chmod(bin, 0o644); err != nil {
				t.Fatal(err)
			}
		}, wantErr: "not executable"},
		// Another version is wanted: its directory does not exist.
		{name: "other version", damage: func(*testing.T, string) {}, version: "v9.9.9", wantErr: "is not built"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cache := t.TempDir()
			bin := fakeBinary(t, cache, "etcd", "v3.6.16", "#!/bin/sh\necho etcd\n")
			tt.damage(t, bin)
			version := tt.version
			if version == "" {
				version = "v3.6.16"
			}
			err := verifyStamp(binaryPath(cache, "etcd", version), "etcd", version)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("verifyStamp: %v, want nil", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("verifyStamp: %v, want an error containing %q", err, tt.wantErr)
			}
		})
	}
}

// A stamp that names another component or version (a directory copied by hand) is not
// trusted.
func TestVerifyStampChecksNameAndVersion(t *testing.T) {
	cache := t.TempDir()
	bin := fakeBinary(t, cache, "kwok", "v0.8.0", "kwok")
	if err := writeStamp(bin, "kwok", "v0.7.0"); err != nil {
		t.Fatal(err)
	}
	if err := verifyStamp(bin, "kwok", "v0.8.0"); err == nil || !strings.Contains(err.Error(), "want kwok v0.8.0") {
		t.Fatalf("verifyStamp: %v, want a version mismatch", err)
	}
}

// install replaces a corrupt cache entry whole, and the result verifies.
func TestInstallReplacesCorruptEntry(t *testing.T) {
	cache := t.TempDir()
	bin := fakeBinary(t, cache, "kube-scheduler", "v1.37.2", "old")
	appendTo(t, bin, "garbage")
	if err := verifyGroup(cache, buildGroup{version: "v1.37.2", binaries: []string{"kube-scheduler"}}); err == nil {
		t.Fatal("verifyGroup accepted a corrupt binary")
	}
	fakeBinary(t, cache, "kube-scheduler", "v1.37.2", "new")
	if err := verifyStamp(bin, "kube-scheduler", "v1.37.2"); err != nil {
		t.Fatalf("after reinstall: %v", err)
	}
	if got, _ := os.ReadFile(bin); string(got) != "new" {
		t.Fatalf("binary holds %q, want the new build", got)
	}
	leftovers, _ := filepath.Glob(filepath.Join(cache, "bin", ".install-*"))
	if len(leftovers) != 0 {
		t.Fatalf("temporary directories left behind: %v", leftovers)
	}
}

// Build reuses a cache whose stamps verify without running the go command (PATH is
// emptied, so any build attempt would fail).
func TestBuildReusesVerifiedCache(t *testing.T) {
	cache := t.TempDir()
	v := DefaultVersions()
	for _, g := range buildGroups(v, true) {
		for _, name := range g.binaries {
			fakeBinary(t, cache, name, g.version, name)
		}
	}
	t.Setenv("PATH", "")
	bins, err := Build(t.Context(), BuildOptions{CacheDir: cache, RealNode: true})
	if err != nil {
		t.Fatalf("Build with a verified cache: %v", err)
	}
	if want := binaryPath(cache, "kube-apiserver", v.Kubernetes); bins.KubeAPIServer != want {
		t.Fatalf("KubeAPIServer = %s, want %s", bins.KubeAPIServer, want)
	}
	if want := binaryPath(cache, "kubelet", v.Kubernetes); bins.Kubelet != want || len(bins.CNIBinDirs) != len(cniPlugins) {
		t.Fatalf("Kubelet = %s (want %s), CNIBinDirs = %v", bins.Kubelet, want, bins.CNIBinDirs)
	}
	// Corrupt one: now Build must try to build (and fails, for lack of go).
	appendTo(t, bins.Kwok, "x")
	if _, err := Build(t.Context(), BuildOptions{CacheDir: cache}); err == nil || !strings.Contains(err.Error(), "build kwok") {
		t.Fatalf("Build with a corrupt kwok: %v, want an attempt to build kwok", err)
	}
}

func TestKubernetesGoMod(t *testing.T) {
	upstream := []byte(`module k8s.io/kubernetes

replace (
	k8s.io/api => ./staging/src/k8s.io/api
	k8s.io/client-go => ./staging/src/k8s.io/client-go
	k8s.io/sample-controller => ./staging/src/k8s.io/sample-controller
	github.com/other/mod => github.com/other/mod v1.0.0
)
`)
	got, err := kubernetesGoMod(upstream, "v1.37.2", "v0.37.2")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"require k8s.io/kubernetes v1.37.2",
		"\tk8s.io/api => k8s.io/api v0.37.2\n",
		"\tk8s.io/client-go => k8s.io/client-go v0.37.2\n",
	} {
		if !strings.Contains(string(got), want) {
			t.Errorf("go.mod lacks %q:\n%s", want, got)
		}
	}
	for _, unwanted := range []string{"sample-controller", "github.com/other"} {
		if strings.Contains(string(got), unwanted) {
			t.Errorf("go.mod has %q:\n%s", unwanted, got)
		}
	}
	if _, err := kubernetesGoMod([]byte("module x\n"), "v1.37.2", "v0.37.2"); err == nil {
		t.Error("no error for a go.mod without staging replaces")
	}
}

func TestStagingVersion(t *testing.T) {
	minor, staging, err := stagingVersion("v1.37.2")
	if err != nil || minor != "37" || staging != "v0.37.2" {
		t.Fatalf("stagingVersion(v1.37.2) = %q, %q, %v", minor, staging, err)
	}
	for _, bad := range []string{"1.37", "v2.0.0", "latest"} {
		if _, _, err := stagingVersion(bad); err == nil {
			t.Errorf("stagingVersion(%q): no error", bad)
		}
	}
}

func TestRepoRoot(t *testing.T) {
	root := t.TempDir()
	deep := filepath.Join(root, "a", "b")
	if err := os.MkdirAll(deep, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "go.mod"), []byte("module x\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := RepoRoot(deep)
	if err != nil || got != root {
		t.Fatalf("RepoRoot = %q, %v; want %q", got, err, root)
	}
}

func appendTo(t *testing.T, path, s string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(s); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

func remove(t *testing.T, path string) {
	t.Helper()
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
}
