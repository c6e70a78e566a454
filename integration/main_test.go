//go:build integration

// Package integration tests handoff with real binaries, real sockets on
// 127.0.0.1, real signals and real load. TestMain builds the binaries once;
// HANDOFF_KEEP_TMP=1 keeps their folder.
package integration

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gohandoff/handoff/internal/linelog"
	"github.com/gohandoff/handoff/internal/proc"
	"github.com/gohandoff/handoff/pidfile"
)

// Binaries built by TestMain.
var (
	binDir     string
	helloV1    string // examples/hello stamped v1
	helloV2    string // examples/hello stamped v2
	handoffBin string
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "handoff-integration-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	helloV1 = filepath.Join(dir, "hello-v1")
	helloV2 = filepath.Join(dir, "hello-v2")
	handoffBin = filepath.Join(dir, "handoff")
	builds := []struct{ out, pkg, version string }{
		{helloV1, "../examples/hello", "v1"},
		{helloV2, "../examples/hello", "v2"},
		{handoffBin, "../cmd/handoff", "test"},
	}
	for _, b := range builds {
		cmd := exec.Command("go", "build", "-ldflags", "-X main.version="+b.version, "-o", b.out, b.pkg)
		if out, err := cmd.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "build %s: %v\n%s", b.pkg, err, out)
			os.Exit(1)
		}
	}
	code := m.Run()
	if os.Getenv("HANDOFF_KEEP_TMP") == "" {
		os.RemoveAll(dir)
	} else {
		fmt.Fprintln(os.Stderr, "binaries kept in", dir)
	}
	os.Exit(code)
}

// deadline returns the test's deadline less a margin, or a minute away.
// A wait is bounded by 2 minutes too, so that a hang fails its test
// instead of eating the whole suite's time.
func deadline(t *testing.T) time.Time {
	end := time.Now().Add(2 * time.Minute)
	if d, ok := t.Deadline(); ok && d.Add(-10*time.Second).Before(end) {
		return d.Add(-10 * time.Second)
	}
	return end
}

// install copies src to dst atomically (temporary file, then rename), as
// a deploy replaces a binary that may be running.
func install(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	installBytes(t, b, dst)
}

// installBytes writes b to dst atomically.
func installBytes(t *testing.T, b []byte, dst string) {
	t.Helper()
	tmp := dst + ".tmp"
	if err := os.WriteFile(tmp, b, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, dst); err != nil {
		t.Fatal(err)
	}
}

// logWatch collects a service's output, shared by all its generations,
// and lets a test wait for a line.
type logWatch struct{ *linelog.Log }

func newLogWatch(r io.Reader) *logWatch { return &logWatch{linelog.New(r)} }

// fail makes every wait give up with reason, e.g. when the process that
// was to log the line has exited.
func (lw *logWatch) fail(reason string) { lw.End(reason) }

func (lw *logWatch) len() int { return lw.Len() }

// waitFor waits until a line holding every one of parts has been logged
// after the first `from` lines, and returns its index.
func (lw *logWatch) waitFor(t *testing.T, from int, parts ...string) int {
	t.Helper()
	timer := time.NewTimer(time.Until(deadline(t)))
	defer timer.Stop()
	for {
		i, change, ended := lw.Find(from, linelog.All(parts...))
		if i >= 0 {
			return i
		}
		if ended != "" {
			t.Fatalf("no log line with %q: %s; log:\n%s", parts, ended, lw)
		}
		select {
		case <-change:
		case <-timer.C:
			t.Fatalf("no log line with %q; log:\n%s", parts, lw)
		}
	}
}

// service is a hello service started from a path of its own.
type service struct {
	t       *testing.T
	dir     string
	exe     string
	pidfile string
	addr    string
	log     *logWatch
	cmd     *exec.Cmd
	env     []string      // environment of the first process; nil: the test's
	wrap    []string      // command that runs the first process, if any
	exited  chan struct{} // closed when the first process has exited
	waitErr error         // its exit status, once exited is closed
	// adjust, if set, is called on the command before it starts.
	adjust func(*service, *exec.Cmd)
}

// freeAddr returns a free 127.0.0.1 port.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// startHello installs bin as dir/hello, starts it and waits until ready.
func startHello(t *testing.T, bin string, args ...string) *service {
	t.Helper()
	return startHelloWith(t, bin, nil, args...)
}

// startHelloWith is startHello with adjust, if not nil, called on the
// command before it starts: to set its environment, pass files, wrap it.
func startHelloWith(t *testing.T, bin string, adjust func(*service, *exec.Cmd), args ...string) *service {
	t.Helper()
	s := newService(t, bin, "hello")
	s.adjust = adjust
	s.start(args...)
	s.waitReady()
	return s
}

// newService installs bin as dir/name, with a PID file path and a free
// address of its own; start runs it.
func newService(t *testing.T, bin, name string) *service {
	t.Helper()
	dir := t.TempDir()
	s := &service{t: t, dir: dir, exe: filepath.Join(dir, name), pidfile: filepath.Join(dir, "run", name+".pid"), addr: freeAddr(t)}
	install(t, bin, s.exe)
	return s
}

// start runs the service's first process with --listen, --pidfile and
// args, its output collected in s.log. s.env, if set, is its environment
// and s.wrap a command that runs it (such as setpriv). Cleanup kills every
// process of the service.
func (s *service) start(args ...string) {
	s.t.Helper()
	s.startArgs(append([]string{"--listen", s.addr, "--pidfile", s.pidfile}, args...)...)
}

// startArgs is start with the whole command line given by the caller.
func (s *service) startArgs(args ...string) {
	t := s.t
	t.Helper()
	args = append(append(append([]string(nil), s.wrap...), s.exe), args...)
	s.cmd = exec.Command(args[0], args[1:]...)
	s.cmd.Dir = s.dir
	s.cmd.Env = s.env
	if s.adjust != nil {
		s.adjust(s, s.cmd)
	}
	// An os.Pipe, not an io.Writer, so that Wait returns when the first
	// process exits although later generations still hold the pipe.
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	s.cmd.Stdout, s.cmd.Stderr = pw, pw
	err = s.cmd.Start()
	pw.Close()
	if err != nil {
		pr.Close()
		t.Fatal(err)
	}
	s.log = newLogWatch(pr)
	s.exited = make(chan struct{})
	go func() { s.waitErr = s.cmd.Wait(); close(s.exited) }()
	t.Cleanup(func() {
		s.killAll()
		<-s.exited
		if t.Failed() {
			t.Logf("service log:\n%s", s.log)
		}
	})
}

// waitReady waits until the first generation is ready, and fails at once
// if its process exits before.
func (s *service) waitReady() {
	s.t.Helper()
	ready := make(chan struct{})
	defer close(ready)
	go func() {
		select {
		case <-s.exited:
			s.log.fail(fmt.Sprintf("%s exited before it was ready: %v", filepath.Base(s.exe), s.waitErr))
		case <-ready:
		}
	}()
	s.log.waitFor(s.t, 0, "msg=ready", "generation=1")
}

// pids lists the live (not zombie) processes started from s.exe, a
// script installed there included.
func (s *service) pids() []int {
	return processesOf(s.exe)
}

func processesOf(exe string) []int {
	var out []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		// exe itself, or a script at exe run by its interpreter.
		argv := bytes.SplitN(cmdline, []byte{0}, 3)
		if string(argv[0]) != exe && (len(argv) < 2 || string(argv[1]) != exe) {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		if i := bytes.LastIndexByte(stat, ')'); i > 0 && len(stat) > i+2 && stat[i+2] == 'Z' {
			continue
		}
		out = append(out, pid)
	}
	return out
}

func (s *service) killAll() {
	for _, pid := range s.pids() {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	// Worker processes of another program (handoff run) die with their
	// master; these are killed in case they did not.
	workers, _ := pidfile.Read(strings.TrimSuffix(s.pidfile, ".pid") + ".workers.pid")
	for _, pid := range workers {
		if alive(pid) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// alive reports whether pid is a live process, not a zombie.
func alive(pid int) bool { return proc.Alive(pid) }

// pid reads the PID file.
func (s *service) pid() int {
	s.t.Helper()
	pids, err := pidfile.Read(s.pidfile)
	if err != nil || len(pids) != 1 {
		s.t.Fatalf("pid file %s: %v %v", s.pidfile, pids, err)
	}
	return pids[0]
}

// get fetches path on a connection of its own.
func (s *service) get(path string) (int, string, error) {
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 30 * time.Second}
	resp, err := c.Get("http://" + s.addr + path)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(b)), err
}

// handoff runs the CLI against s and returns its exit code and output.
func (s *service) handoff(args ...string) (int, string, string) {
	s.t.Helper()
	args = append(args, "--pidfile", s.pidfile)
	ctx, cancel := context.WithDeadline(context.Background(), deadline(s.t))
	defer cancel()
	cmd := exec.CommandContext(ctx, handoffBin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			s.t.Fatalf("handoff %v: %v", args, err)
		}
		code = ee.ExitCode()
	}
	return code, stdout.String(), stderr.String()
}
