//go:build integration

package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestExamplesBuildOutsideTheModule copies each example's Go files into a
// module of its own outside this repository, as a user would, with only a
// replace directive pointing at this module, builds it and runs it: an
// example that imported one of handoff's internal packages would not
// build there.
func TestExamplesBuildOutsideTheModule(t *testing.T) {
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	sum, err := os.ReadFile(filepath.Join(root, "go.sum"))
	if err != nil {
		t.Fatal(err)
	}
	for _, ex := range []string{"hello", "echo", "udp"} {
		t.Run(ex, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			gomod := "module example.com/" + ex + "\n\ngo 1.26\n\nrequire github.com/gohandoff/handoff v0.0.0\n\nreplace github.com/gohandoff/handoff => " + root + "\n"
			files := map[string][]byte{"go.mod": []byte(gomod), "go.sum": sum}
			srcs, _ := filepath.Glob(filepath.Join(root, "examples", ex, "*.go"))
			for _, p := range srcs {
				b, err := os.ReadFile(p)
				if err != nil {
					t.Fatal(err)
				}
				files[filepath.Base(p)] = b
			}
			if files["main.go"] == nil {
				t.Fatalf("examples/%s has no main.go", ex)
			}
			for name, b := range files {
				if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			bin := filepath.Join(dir, ex)
			build := exec.Command("go", "build", "-o", bin, ".")
			build.Dir = dir
			// Offline: every module it needs is this one's, in the cache.
			build.Env = append(os.Environ(), "GOFLAGS=-mod=mod", "GOPROXY=off", "GOWORK=off")
			if out, err := build.CombinedOutput(); err != nil {
				t.Fatalf("go build of examples/%s copied out of the module: %v\n%s", ex, err, out)
			}
			out, err := exec.Command(bin, "-version").CombinedOutput()
			if err != nil || strings.TrimSpace(string(out)) == "" {
				t.Fatalf("%s -version: %v, output %q", ex, err, out)
			}
		})
	}
}
