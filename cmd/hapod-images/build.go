package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/hapod/hapod/internal/dev/gobuild"
	"github.com/hapod/hapod/internal/dev/ociimage"
)

// image is one published image: its command and what it exposes (as the
// Dockerfile's EXPOSE lines).
type image struct {
	name, description string
	ports             []string
}

// images are the ones the Dockerfile builds.
var images = []image{
	{"hapod-controller", "hapod's controller: one active pod per group, failover in milliseconds", []string{"8080/tcp", "8081/tcp"}},
	{"hapod-demo", "hapod's demo application (links pkg/role)", []string{"8080/tcp", "7477/udp"}},
	{"hapod-agent", "hapod's role sidecar for apps in any language", []string{"7477/udp", "7480/tcp"}},
}

type options struct {
	Root, Out     string
	Arches        []string
	Repo, Version string
}

// refName is the image's full name and tag.
func (o options) refName(im image) string { return o.Repo + "/" + im.name + ":" + o.Version }

// build compiles, packs and writes every image for every architecture and
// returns what it wrote.
func build(ctx context.Context, o options) ([]string, error) {
	revision := gitRevision(o.Root)
	if err := os.RemoveAll(filepath.Join(o.Out, "oci")); err != nil {
		return nil, err
	}
	lp, err := layout.Write(filepath.Join(o.Out, "oci"), empty.Index)
	if err != nil {
		return nil, err
	}
	var pkgs []string
	for _, im := range images {
		pkgs = append(pkgs, "./cmd/"+im.name)
	}
	built := map[string]map[string]v1.Image{} // name -> arch -> image
	var written []string
	for _, arch := range o.Arches {
		bin := filepath.Join(o.Out, "bin", arch)
		if err := gobuild.Release(ctx, o.Root, bin, arch, pkgs...); err != nil {
			return nil, err
		}
		for _, im := range images {
			img, err := ociimage.Build(ociimage.Image{
				Binary: filepath.Join(bin, im.name), Arch: arch, Ports: im.ports,
				Labels: map[string]string{
					"org.opencontainers.image.title":       im.name,
					"org.opencontainers.image.description": im.description,
					"org.opencontainers.image.source":      "https://github.com/hapod/hapod",
					"org.opencontainers.image.version":     o.Version,
					"org.opencontainers.image.revision":    revision,
				},
			})
			if err != nil {
				return nil, fmt.Errorf("%s/%s: %w", im.name, arch, err)
			}
			if built[im.name] == nil {
				built[im.name] = map[string]v1.Image{}
			}
			built[im.name][arch] = img
			tag, err := name.NewTag(o.refName(im))
			if err != nil {
				return nil, err
			}
			path := filepath.Join(o.Out, im.name+"-"+arch+".tar")
			if err := tarball.WriteToFile(path, tag, img); err != nil {
				return nil, err
			}
			written = append(written, path)
		}
	}
	for _, im := range images {
		var adds []mutate.IndexAddendum
		for _, arch := range o.Arches {
			adds = append(adds, mutate.IndexAddendum{
				Add:        built[im.name][arch],
				Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: arch}},
			})
		}
		idx := mutate.AppendManifests(empty.Index, adds...)
		if err := lp.AppendIndex(idx, layout.WithAnnotations(map[string]string{
			"org.opencontainers.image.ref.name": o.refName(im),
		})); err != nil {
			return nil, err
		}
	}
	return append(written, string(lp)), nil
}

// gitRevision is the commit the images are built from, "" outside a git
// work tree.
func gitRevision(dir string) string {
	cmd := exec.Command("git", "rev-parse", "HEAD")
	cmd.Dir = dir
	out, err := cmd.Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}
