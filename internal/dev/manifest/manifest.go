// Package manifest reads hapod's kustomize directories (deploy/) the way
// kubectl apply -k renders them when a kustomization lists only resources:
// the documents of its resources, in order, directories recursively, each
// decoded strictly into its client-go type. deploy's tests check the
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

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/yaml"
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
// is strict, so a kustomization that starts using patches, a namespace or
// labels fails here until Load learns to render it.
type kustomization struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Resources  []string `json:"resources"`
}

// strict decodes into client-go types and fails on unknown or duplicate
// fields and on kinds client-go does not know.
var strict = serializer.NewCodecFactory(clientgoscheme.Scheme, serializer.EnableStrict).UniversalDeserializer()

// Load renders the kustomization in dir.
func Load(dir string) ([]Object, error) {
	b, err := os.ReadFile(filepath.Join(dir, "kustomization.yaml"))
	if err != nil {
		return nil, err
	}
	var k kustomization
	if err := yaml.UnmarshalStrict(b, &k); err != nil {
		return nil, fmt.Errorf("%s/kustomization.yaml (only resources are rendered): %w", dir, err)
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
	return objs, nil
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
