// Package manifest reads hapod's kustomize directories (deploy/) the way
// kubectl apply -k renders them when a kustomization lists resources and, at
// most, JSON 6902 patches with a target: the documents of its resources, in
// order, directories recursively, patched, each decoded strictly into its
// client-go type. deploy's tests check the
// manifests with it and the tour plays the example it returns, so both see
// the same objects (deploy's TestLoadMatchesKubectlKustomize compares them
// with kubectl's own rendering).
package manifest

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"

	jsonpatch "github.com/evanphx/json-patch/v5"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/yaml"

	"github.com/hapod/hapod/api/v1alpha1"
)

// Object is one document of a manifest file.
type Object struct {
	Source string         // file:document, for messages
	Raw    []byte         // the document as JSON: what kubectl sends
	Obj    runtime.Object // decoded strictly into its client-go type
}

func (o Object) String() string {
	name := ""
	if a, ok := o.Obj.(metav1.Object); ok {
		name = a.GetName()
	}
	return fmt.Sprintf("%s %s (%s)", o.Obj.GetObjectKind().GroupVersionKind().Kind, name, o.Source)
}

// kustomization is the part of kustomization.yaml that Load renders. Decoding
// is strict, so a kustomization that starts using a namespace, labels or a
// strategic-merge patch fails here until Load learns to render it.
type kustomization struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Resources  []string `json:"resources"`
	Patches    []patch  `json:"patches,omitempty"`
}

// patch is an inline JSON 6902 patch (a YAML list of operations) applied to
// the objects its target matches, as kustomize's patches field does.
type patch struct {
	Patch  string `json:"patch"`
	Target target `json:"target"`
}

// target selects objects by group, version, kind, name and namespace; an
// empty field matches anything.
type target struct {
	Group     string `json:"group,omitempty"`
	Version   string `json:"version,omitempty"`
	Kind      string `json:"kind,omitempty"`
	Name      string `json:"name,omitempty"`
	Namespace string `json:"namespace,omitempty"`
}

func (t target) matches(o Object) bool {
	gvk := o.Obj.GetObjectKind().GroupVersionKind()
	a, ok := o.Obj.(metav1.Object)
	if !ok {
		return false
	}
	for _, f := range [][2]string{{t.Group, gvk.Group}, {t.Version, gvk.Version}, {t.Kind, gvk.Kind}, {t.Name, a.GetName()}, {t.Namespace, a.GetNamespace()}} {
		if f[0] != "" && f[0] != f[1] {
			return false
		}
	}
	return true
}

// strict decodes into client-go types (and CRDs and HAGroups) and fails on
// unknown or duplicate fields and on kinds it does not know.
var strict = serializer.NewCodecFactory(scheme(), serializer.EnableStrict).UniversalDeserializer()

// scheme knows client-go's types, CRDs (deploy/crd) and HAGroups.
func scheme() *runtime.Scheme {
	s := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{clientgoscheme.AddToScheme, apiextensionsv1.AddToScheme, v1alpha1.AddToScheme} {
		if err := add(s); err != nil {
			panic(err) // static registrations: a failure is a programming error
		}
	}
	return s
}

// Load renders the kustomization in dir.
func Load(dir string) ([]Object, error) {
	b, err := os.ReadFile(filepath.Join(dir, "kustomization.yaml"))
	if err != nil {
		return nil, err
	}
	var k kustomization
	if err := yaml.UnmarshalStrict(b, &k); err != nil {
		return nil, fmt.Errorf("%s/kustomization.yaml (only resources and JSON 6902 patches are rendered): %w", dir, err)
	}
	if k.APIVersion != "kustomize.config.k8s.io/v1beta1" || k.Kind != "Kustomization" {
		return nil, fmt.Errorf("%s/kustomization.yaml: apiVersion %q kind %q", dir, k.APIVersion, k.Kind)
	}
	if len(k.Resources) == 0 {
		return nil, fmt.Errorf("%s/kustomization.yaml: no resources", dir)
	}
	var objs []Object
	for _, r := range k.Resources {
		path := filepath.Join(dir, r)
		fi, err := os.Stat(path)
		if err != nil {
			return nil, fmt.Errorf("%s/kustomization.yaml: %w", dir, err)
		}
		var more []Object
		if fi.IsDir() {
			more, err = Load(path)
		} else {
			more, err = DecodeFile(path)
		}
		if err != nil {
			return nil, err
		}
		objs = append(objs, more...)
	}
	for i, p := range k.Patches {
		if objs, err = p.apply(objs); err != nil {
			return nil, fmt.Errorf("%s/kustomization.yaml: patches[%d]: %w", dir, i, err)
		}
	}
	return objs, nil
}

// apply patches every object p's target matches. A patch that matches
// nothing is an error: in hapod's manifests it is always a mistake (a
// renamed object the overlay no longer reaches).
func (p patch) apply(objs []Object) ([]Object, error) {
	ops, err := yaml.YAMLToJSONStrict([]byte(p.Patch))
	if err != nil {
		return nil, err
	}
	decoded, err := jsonpatch.DecodePatch(ops)
	if err != nil {
		return nil, fmt.Errorf("not a JSON 6902 patch (strategic-merge patches are not rendered): %w", err)
	}
	out := slices.Clone(objs)
	n := 0
	for i, o := range out {
		if !p.Target.matches(o) {
			continue
		}
		n++
		raw, err := decoded.Apply(o.Raw)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", o, err)
		}
		obj, _, err := strict.Decode(raw, nil, nil)
		if err != nil {
			return nil, fmt.Errorf("%s patched: %w", o, err)
		}
		out[i] = Object{Source: o.Source + " (patched)", Raw: raw, Obj: obj}
	}
	if n == 0 {
		return nil, fmt.Errorf("target %+v matches no object", p.Target)
	}
	return out, nil
}

// DecodeFile decodes every document of a YAML file; documents with nothing
// but comments are skipped, a file without any object is an error.
func DecodeFile(path string) ([]Object, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }()
	r := utilyaml.NewYAMLReader(bufio.NewReader(f))
	var objs []Object
	for i := 1; ; i++ {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		source := fmt.Sprintf("%s:%d", path, i)
		raw, err := yaml.YAMLToJSONStrict(doc)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", source, err)
		}
		if bytes.Equal(bytes.TrimSpace(raw), []byte("null")) {
			continue // only comments or separators
		}
		obj, _, err := strict.Decode(raw, nil, nil)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", source, err)
		}
		objs = append(objs, Object{Source: source, Raw: raw, Obj: obj})
	}
	if len(objs) == 0 {
		return nil, fmt.Errorf("%s: no objects", path)
	}
	return objs, nil
}
