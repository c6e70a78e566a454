//go:build integration

package integration

import (
	"bufio"
	"context"
	"encoding/json"
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

	"github.com/gohandoff/handoff/control"
	"golang.org/x/sys/unix"
)

// Break 1: a new generation that is not ready yet answers no control
// request. Every status asked while it starts comes from the serving
// generation, and a stop sent meanwhile stops the whole service: the
// upgrade ends, then both generations exit.
func TestHostileControlOnlyServingGeneration(t *testing.T) {
	s := startHello(t, helloV1, "--workers", "1", "--worker-mode", "process", "--ready", "delay:3s")
	pid := s.pid()
	from := s.log.len()
	reload := s.reloadAsync()
	// The new generation has started its worker, so it serves its control
	// actor too: it would accept from here on without the rule.
	s.log.waitFor(t, from, "msg=\"worker started\"", "generation=2")
	asked := 0
	for range 12 {
		st := s.statusJSON()
		asked++
		// Once the new generation is ready it serves, and answers; until
		// then only pid does.
		if st.PID != pid && st.State != "ready" {
			t.Errorf("status during the upgrade answered by pid %d (state %s, generation %d), want the serving pid %d",
				st.PID, st.State, st.Generation, pid)
		}
	}
	code, out, errOut := s.handoff("stop")
	if code != 0 {
		t.Fatalf("handoff stop during the upgrade: exit %d\n%s%s", code, out, errOut)
	}
	r := <-reload
	t.Logf("%d statuses during the upgrade; reload: exit %d %s%s; stop: %s", asked, r.code, r.out, r.errOut, out)
	if r.code != 0 {
		t.Errorf("reload with a stop during it: exit %d, want 0 (the upgrade ends, then both stop)\n%s", r.code, r.errOut)
	}
	newPID := 0
	if i := strings.Index(r.out, "→ "); i >= 0 {
		newPID, _ = strconv.Atoi(strings.Fields(r.out[i+len("→ "):])[0])
	}
	waitExit(t, pid)
	if newPID > 0 {
		waitExit(t, newPID)
	}
	if left := s.pids(); len(left) > 0 {
		t.Errorf("processes left after a stop sent during the upgrade: %v", left)
	}
}

// oneLine fails the test unless out is one line holding every part.
func oneLine(t *testing.T, what, out string, parts ...string) {
	t.Helper()
	out = strings.TrimRight(out, "\n")
	if strings.Contains(out, "\n") {
		t.Errorf("%s: more than one line:\n%s", what, out)
	}
	for _, p := range parts {
		if !strings.Contains(out, p) {
			t.Errorf("%s: %q does not say %q", what, out, p)
		}
	}
}

// Break 3 and the PID path of break 7: a PID file path that holds
// something else than pids, a folder, a named pipe or a device is refused
// before the port is bound, and left as it was.
func TestHostilePIDFileRefused(t *testing.T) {
	s := newService(t, helloV1, "hello")
	data := filepath.Join(s.dir, "data.conf")
	if err := os.WriteFile(data, []byte("key=value\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	folder := filepath.Join(s.dir, "folder.pid")
	if err := os.Mkdir(folder, 0o755); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(s.dir, "fifo.pid")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	cases := []struct{ name, path, says string }{
		{"data file", data, "holds something else than pids"},
		{"folder", folder, "is a folder"},
		{"named pipe", fifo, "named pipe"},
	}
	if os.Geteuid() == 0 {
		// A null device of the test's own, as /dev/null is.
		null := filepath.Join(s.dir, "null")
		if err := unix.Mknod(null, unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))); err != nil {
			t.Fatal(err)
		}
		cases = append(cases, struct{ name, path, says string }{"character device", null, "character device"})
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before, _ := os.Lstat(c.path)
			code, out := runOnce(t, s.dir, s.exe, "--listen", s.addr, "--pidfile", c.path)
			if code != 1 {
				t.Errorf("hello --pidfile %s: exit %d, want 1\n%s", c.name, code, out)
			}
			oneLine(t, "hello --pidfile "+c.name, out, c.path, c.says)
			if strings.Contains(out, "msg=starting") {
				t.Errorf("hello --pidfile %s started before it refused:\n%s", c.name, out)
			}
			after, err := os.Lstat(c.path)
			if err != nil || after.Mode() != before.Mode() || after.Size() != before.Size() {
				t.Errorf("%s changed: %v %v, was %v", c.path, after, err, before)
			}
			wantFree(t, s.addr)
		})
	}
	if b, _ := os.ReadFile(data); string(b) != "key=value\n" {
		t.Errorf("data.conf now holds %q", b)
	}
}

// Break 7: paths and ports that contradict themselves are usage errors
// (exit 2), one line naming the culprit, before anything starts.
func TestHostileUsageErrors(t *testing.T) {
	s := newService(t, helloV1, "hello")
	pidfile := filepath.Join(s.dir, "run", "x.pid")
	for _, c := range []struct {
		name string
		exe  string
		args []string
		says []string
	}{
		{"workers pid file is the pid file", s.exe, []string{"--listen", s.addr, "--pidfile", pidfile, "--worker-mode", "process", "--workers-pidfile", pidfile}, []string{"PID file", "workers PID file", pidfile}},
		{"workers pid file is the control socket", s.exe, []string{"--listen", s.addr, "--pidfile", pidfile, "--worker-mode", "process", "--workers-pidfile", filepath.Join(s.dir, "run", "x.sock")}, []string{"control socket", "workers PID file"}},
		{"a hundred million workers", s.exe, []string{"--listen", s.addr, "--pidfile", pidfile, "--workers", "100000000"}, []string{"100000000 workers"}},
		{"control socket path too long", s.exe, []string{"--listen", s.addr, "--pidfile", filepath.Join(s.dir, strings.Repeat("d", 120), "x.pid")}, []string{"control socket path", "longer than", "x.sock"}},
		{"handoff run port out of range", handoffBin, []string{"run", "--listen", "tcp://127.0.0.1:99999", "--pidfile", pidfile, "--", "true"}, []string{"--listen", "99999"}},
		{"handoff run workers pid file is the pid file", handoffBin, []string{"run", "--listen", "tcp://" + s.addr, "--pidfile", pidfile, "--workers-pidfile", pidfile, "--", "true"}, []string{"workers PID file", pidfile}},
	} {
		t.Run(c.name, func(t *testing.T) {
			code, out := runOnce(t, s.dir, c.exe, c.args...)
			if code != 2 {
				t.Errorf("exit %d, want 2\n%s", code, out)
			}
			oneLine(t, c.name, out, c.says...)
			if strings.Contains(out, "starting") {
				t.Errorf("started before it refused:\n%s", out)
			}
			if _, err := os.Stat(pidfile); err == nil {
				t.Errorf("%s written", pidfile)
			}
			wantFree(t, s.addr)
		})
	}
}

// Break 7: with no service at all, the CLI says so; a reload does not
// claim that an old generation goes on serving.
func TestHostileNoService(t *testing.T) {
	s := newService(t, helloV1, "hello")
	for _, cmd := range []string{"reload", "status", "stop"} {
		code, out, errOut := s.handoff(cmd)
		if code != 1 {
			t.Errorf("handoff %s without a service: exit %d, want 1\n%s%s", cmd, code, out, errOut)
		}
		oneLine(t, "handoff "+cmd, errOut, "no service runs", filepath.Base(control.SocketPath(s.pidfile)))
		if strings.Contains(errOut, "goes on serving") {
			t.Errorf("handoff %s without a service: %q", cmd, errOut)
		}
	}
}

// Break 7: a status of 18,000 workers is one long line; it is read whole.
func TestHostileStatusOfManyWorkers(t *testing.T) {
	s := startHello(t, helloV1, "--workers", "18000")
	code, out, errOut := s.handoff("status", "--json")
	if code != 0 {
		t.Fatalf("handoff status with 18,000 workers: exit %d: %s", code, errOut)
	}
	var st control.Status
	if err := json.Unmarshal([]byte(out), &st); err != nil || len(st.Workers) != 18000 {
		t.Fatalf("status: %d workers, %v; want 18000", len(st.Workers), err)
	}
	t.Logf("status of %d workers: %d bytes", len(st.Workers), len(out))

	// A client that asks for it and never reads holds the service's
	// write, bounded: the service still stops.
	c, err := net.Dial("unix", control.SocketPath(s.pidfile))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, `{"cmd":"status"}`+"\n")
	pid := s.pid()
	if code, out, errOut := s.handoff("stop", "--timeout", "30s"); code != 0 {
		t.Fatalf("handoff stop while a client does not read its status: exit %d %s%s", code, out, errOut)
	}
	if alive(pid) {
		t.Errorf("pid %d lives after handoff stop", pid)
	}
}

// Break 6: handoff stop waits for the process the service says it is, not
// for the one a bogus PID file names.
func TestHostileStopBogusPIDFile(t *testing.T) {
	s := startHello(t, helloV1, "--workers", "2")
	pid := s.pid()
	held := holdRequest(t, s) // holds the drain until it is finished
	bogus := deadPID(t)
	if err := os.WriteFile(s.pidfile, []byte(fmt.Sprintf("%d\n", bogus)), 0o644); err != nil {
		t.Fatal(err)
	}
	stopped := make(chan reloadResult, 1)
	go func() {
		code, out, errOut := s.handoff("stop")
		stopped <- reloadResult{code, out, errOut}
	}()
	s.log.waitFor(t, 0, "msg=draining", fmt.Sprintf("pid=%d", pid))
	select {
	case r := <-stopped:
		t.Fatalf("handoff stop returned while pid %d still drains: exit %d %s%s", pid, r.code, r.out, r.errOut)
	default:
	}
	held.wantFinished()
	r := <-stopped
	if r.code != 0 || !strings.Contains(r.out, fmt.Sprintf("stopped: pid %d ", pid)) {
		t.Errorf("handoff stop: exit %d %s%s, want stopped: pid %d", r.code, r.out, r.errOut, pid)
	}
	if alive(pid) {
		t.Errorf("handoff stop returned while pid %d lives", pid)
	}
}

// Break 5: a reload whose --timeout passes before the upgrade has an
// outcome says so with its own exit code, and no verdict; the upgrade
// goes on and succeeds.
func TestHostileReloadTimeoutInProgress(t *testing.T) {
	s := startHello(t, helloV1, "--workers", "2")
	pid := s.pid()
	g := installGate(t, s.exe, helloV2)
	// A timeout that passes before the request is even sent: no upgrade
	// was asked, and the CLI says so.
	code, out, errOut := s.handoff("reload", "--timeout", "1ns")
	if code != 1 {
		t.Errorf("handoff reload --timeout 1ns: exit %d, want 1\n%s%s", code, out, errOut)
	}
	oneLine(t, "reload --timeout 1ns", errOut, "not asked")
	if st := s.statusJSON(); st.UpgradeInProgress {
		t.Errorf("status after a reload that was not sent: upgrade in progress")
	}
	code, out, errOut = s.handoff("reload", "--timeout", "1s")
	if code != 3 {
		t.Errorf("handoff reload --timeout 1s during a slow upgrade: exit %d, want 3\n%s%s", code, out, errOut)
	}
	oneLine(t, "reload --timeout", errorLine(errOut, "handoff:"), "still in progress")
	if strings.Contains(errOut, "goes on serving") {
		t.Errorf("reload gave a verdict it does not know: %q", errOut)
	}
	if st := s.statusJSON(); st.PID != pid || !st.UpgradeInProgress {
		t.Errorf("status while the upgrade goes on: pid %d upgrade_in_progress=%v, want %d true", st.PID, st.UpgradeInProgress, pid)
	}
	g.open()
	s.log.waitFor(t, 0, "msg=\"upgrade done, draining\"")
	waitExit(t, pid)
	if st := s.statusJSON(); st.Generation != 2 || st.UpgradeInProgress {
		t.Errorf("status after the upgrade: generation %d upgrade_in_progress=%v, want 2 false", st.Generation, st.UpgradeInProgress)
	}
}

// Break 5 for make deploy: scripts/release.sh waits for the outcome of a
// reload still in progress at its --timeout, and keeps current on the
// release that serves then.
func TestHostileDeployReloadInProgress(t *testing.T) {
	dir := t.TempDir()
	deploy := filepath.Join(dir, "deploy")
	for _, r := range []struct{ name, hello string }{{"v1", helloV1}} {
		rel := filepath.Join(deploy, "releases", r.name)
		if err := os.MkdirAll(rel, 0o755); err != nil {
			t.Fatal(err)
		}
		install(t, r.hello, filepath.Join(rel, "hello"))
		install(t, handoffBin, filepath.Join(rel, "handoff"))
	}
	if err := os.Symlink("releases/v1", filepath.Join(deploy, "current")); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	install(t, helloV2, filepath.Join(dir, "bin", "hello"))
	install(t, handoffBin, filepath.Join(dir, "bin", "handoff"))
	s := &service{t: t, dir: dir, exe: filepath.Join(deploy, "current", "hello"), pidfile: filepath.Join(dir, "run", "hello.pid"), addr: freeAddr(t)}
	s.start("--workers", "1", "--worker-mode", "process", "--ready", "delay:2s")
	s.waitReady()
	script, err := filepath.Abs("../scripts/release.sh")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithDeadline(context.Background(), deadline(t))
	defer cancel()
	cmd := exec.CommandContext(ctx, "sh", script, "deploy", "v2")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "DEPLOYDIR="+deploy, "PIDFILE="+s.pidfile, "HANDOFF_TIMEOUT=500ms")
	outB, err := cmd.CombinedOutput()
	out := string(outB)
	if err != nil {
		t.Fatalf("release.sh deploy v2 with a reload still in progress at its timeout: %v\n%s", err, out)
	}
	if !strings.Contains(out, "still in progress") {
		t.Errorf("release.sh did not go through the in-progress path:\n%s", out)
	}
	if link, _ := os.Readlink(filepath.Join(deploy, "current")); link != "releases/v2" {
		t.Errorf("current -> %q after v2 took over, want releases/v2\n%s", link, out)
	}
	if code, body, err := s.get("/version"); err != nil || code != 200 || body != "v2" {
		t.Errorf("GET /version: %d %q %v, want v2", code, body, err)
	}
}

// keptConn is a keep-alive connection to s that has been answered once.
type keptConn struct {
	t    *testing.T
	conn net.Conn
	br   *bufio.Reader
}

func dialKept(t *testing.T, s *service) *keptConn {
	t.Helper()
	conn, err := net.Dial("tcp", s.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	k := &keptConn{t: t, conn: conn, br: bufio.NewReader(conn)}
	k.send("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
	if code, _, err := k.answer(); err != nil || code != 200 {
		t.Fatalf("first request: %d %v", code, err)
	}
	return k
}

func (k *keptConn) send(s string) {
	k.t.Helper()
	if _, err := io.WriteString(k.conn, s); err != nil {
		k.t.Fatalf("send %q: %v", s, err)
	}
}

func (k *keptConn) answer() (int, string, error) {
	k.conn.SetReadDeadline(deadline(k.t))
	resp, err := http.ReadResponse(k.br, nil)
	if err != nil {
		return 0, "", err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	conn := ""
	if resp.Close { // ReadResponse takes "Connection: close" out of the header
		conn = "close"
	}
	return resp.StatusCode, conn, nil
}

// Break 2: a request whose header arrives slowly on a kept-alive
// connection during a drain is answered, not taken for idle (net/http
// says Idle until the whole header is read); one that never finishes is
// cut at the drain timeout and counted. With --no-handover: a connection
// that moves to the new generation leaves this drain before its header
// (TestKeepAliveConnsCrossUpgrades); this is the drain of those that
// cannot move (TLS, process workers, handoff run).
func TestHostileDrainPartialHeader(t *testing.T) {
	forEachMode(t, func(t *testing.T, m workerMode) {
		s := startHello(t, helloV1, append(m.args, "--drain-timeout", "4s", "--no-handover")...)
		pid := s.pid()
		slow := dialKept(t, s)    // finishes its header after the idle grace
		stalled := dialKept(t, s) // never finishes it
		canary := dialKept(t, s)  // idle: closed at the idle grace
		s.reload()
		slow.send("GET /healthz HTTP/1.1\r\nHost: x\r\n")
		stalled.send("GET /healthz HTTP/1.1\r\nHost: x\r\n")
		// The canary's close says the idle grace is over and the drain has
		// swept the idle connections, which were idle as long.
		canary.conn.SetReadDeadline(deadline(t))
		if n, err := canary.br.Read(make([]byte, 1)); err == nil {
			t.Fatalf("idle connection got %d bytes during the drain, want EOF", n)
		}
		slow.send("\r\n")
		code, conn, err := slow.answer()
		if err != nil || code != 200 || conn != "close" {
			t.Errorf("slow header during the drain: %d Connection=%q %v, want 200 close", code, conn, err)
		}
		// The generation's own drain line comes after its workers' (in
		// process mode they cut, and count, their connections).
		s.log.waitFor(t, 0, "msg=drained", fmt.Sprintf("pid=%d", pid))
		cut, lines := 0, ""
		for i := range s.log.len() {
			if l := s.log.line(i); strings.Contains(l, "msg=drained") && strings.Contains(l, "generation=1") {
				n, _ := strconv.Atoi(logValue(l, "cut"))
				cut += n
				lines += l + "\n"
			}
		}
		if cut != 1 {
			t.Errorf("drain of generation 1: cut=%d in all, want 1 (the stalled header)\n%s", cut, lines)
		}
	})
}

// Break 4: a new build that fails takes its process tree with it: a child
// it left running (and holding the inherited sockets) is killed, so that
// after a stop the port is free.
func TestHostileFailedBuildTakesItsTree(t *testing.T) {
	forEachMode(t, testFailedBuildTakesItsTree)
}

func testFailedBuildTakesItsTree(t *testing.T, m workerMode) {
	for _, c := range []struct{ name, body string }{
		{"exits 0 leaving a child", "(sleep 300 & echo $! > %q)\nexit 0\n"},
		{"hangs with a child", "sleep 300 &\necho $! > %q\nexec sleep 300\n"},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := startHello(t, helloV1, append(m.args, "--upgrade-timeout", "2s")...)
			pid := s.pid()
			var workers []int
			if m.name == "processes" {
				workers = s.workerPIDs()
			}
			childFile := filepath.Join(t.TempDir(), "child.pid")
			installBytes(t, []byte("#!/bin/sh\n"+fmt.Sprintf(c.body, childFile)), s.exe)
			code, out, errOut := s.handoff("reload")
			if code != 1 {
				t.Fatalf("reload to a failing build: exit %d\n%s%s", code, out, errOut)
			}
			b, err := os.ReadFile(childFile)
			if err != nil {
				t.Fatal(err)
			}
			child, _ := strconv.Atoi(strings.TrimSpace(string(b)))
			t.Cleanup(func() { syscall.Kill(child, syscall.SIGKILL) })
			if alive(child) {
				t.Errorf("the failed build's child pid %d lives on after the reload failed", child)
			}
			s.wantUnchanged(pid, fmt.Sprintf("%d\n", pid))
			for _, w := range workers {
				if !alive(w) {
					t.Errorf("worker pid %d of the serving generation died with the failed build", w)
				}
			}
			if code, out, errOut := s.handoff("stop"); code != 0 {
				t.Fatalf("handoff stop: exit %d %s%s", code, out, errOut)
			}
			wantFree(t, s.addr)
		})
	}
}

// Sweep: a first generation started with SIGINT ignored (as a shell
// starts a background job) catches it, and its worker processes get it at
// its default, not ignored: a worker must stop on the signals its master
// passes on.
func TestHostileWorkersDoNotInheritIgnoredSignals(t *testing.T) {
	s := newService(t, helloV1, "hello")
	s.wrap = []string{"sh", "-c", `trap '' INT; exec "$0" "$@"`}
	s.start("--workers", "1", "--worker-mode", "process")
	s.waitReady()
	workers := s.workerPIDs()
	if len(workers) != 1 {
		t.Fatalf("workers: %v", workers)
	}
	for _, pid := range []int{s.pid(), workers[0]} {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "SigIgn:"); ok {
				mask, _ := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
				if mask&(1<<(int(syscall.SIGINT)-1)) != 0 {
					t.Errorf("pid %d ignores SIGINT (SigIgn %s)", pid, strings.TrimSpace(v))
				}
			}
		}
	}
}
