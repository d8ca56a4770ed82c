package main

import (
	"archive/tar"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/hapod/hapod/internal/dev/localcluster"
)

// make images for this machine's architecture, checked from what it wrote:
// the OCI layout names each image and holds it for the platform, and each
// image is the binary alone (no shell, nothing else), run as a numeric
// non-root user, with its ports and OCI labels; the docker-archive is the
// same image; and the entrypoint runs.
func TestImages(t *testing.T) {
	if testing.Short() {
		t.Skip("compiles the three binaries")
	}
	root, err := localcluster.RepoRoot(".")
	if err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	o := options{Root: root, Out: out, Arches: []string{runtime.GOARCH}, Repo: "example.com/hapod", Version: "v0.0.0-test"}
	if _, err := build(t.Context(), o); err != nil {
		t.Fatal(err)
	}
	lp, err := layout.FromPath(filepath.Join(out, "oci"))
	if err != nil {
		t.Fatal(err)
	}
	top, err := lp.ImageIndex()
	if err != nil {
		t.Fatal(err)
	}
	tm, err := top.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]v1.Descriptor{}
	for _, d := range tm.Manifests {
		byName[d.Annotations["org.opencontainers.image.ref.name"]] = d
	}
	for _, im := range images {
		t.Run(im.name, func(t *testing.T) {
			d, ok := byName[o.refName(im)]
			if !ok {
				t.Fatalf("the layout names no %s (it has %v)", o.refName(im), keys(byName))
			}
			idx, err := top.ImageIndex(d.Digest)
			if err != nil {
				t.Fatal(err)
			}
			m, err := idx.IndexManifest()
			if err != nil {
				t.Fatal(err)
			}
			if len(m.Manifests) != 1 || m.Manifests[0].Platform == nil ||
				m.Manifests[0].Platform.OS != "linux" || m.Manifests[0].Platform.Architecture != runtime.GOARCH {
				t.Fatalf("platforms %+v, want linux/%s alone", m.Manifests, runtime.GOARCH)
			}
			img, err := idx.Image(m.Manifests[0].Digest)
			if err != nil {
				t.Fatal(err)
			}
			checkImage(t, img, im, o)

			// The docker-archive holds the same image under the same name.
			tb, err := tarball.ImageFromPath(filepath.Join(out, im.name+"-"+runtime.GOARCH+".tar"), nil)
			if err != nil {
				t.Fatal(err)
			}
			want, _ := img.Digest()
			if got, err := tb.Digest(); err != nil || got != want {
				t.Errorf("docker-archive digest %v (%v), want the layout's %v", got, err, want)
			}
		})
	}
}

func checkImage(t *testing.T, img v1.Image, im image, o options) {
	t.Helper()
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	c := cf.Config
	if !slices.Equal(c.Entrypoint, []string{"/" + im.name}) || len(c.Cmd) != 0 {
		t.Errorf("entrypoint %q cmd %q, want [/%s]", c.Entrypoint, c.Cmd, im.name)
	}
	// Numeric and not 0: the kubelet can then enforce runAsNonRoot.
	if c.User != "65532:65532" {
		t.Errorf("user %q, want 65532:65532", c.User)
	}
	for _, p := range im.ports {
		if _, ok := c.ExposedPorts[p]; !ok || len(c.ExposedPorts) != len(im.ports) {
			t.Errorf("exposed ports %v, want %v", c.ExposedPorts, im.ports)
		}
	}
	for k, want := range map[string]string{
		"org.opencontainers.image.title":   im.name,
		"org.opencontainers.image.version": o.Version,
		"org.opencontainers.image.source":  "https://github.com/hapod/hapod",
	} {
		if c.Labels[k] != want {
			t.Errorf("label %s=%q, want %q", k, c.Labels[k], want)
		}
	}
	if len(c.Labels["org.opencontainers.image.revision"]) != 40 {
		t.Errorf("label org.opencontainers.image.revision=%q, want the commit", c.Labels["org.opencontainers.image.revision"])
	}

	// The binary alone: no shell, no other file.
	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("%d layers (%v), want 1", len(layers), err)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = rc.Close() }()
	tr := tar.NewReader(rc)
	var files []string
	bin := filepath.Join(t.TempDir(), im.name)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, h.Name)
		if h.Name == im.name {
			f, err := os.OpenFile(bin, os.O_CREATE|os.O_WRONLY, 0o755)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := io.Copy(f, tr); err != nil {
				t.Fatal(err)
			}
			_ = f.Close()
			if h.Mode&0o111 == 0 {
				t.Errorf("%s mode %o: not executable", h.Name, h.Mode)
			}
		}
	}
	if !slices.Equal(files, []string{im.name}) {
		t.Errorf("layer files %v, want %s alone", files, im.name)
	}
	// The entrypoint is a static binary that runs here (same arch).
	out, err := exec.Command(bin, "-h").CombinedOutput()
	if !strings.Contains(strings.ToLower(string(out)), "usage") {
		t.Errorf("%s -h: %v\n%s", im.name, err, out)
	}
	if f, err := exec.Command("file", bin).Output(); err == nil && !strings.Contains(string(f), "statically linked") {
		t.Errorf("%s: %s", im.name, f)
	}
}

func keys(m map[string]v1.Descriptor) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}
