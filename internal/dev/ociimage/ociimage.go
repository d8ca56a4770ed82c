// Package ociimage packs a static binary into a one-layer container image
// tarball that `ctr images import` loads: the local cluster's real nodes run
// images built from this project's own binaries, and no registry is ever
// contacted.
package ociimage

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Image is one image to pack: a static binary as /<its base name>, the
// entrypoint, and nothing else (no shell, no libc, no CA bundle: the
// binaries need none).
type Image struct {
	Binary string
	// Arch is the binary's GOARCH ("" is this machine's).
	Arch string
	// Ports are documented as exposed ("8080/tcp", "7477/udp").
	Ports []string
	// Labels go into the image config (org.opencontainers.image.*).
	Labels map[string]string
}

// Build packs im. The layer's timestamps are fixed and the config carries
// no creation time, so the same binary gives the same image digest.
func Build(im Image) (v1.Image, error) {
	data, err := os.ReadFile(im.Binary)
	if err != nil {
		return nil, err
	}
	base := filepath.Base(im.Binary)
	layerTar, err := oneFileTar(base, data)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	})
	if err != nil {
		return nil, err
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	// ctr imports only images of the machine's platform unless told otherwise.
	cf.OS, cf.Architecture = "linux", im.Arch
	if cf.Architecture == "" {
		cf.Architecture = runtime.GOARCH
	}
	// A numeric non-root user, as the Dockerfile's distroless images have: a
	// pod with runAsNonRoot (deploy/example) refuses an image that runs as
	// root, and the kubelet can check only a numeric one.
	cf.Config = v1.Config{Entrypoint: []string{"/" + base}, User: "65532:65532", Labels: im.Labels}
	if len(im.Ports) > 0 {
		cf.Config.ExposedPorts = map[string]struct{}{}
		for _, p := range im.Ports {
			cf.Config.ExposedPorts[p] = struct{}{}
		}
	}
	return mutate.ConfigFile(img, cf)
}

// Write packs binary (for this machine) into an image named ref (e.g.
// localhost/hapod/demo:dev) and writes it to path as a docker-archive
// tarball, which `ctr images import` and `docker load` take.
func Write(path, ref, binary string) error {
	tag, err := name.NewTag(ref)
	if err != nil {
		return fmt.Errorf("image name %q: %w", ref, err)
	}
	img, err := Build(Image{Binary: binary})
	if err != nil {
		return err
	}
	return tarball.WriteToFile(path, tag, img)
}

func oneFileTar(name string, data []byte) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	hdr := &tar.Header{
		Name:     name,
		Mode:     0o755,
		Size:     int64(len(data)),
		Typeflag: tar.TypeReg,
		ModTime:  time.Unix(0, 0),
		Format:   tar.FormatPAX,
	}
	if err := tw.WriteHeader(hdr); err != nil {
		return nil, err
	}
	if _, err := tw.Write(data); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
