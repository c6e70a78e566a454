//go:build integration

package integration

// The security promises of docs/faults.md.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// nobody is the uid and gid of the "other user" of these tests.
const nobody = 65534

// runAs runs exe with args as uid nobody, with the given capabilities
// raised, and returns its exit code and output.
func runAs(t *testing.T, caps []uintptr, exe string, args ...string) (int, string) {
	t.Helper()
	cmd := exec.Command(exe, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Credential:  &syscall.Credential{Uid: nobody, Gid: nobody},
		AmbientCaps: caps,
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode(), out.String()
		} else if err != nil {
			t.Fatal(err)
		}
		return 0, out.String()
	case <-time.After(time.Until(deadline(t))):
		cmd.Process.Kill()
		t.Fatalf("%s %q as uid %d did not end", exe, args, nobody)
	}
	return 0, ""
}

// The control socket is mode 0600, in every generation, and answers only
// the owning uid: another uid cannot connect, and one that can (with
// CAP_DAC_OVERRIDE) is refused after a check of its credentials.
func TestSecurityControlSocketOwnerOnly(t *testing.T) {
	s := startHello(t, helloV1)
	sock := strings.TrimSuffix(s.pidfile, ".pid") + ".sock"
	wantMode := func() {
		t.Helper()
		fi, err := os.Lstat(sock)
		if err != nil || fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
			t.Errorf("control socket %s: %v %v, want a socket of mode 0600", sock, fi.Mode(), err)
		}
	}
	wantMode()
	install(t, helloV2, s.exe)
	s.reload()
	wantMode()

	if os.Geteuid() != 0 {
		t.Skip("the peer credential check needs root to run a client as another uid")
	}
	// Let the other uid reach the socket's folder and run the CLI, so that
	// only the socket itself stands in its way.
	for d := filepath.Dir(sock); d != filepath.Dir(filepath.Dir(s.dir)); d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	cli := filepath.Join(s.dir, "handoff")
	install(t, handoffBin, cli)

	code, out := runAs(t, nil, cli, "reload", "--pidfile", s.pidfile)
	t.Logf("uid %d: exit %d: %s", nobody, code, out)
	if code == 0 || !strings.Contains(out, "permission denied") {
		t.Errorf("uid %d without privileges: exit %d %q, want permission denied", nobody, code, out)
	}
	from := s.log.len()
	code, out = runAs(t, []uintptr{unix.CAP_DAC_OVERRIDE}, cli, "reload", "--pidfile", s.pidfile)
	t.Logf("uid %d with CAP_DAC_OVERRIDE: exit %d: %s", nobody, code, out)
	if want := fmt.Sprintf("refused: peer uid %d", nobody); code == 0 || !strings.Contains(out, want) {
		t.Errorf("uid %d with CAP_DAC_OVERRIDE: exit %d %q, want %q", nobody, code, out, want)
	}
	s.log.waitFor(t, from, "control request refused", fmt.Sprintf("peer uid %d", nobody))
	if strings.Contains(s.log.String(), "generation=3") {
		t.Errorf("a refused reload upgraded the service:\n%s", s.log)
	}
}

// The PID file is replaced atomically, never written through a symlink
// planted at its path, at start and at an upgrade.
func TestSecurityPIDFileSymlinkReplaced(t *testing.T) {
	forEachMode(t, testPIDFileSymlinkReplaced)
}

func testPIDFileSymlinkReplaced(t *testing.T, m workerMode) {
	s := newService(t, helloV1, "hello")
	process := slices.Contains(m.args, "process")
	victim := filepath.Join(t.TempDir(), "victim")
	if err := os.WriteFile(victim, []byte("precious\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// The PID file and, with worker processes, the workers PID file.
	files := []string{s.pidfile}
	if process {
		files = append(files, s.workersPIDFile())
	}
	plant := func() {
		t.Helper()
		for _, f := range files {
			os.Remove(f)
			if err := os.Symlink(victim, f); err != nil {
				t.Fatal(err)
			}
		}
	}
	check := func(gen int) {
		t.Helper()
		for _, f := range files {
			fi, err := os.Lstat(f)
			if err != nil || !fi.Mode().IsRegular() {
				t.Errorf("generation %d: %s: %v %v, want a regular file", gen, f, fi.Mode(), err)
			}
		}
		if got := s.pidFileBytes(); got != fmt.Sprintf("%d\n", s.pid()) {
			t.Errorf("generation %d: pid file holds %q", gen, got)
		}
		if process {
			s.checkWorkers(2)
		}
		if b, _ := os.ReadFile(victim); string(b) != "precious\n" {
			t.Errorf("generation %d: the symlink's target was written: %q", gen, b)
		}
		tmps, _ := filepath.Glob(filepath.Join(filepath.Dir(s.pidfile), ".hello.*tmp*"))
		if len(tmps) > 0 {
			t.Errorf("generation %d: temporary files left: %v", gen, tmps)
		}
	}
	if err := os.MkdirAll(filepath.Dir(s.pidfile), 0o755); err != nil {
		t.Fatal(err)
	}
	plant()
	s.start(m.args...)
	s.log.waitFor(t, 0, "msg=ready", "generation=1")
	check(1)
	plant()
	install(t, helloV2, s.exe)
	s.reload()
	if process {
		// The old generation's last workers have left the file.
		s.log.waitFor(t, 0, "previous generation exited", "generation=2")
	}
	check(2)
}

// closeOnExecAll marks every descriptor of the test process but 0, 1 and 2
// close-on-exec, so that the service starts with none of those the test
// inherited from whatever started it.
func closeOnExecAll(t *testing.T) {
	t.Helper()
	names, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		if fd, err := strconv.Atoi(n.Name()); err == nil && fd > 2 {
			unix.CloseOnExec(fd)
		}
	}
}

// inherited is what testsvc's GET /spawn answers.
type inherited struct {
	PID int      `json:"pid"`
	Gen int      `json:"generation"`
	FDs []int    `json:"fds"`
	Env []string `json:"env"`
	Err string   `json:"error"`
}

// A process the application spawns inherits no descriptor but 0, 1 and 2
// and no internal environment variable, in the first generation and in a
// new one while the previous generation still drains.
func TestSecurityNothingLeaksToSpawnedProcesses(t *testing.T) {
	testsvc := buildBin(t, "integration/testdata/testsvc", "v1")
	closeOnExecAll(t)
	forEachMode(t, func(t *testing.T, m workerMode) { testNothingLeaks(t, testsvc, m) })
}

// internalEnv reports whether kv is a variable of handoff's, tableflip's
// or of the socket-activation and notify protocols, which an application's
// own child must not see.
func internalEnv(kv string) bool {
	for _, p := range []string{"HANDOFF_", "TABLEFLIP_", "LISTEN_", "NOTIFY_SOCKET="} {
		if strings.HasPrefix(kv, p) {
			return true
		}
	}
	return false
}

func testNothingLeaks(t *testing.T, testsvc string, m workerMode) {
	s := newService(t, testsvc, "svc")
	for _, kv := range os.Environ() {
		if !internalEnv(kv) {
			s.env = append(s.env, kv)
		}
	}
	s.start(m.args...)
	s.log.waitFor(t, 0, "msg=ready", "generation=1")
	// spawn asks GET /spawn until generation gen answers (a worker process
	// of the previous generation may still take a connection for a moment
	// after the upgrade) and checks what every spawned process inherited.
	spawn := func(gen int) {
		t.Helper()
		c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 30 * time.Second}
		for {
			resp, err := c.Get("http://" + s.addr + "/spawn")
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			var in inherited
			if err := json.Unmarshal(b, &in); err != nil || in.Err != "" {
				t.Fatalf("GET /spawn: %q %v", b, err)
			}
			t.Logf("generation %d: spawned process has fds %v", in.Gen, in.FDs)
			if !slices.Equal(in.FDs, []int{0, 1, 2}) {
				t.Errorf("generation %d: spawned process has fds %v, want [0 1 2]", in.Gen, in.FDs)
			}
			for _, kv := range in.Env {
				if internalEnv(kv) {
					t.Errorf("generation %d: spawned process inherited %s", in.Gen, kv)
				}
			}
			if in.Gen == gen {
				return
			}
			if in.Gen > gen || time.Now().After(deadline(t)) {
				t.Fatalf("GET /spawn answered by generation %d, want %d", in.Gen, gen)
			}
		}
	}
	spawn(1)
	held := holdRequest(t, s) // generation 1 drains while 2 spawns
	install(t, testsvc, s.exe)
	s.reload()
	spawn(2)
	held.wantFinished()
}
