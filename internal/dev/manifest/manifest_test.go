package manifest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

const service = "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {selector: {app: hapod}}\n"

// write makes a kustomization of service.yaml with the given patches.
func write(t *testing.T, patches string) string {
	t.Helper()
	dir := t.TempDir()
	k := "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [service.yaml]\n" + patches
	for name, data := range map[string]string{"kustomization.yaml": k, "service.yaml": service} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestLoadAppliesJSON6902Patch(t *testing.T) {
	dir := write(t, `patches:
  - target: {kind: Service, name: a}
    patch: |-
      - op: add
        path: /spec/selector/role
        value: active
`)
	objs, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	svc := objs[0].Obj.(*corev1.Service)
	if svc.Spec.Selector["role"] != "active" || svc.Spec.Selector["app"] != "hapod" {
		t.Errorf("selector %v, want app=hapod,role=active", svc.Spec.Selector)
	}
	if !strings.Contains(string(objs[0].Raw), `"role":"active"`) {
		t.Errorf("Raw %s is not the patched document", objs[0].Raw)
	}
}

// What Load cannot render must fail, not be dropped.
func TestLoadRefusesPatchesItCannotRender(t *testing.T) {
	for _, tc := range []struct{ name, patches, want string }{
		{"no match", "patches:\n  - target: {kind: Service, name: b}\n    patch: '[{op: remove, path: /spec/selector}]'\n", "matches no object"},
		{"strategic merge", "patches:\n  - target: {kind: Service}\n    patch: 'spec: {selector: {role: active}}'\n", "not a JSON 6902 patch"},
		{"patch file", "patches:\n  - path: p.yaml\n", "unknown field"},
		{"invalid result", "patches:\n  - target: {kind: Service}\n    patch: '[{op: add, path: /spec/selectr, value: {}}]'\n", "unknown field"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Load(write(t, tc.patches))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Load = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}
