package deploy_test

import (
	"os"
	"path"
	"regexp"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// krewPlugin is the part of krew's Plugin manifest (index.Plugin, apiVersion
// krew.googlecontainertools.github.com/v1alpha2) that the plugin uses;
// decoding strictly into it fails on any other field, such as a misspelt
// one krew would ignore.
type krewPlugin struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name string `json:"name"`
	} `json:"metadata"`
	Spec struct {
		Version          string         `json:"version"`
		Homepage         string         `json:"homepage"`
		ShortDescription string         `json:"shortDescription"`
		Description      string         `json:"description"`
		Platforms        []krewPlatform `json:"platforms"`
	} `json:"spec"`
}

type krewPlatform struct {
	Selector struct {
		MatchLabels map[string]string `json:"matchLabels"`
	} `json:"selector"`
	URI    string     `json:"uri"`
	Sha256 string     `json:"sha256"`
	Files  []krewFile `json:"files"`
	Bin    string     `json:"bin"`
}

// krewFile is one file krew copies from the archive into the install.
type krewFile struct {
	From string `json:"from"`
	To   string `json:"to"`
}

// TestKrewManifest checks deploy/krew/hapod.yaml against what krew's
// validation requires (internal/index/validation: apiVersion, kind, a safe
// name, a one-line shortDescription, a v-prefixed semver, and per platform a
// uri, a sha256, a bin, files with from and to, a selector on os and arch
// only) and against the release: the four platforms, each archive at its
// release URL, bin kubectl-hapod. A sha256 is 64 hex digits or the
// placeholder that names its own archive, for the release to fill in.
func TestKrewManifest(t *testing.T) {
	b, err := os.ReadFile("krew/hapod.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var p krewPlugin
	if err := yaml.UnmarshalStrict(b, &p); err != nil {
		t.Fatalf("krew/hapod.yaml: %v", err)
	}
	if p.APIVersion != "krew.googlecontainertools.github.com/v1alpha2" || p.Kind != "Plugin" {
		t.Errorf("apiVersion %q, kind %q", p.APIVersion, p.Kind)
	}
	// krew installs plugin <name> as kubectl-<name>: hapod is kubectl hapod.
	if p.Metadata.Name != "hapod" {
		t.Errorf("metadata.name %q, want hapod", p.Metadata.Name)
	}
	s := p.Spec
	if !regexp.MustCompile(`^v\d+\.\d+\.\d+$`).MatchString(s.Version) {
		t.Errorf("spec.version %q is not vMAJOR.MINOR.PATCH", s.Version)
	}
	if s.ShortDescription == "" || strings.ContainsAny(s.ShortDescription, "\r\n") || len(s.ShortDescription) > 50 {
		t.Errorf("spec.shortDescription %q: want one line of at most 50 characters (krew search's column)", s.ShortDescription)
	}
	if s.Description == "" || !strings.HasPrefix(s.Homepage, "https://") {
		t.Errorf("spec.description empty or spec.homepage %q not https", s.Homepage)
	}

	sha256 := regexp.MustCompile(`^[a-f0-9]{64}$`)
	var platforms []string
	for _, pl := range s.Platforms {
		goos, goarch := pl.Selector.MatchLabels["os"], pl.Selector.MatchLabels["arch"]
		name := goos + "/" + goarch
		platforms = append(platforms, name)
		if len(pl.Selector.MatchLabels) != 2 || goos == "" || goarch == "" {
			t.Errorf("%s: selector %v, want matchLabels os and arch only", name, pl.Selector.MatchLabels)
		}
		archive := "kubectl-hapod_" + goos + "_" + goarch + ".tar.gz"
		if want := "https://github.com/hapod/hapod/releases/download/" + s.Version + "/" + archive; pl.URI != want {
			t.Errorf("%s: uri %q, want %q", name, pl.URI, want)
		}
		if !sha256.MatchString(pl.Sha256) && pl.Sha256 != "RELEASE-FILLS-IN: sha256sum "+path.Base(pl.URI) {
			t.Errorf("%s: sha256 %q is neither a sha256 nor the placeholder of its archive", name, pl.Sha256)
		}
		if pl.Bin != "kubectl-hapod" {
			t.Errorf("%s: bin %q, want kubectl-hapod", name, pl.Bin)
		}
		if !slices.ContainsFunc(pl.Files, func(f krewFile) bool { return f.From == pl.Bin }) {
			t.Errorf("%s: files %v do not install the bin %s", name, pl.Files, pl.Bin)
		}
		for _, f := range pl.Files {
			if f.From == "" || f.To == "" {
				t.Errorf("%s: files entry %+v without from or to", name, f)
			}
		}
	}
	slices.Sort(platforms)
	if want := []string{"darwin/amd64", "darwin/arm64", "linux/amd64", "linux/arm64"}; !slices.Equal(platforms, want) {
		t.Errorf("platforms %v, want %v", platforms, want)
	}
}
