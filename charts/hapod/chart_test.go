package hapod_test

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/yaml"

	"github.com/hapod/hapod/internal/dev/clustertest"
	"github.com/hapod/hapod/internal/dev/crdinstall"
	"github.com/hapod/hapod/internal/dev/helmbin"
)

func TestMain(m *testing.M) { clustertest.Main(m) }

// chartDir is the chart, the test's working directory.
const chartDir = "."

// customValues is the non-default values file: every choice made otherwise.
const customValues = "testdata/values-custom.yaml"

var helmBuild struct {
	once sync.Once
	path string
	err  error
}

// helm returns the helm binary, built once per machine into .cache/tools
// (cold, a few minutes: -short skips the tests that need it).
func helm(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("needs the helm build; skipped by -short")
	}
	helmBuild.once.Do(func() {
		// Not t.Context(): the build is shared by every later test.
		helmBuild.path, helmBuild.err = helmbin.Build(t.Context(), "")
	})
	if helmBuild.err != nil {
		t.Fatal(helmBuild.err)
	}
	return helmBuild.path
}

// runHelm runs helm with args and returns its standard output; the error
// carries its standard error. Helm's own configuration (repositories,
// plugins, caches) is a fresh directory per test, so the user's does not
// matter.
func runHelm(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), helm(t), args...)
	home := t.TempDir()
	cmd.Env = append(os.Environ(),
		"HELM_CACHE_HOME="+filepath.Join(home, "cache"),
		"HELM_CONFIG_HOME="+filepath.Join(home, "config"),
		"HELM_DATA_HOME="+filepath.Join(home, "data"),
		"KUBECONFIG="+filepath.Join(home, "no-kubeconfig"))
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), errors.New(strings.TrimSpace(err.Error() + ": " + stderr.String() + stdout.String()))
	}
	return stdout.String(), nil
}

// doc is one document of helm template's output.
type doc struct {
	source string                     // helm's "# Source:" line, for messages
	u      *unstructured.Unstructured // what is applied
	obj    runtime.Object             // decoded strictly into its Go type; nil for a ServiceMonitor
}

func (d doc) String() string { return d.u.GetKind() + " " + d.u.GetName() + " (" + d.source + ")" }

// strict decodes the chart's objects into their Go types, failing on unknown
// or duplicate fields: a misspelt field in a template would otherwise be
// dropped by the API server without a word.
var strict = func() runtime.Decoder {
	s := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(s); err != nil {
		panic(err)
	}
	if err := apiextensionsv1.AddToScheme(s); err != nil {
		panic(err)
	}
	return serializer.NewCodecFactory(s, serializer.EnableStrict).UniversalDeserializer()
}()

// render runs helm template for release in namespace with the extra args
// (values files, --set) and decodes the documents, CRDs included.
func render(t *testing.T, release, namespace string, args ...string) []doc {
	t.Helper()
	out, err := runHelm(t, append([]string{"template", release, chartDir, "--namespace", namespace, "--include-crds"}, args...)...)
	if err != nil {
		t.Fatalf("helm template: %v", err)
	}
	return decode(t, out)
}

func decode(t *testing.T, out string) []doc {
	t.Helper()
	r := utilyaml.NewYAMLReader(bufio.NewReader(strings.NewReader(out)))
	var docs []doc
	for {
		b, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		source := ""
		if _, rest, ok := strings.Cut(string(b), "# Source: "); ok {
			source, _, _ = strings.Cut(rest, "\n")
		}
		raw, err := yaml.YAMLToJSONStrict(b)
		if err != nil {
			t.Fatalf("%s: %v", source, err)
		}
		if bytes.Equal(bytes.TrimSpace(raw), []byte("null")) {
			continue // an empty template
		}
		d := doc{source: source, u: &unstructured.Unstructured{}}
		if err := d.u.UnmarshalJSON(raw); err != nil {
			t.Fatalf("%s: %v", source, err)
		}
		// Prometheus Operator's types are not a dependency of this module;
		// its schema is checked by its own CRD where one is installed.
		if d.u.GetKind() != "ServiceMonitor" {
			if d.obj, _, err = strict.Decode(raw, nil, nil); err != nil {
				t.Fatalf("%s: %v", source, err)
			}
		}
		docs = append(docs, d)
	}
	if len(docs) == 0 {
		t.Fatal("helm template rendered nothing")
	}
	return docs
}

// only returns the single document of Go type T, failing unless there is
// exactly one.
func only[T runtime.Object](t *testing.T, docs []doc) T {
	t.Helper()
	all := all[T](docs)
	if len(all) != 1 {
		var zero T
		t.Fatalf("want exactly one %T, found %d", zero, len(all))
	}
	return all[0]
}

func all[T runtime.Object](docs []doc) []T {
	var out []T
	for _, d := range docs {
		if v, ok := d.obj.(T); ok {
			out = append(out, v)
		}
	}
	return out
}

// The CRD the chart installs (crds/, which helm applies before the
// templates and never upgrades) is deploy/crd's, which make generate writes:
// copy it over after make generate.
func TestCRDMatchesDeploy(t *testing.T) {
	want, err := os.ReadFile(filepath.Join("..", "..", crdinstall.File))
	if err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir("crds")
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 || entries[0].Name() != filepath.Base(crdinstall.File) {
		t.Fatalf("crds/ holds %v, want %s alone", entries, filepath.Base(crdinstall.File))
	}
	got, err := os.ReadFile(filepath.Join("crds", entries[0].Name()))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("crds/%s differs from %s: cp %[2]s charts/hapod/crds/", entries[0].Name(), crdinstall.File)
	}
}

// TestLint runs helm lint --strict (warnings fail too) with the default
// values and with testdata's.
func TestLint(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"default", nil},
		{"custom", []string{"--values", customValues}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := runHelm(t, append([]string{"lint", "--strict", chartDir}, tc.args...)...)
			if err != nil {
				t.Fatalf("helm lint: %v", err)
			}
			if !strings.Contains(out, "0 chart(s) failed") {
				t.Errorf("helm lint:\n%s", out)
			}
		})
	}
}

// TestBadValuesRefused checks that helm refuses values the controller would
// refuse at start, before anything is installed: the schema (in helm
// template, install and lint alike) and the chart's own checks of pairs of
// values (hapod.validate; helm lint reports a template's fail only as INFO,
// so they are checked with helm template alone).
func TestBadValuesRefused(t *testing.T) {
	for _, tc := range []struct {
		name, values, want string
		schema             bool // refused by values.schema.json, so by helm lint too
	}{
		{"rolePort not a number", `rolePort: "x"`, "/rolePort", true},
		{"rolePort out of range", `rolePort: 70000`, "/rolePort", true},
		// A misspelt key would otherwise be ignored without a word.
		{"unknown key", `rolPort: 7478`, "additional properties 'rolPort'", true},
		{"unknown nested key", `image: {tagg: v1}`, "additional properties 'tagg'", true},
		{"unknown key in serviceMonitor", `serviceMonitor: {enabld: true}`, "additional properties 'enabld'", true},
		{"bad label key", `roleLabel: "ha role"`, "/roleLabel", true},
		// The values go into the admission policies' CEL in quotes.
		{"quote in a label value", `activeValue: "act'ive"`, "/activeValue", true},
		{"bad namespace", `watchNamespaces: [Shop]`, "/watchNamespaces", true},
		{"pull policy", `image: {pullPolicy: Sometimes}`, "/image/pullPolicy", true},
		{"no replicas", `replicas: 0`, "/replicas", true},
		{"two leaders", "leaderElection: {enabled: false}\nreplicas: 2", "needs leaderElection.enabled", false},
		{"group label is the role label", `groupLabel: role`, "groupLabel must differ from roleLabel", false},
		{"active is standby", `activeValue: standby`, "standbyValue must differ from activeValue", false},
		{"groups without namespaces", `groups: [web]`, "set watchNamespaces too", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "values.yaml")
			if err := os.WriteFile(path, []byte(tc.values+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			cmds := [][]string{{"template", "hapod", chartDir, "--values", path}}
			if tc.schema {
				cmds = append(cmds, []string{"lint", "--strict", chartDir, "--values", path})
			}
			for _, args := range cmds {
				_, err := runHelm(t, args...)
				if err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Errorf("helm %s with %q: %v; want an error containing %q", args[0], tc.values, err, tc.want)
				}
			}
		})
	}
}
