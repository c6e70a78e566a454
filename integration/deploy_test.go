//go:build integration

package integration

import (
	"bytes"
	"context"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gohandoff/handoff/internal/load"
)

// copyProject copies what make needs to build and deploy (Makefile,
// scripts, go.mod and the packages, tests left out) into a temp dir.
func copyProject(t *testing.T) string {
	t.Helper()
	dst := t.TempDir()
	for _, name := range []string{"Makefile", "go.mod", "go.sum", "scripts", "cmd", "examples", "internal", "upgrader", "control", "pidfile", "servicecli"} {
		src := filepath.Join("..", name)
		err := filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel("..", path)
			if d.IsDir() {
				return os.MkdirAll(filepath.Join(dst, rel), 0o755)
			}
			if strings.HasSuffix(path, "_test.go") {
				return nil
			}
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			fi, _ := d.Info()
			return os.WriteFile(filepath.Join(dst, rel), b, fi.Mode().Perm())
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return dst
}

// project is a temp copy of the project with `make run` serving from it.
type project struct {
	t    *testing.T
	dir  string
	addr string
	log  *logWatch
}

// make runs make with args in the project and returns its exit code and
// output.
func (p *project) make(args ...string) (int, string) {
	p.t.Helper()
	ctx, cancel := context.WithDeadline(context.Background(), deadline(p.t))
	defer cancel()
	cmd := exec.CommandContext(ctx, "make", append([]string{"--no-print-directory"}, args...)...)
	cmd.Dir = p.dir
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	err := cmd.Run()
	p.t.Logf("make %s: %d ms", strings.Join(args, " "), time.Since(start).Milliseconds())
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode(), out.String()
		}
		p.t.Fatalf("make %v: %v", args, err)
	}
	return 0, out.String()
}

func (p *project) current() string {
	p.t.Helper()
	l, err := os.Readlink(filepath.Join(p.dir, "deploy", "current"))
	if err != nil {
		p.t.Fatal(err)
	}
	return strings.TrimPrefix(l, "releases/")
}

func (p *project) releases() []string {
	p.t.Helper()
	ents, err := os.ReadDir(filepath.Join(p.dir, "deploy", "releases"))
	if err != nil {
		p.t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

// check asserts that current points at want, the service answers want on
// /version, and make releases marks want as serving.
func (p *project) check(step, want string) {
	p.t.Helper()
	if got := p.current(); got != want {
		p.t.Errorf("%s: current -> %s, want %s", step, got, want)
	}
	s := &service{t: p.t, addr: p.addr}
	if code, body, err := s.get("/version"); err != nil || code != 200 || body != want {
		p.t.Errorf("%s: GET /version = %d %q %v, want 200 %s", step, code, body, err, want)
	}
	_, out := p.make("releases")
	if !strings.Contains(out, "* "+want+" (serving)\n") || strings.Count(out, "*") != 1 {
		p.t.Errorf("%s: make releases does not mark %s alone as serving:\n%s", step, want, out)
	}
}

// TestDeployRollback runs the real make targets: make run serves release
// r1 from deploy/current; make deploy adds three releases, of which the
// last KEEP=3 are kept; make rollback walks back twice, then refuses; a
// deploy whose binary exits 1 fails, is removed, and leaves current on the
// serving release; deploying the serving version is refused. A load runs throughout without a
// failed request.
func TestDeployRollback(t *testing.T) {
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("make is not installed")
	}
	p := &project{t: t, dir: copyProject(t), addr: freeAddr(t)}
	run := exec.Command("make", "--no-print-directory", "run", "VERSION=r1", "LISTEN="+p.addr)
	run.Dir = p.dir
	run.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	pr, pw := io.Pipe()
	run.Stdout, run.Stderr = pw, pw
	p.log = newLogWatch(pr)
	if err := run.Start(); err != nil {
		t.Fatal(err)
	}
	waited := make(chan struct{})
	go func() { run.Wait(); close(waited) }()
	t.Cleanup(func() {
		syscall.Kill(-run.Process.Pid, syscall.SIGKILL) // make, the script and every generation
		<-waited
		pw.Close()
		if t.Failed() {
			t.Logf("make run output:\n%s", p.log)
		}
	})
	p.log.waitFor(t, 0, "msg=ready", "generation=1")
	p.check("make run", "r1")

	// A light load: the deploys build, and the machine has 2 cores.
	var completed atomic.Int64
	done := make(chan struct{})
	results := make(chan load.Result, 1)
	go func() {
		results <- load.Run(context.Background(), load.Config{
			Addr: p.addr, Concurrency: 8, Requests: 2000, Until: done,
			MaxDuration: time.Until(deadline(t)), PostEvery: 2, Completed: &completed,
		})
	}()
	waitCount(t, &completed, 200)

	// KEEP=3 keeps the test short; the Makefile's default is 5.
	for _, v := range []string{"r2", "r3", "r4"} {
		if code, out := p.make("deploy", "VERSION="+v, "KEEP=3"); code != 0 {
			t.Fatalf("make deploy VERSION=%s: exit %d\n%s", v, code, out)
		}
		p.check("deploy "+v, v)
	}
	if got := strings.Join(p.releases(), " "); got != "r2 r3 r4" {
		t.Errorf("releases kept: %s, want the last 3: r2 r3 r4", got)
	}

	for _, v := range []string{"r3", "r2"} {
		if code, out := p.make("rollback"); code != 0 {
			t.Fatalf("make rollback to %s: exit %d\n%s", v, code, out)
		}
		p.check("rollback to "+v, v)
	}
	if code, out := p.make("rollback"); code == 0 || !strings.Contains(out, "no release older than r2") {
		t.Errorf("make rollback past the oldest release: exit %d, want a refusal:\n%s", code, out)
	}
	p.check("rollback past the oldest", "r2")

	// A build whose hello exits 1 at start: make's GO wraps the real go.
	realGo, err := exec.LookPath("go")
	if err != nil {
		t.Fatal(err)
	}
	fakeGo := filepath.Join(t.TempDir(), "go")
	installBytes(t, []byte("#!/bin/sh\n\""+realGo+"\" \"$@\" || exit\nprintf '#!/bin/sh\\necho bad build >&2\\nexit 1\\n' > bin/hello\n"), fakeGo)
	code, out := p.make("deploy", "VERSION=bad", "GO="+fakeGo)
	if code == 0 {
		t.Fatalf("make deploy of a binary that exits 1 succeeded:\n%s", out)
	}
	if !strings.Contains(out, "exit status 1") || !strings.Contains(out, "current points back at r2") {
		t.Errorf("failed deploy output does not name the exit status and the serving release:\n%s", out)
	}
	p.check("failed deploy", "r2")
	for _, r := range p.releases() {
		if r == "bad" {
			t.Errorf("the failed release is still in deploy/releases")
		}
	}

	if code, out := p.make("deploy", "VERSION=r2"); code == 0 || !strings.Contains(out, "r2 is the one serving") {
		t.Errorf("make deploy of the serving version: exit %d, want a refusal:\n%s", code, out)
	}
	p.check("deploy of the serving version", "r2")

	waitCount(t, &completed, completed.Load()+200)
	close(done)
	checkLoad(t, <-results)
}
