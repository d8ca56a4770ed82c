package v1alpha1_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// controllerGen is the generator the Makefile's `make generate` runs.
const controllerGen = "sigs.k8s.io/controller-tools/cmd/controller-gen@v0.23.0"

// TestGeneratedUpToDate runs controller-gen into a scratch directory and
// fails if the checked-in CRD or deepcopy differ from what the markers make
// now: a field added to types.go without `make generate` would otherwise
// reach users as a CRD that prunes it.
func TestGeneratedUpToDate(t *testing.T) {
	if testing.Short() {
		t.Skip("runs controller-gen (go run from the module proxy)")
	}
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	gen := func(args ...string) {
		t.Helper()
		cmd := exec.CommandContext(t.Context(), "go", append([]string{"run", controllerGen}, args...)...)
		cmd.Dir = root
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("controller-gen %v: %v\n%s", args, err, b)
		}
	}
	gen("crd", "paths=./api/...", "output:crd:artifacts:config="+out)
	same(t, filepath.Join(root, "deploy/crd/hapod.io_hagroups.yaml"), filepath.Join(out, "hapod.io_hagroups.yaml"))

	// The object generator writes next to the types; generate into a copy
	// of the package so the tree is not touched.
	pkg := filepath.Join(out, "api", "v1alpha1")
	if err := os.MkdirAll(pkg, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"doc.go", "groupversion.go", "types.go"} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(pkg, f), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	mod := "module scratch\n\ngo 1.26.0\n\nrequire k8s.io/apimachinery v0.37.2\n"
	if err := os.WriteFile(filepath.Join(out, "go.mod"), []byte(mod), 0o644); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(root, "go.sum"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(out, "go.sum"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(t.Context(), "go", "run", controllerGen, "object", "paths=./api/...")
	cmd.Dir = out
	cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("controller-gen object: %v\n%s", err, b)
	}
	same(t, "zz_generated.deepcopy.go", filepath.Join(pkg, "zz_generated.deepcopy.go"))
}

func same(t *testing.T, checkedIn, generated string) {
	t.Helper()
	want, err := os.ReadFile(generated)
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(checkedIn)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s is out of date with api/v1alpha1's markers: run make generate", checkedIn)
	}
}
