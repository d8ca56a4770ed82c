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

// Write packs binary as /<its base name>, the image's entrypoint, into an
// image named ref (e.g. localhost/hapod/demo:dev) and writes it to path as a
// docker-archive tarball. The layer's timestamps are fixed, so the same
// binary gives the same image digest.
func Write(path, ref, binary string) error {
	tag, err := name.NewTag(ref)
	if err != nil {
		return fmt.Errorf("image name %q: %w", ref, err)
	}
	data, err := os.ReadFile(binary)
	if err != nil {
		return err
	}
	base := filepath.Base(binary)
	layerTar, err := oneFileTar(base, data)
	if err != nil {
		return err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	})
	if err != nil {
		return err
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return err
	}
	cf = cf.DeepCopy()
	// ctr imports only images of the machine's platform unless told otherwise.
	cf.OS, cf.Architecture = "linux", runtime.GOARCH
	// A numeric non-root user, as the Dockerfile's distroless images have: a
	// pod with runAsNonRoot (deploy/example) refuses an image that runs as
	// root, and the kubelet can check only a numeric one.
	cf.Config = v1.Config{Entrypoint: []string{"/" + base}, User: "65532:65532"}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
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
