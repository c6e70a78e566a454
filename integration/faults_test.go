//go:build integration

package integration

// The fault matrix of docs/faults.md: each test names its row.

import (
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// reloadFails runs handoff reload, which must fail, and returns the line
// saying why and the whole of its stderr.
func (s *service) reloadFails() (line, errOut string) {
	s.t.Helper()
	code, out, errOut := s.handoff("reload")
	if code == 0 {
		s.t.Fatalf("handoff reload succeeded, want a failure:\n%s%s", out, errOut)
	}
	line = errorLine(errOut, "handoff: reload failed, the old generation goes on serving: ")
	if line == "" {
		s.t.Fatalf("handoff reload: exit %d without the one-line reason:\n%s", code, errOut)
	}
	s.t.Logf("handoff reload: exit %d\n%s", code, errOut)
	return line, errOut
}

func wantContains(t *testing.T, what, got string, wants ...string) {
	t.Helper()
	for _, w := range wants {
		if !strings.Contains(got, w) {
			t.Errorf("%s does not contain %q:\n%s", what, w, got)
		}
	}
}

// Row 1: the new binary exits non-zero before ready.
func TestFaultNewBinaryExitsBeforeReady(t *testing.T) {
	forEachMode(t, func(t *testing.T, m workerMode) {
		s := startHello(t, helloV1, m.args...)
		pid, pidFile := s.pid(), s.pidFileBytes()
		busy, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer busy.Close()
		l := runLoad(t, s, true)
		cases := []struct {
			name, script string
			line, stderr []string
		}{{
			name:   "script exits 3 at once",
			script: "#!/bin/sh\necho 'loading config' >&2\necho 'fatal: config /etc/x.conf missing' >&2\nexit 3\n",
			line:   []string{"new generation pid", "exited with exit status 3 before it was ready"},
			stderr: []string{"last lines of the new generation's stderr:", "  | loading config\n  | fatal: config /etc/x.conf missing"},
		}, {
			// A real server that fails after it took over the sockets:
			// it must leave the control socket to the old generation.
			name:   "server fails after taking the sockets",
			script: fmt.Sprintf("#!/bin/bash\nexec -a \"$0\" %q \"$@\" --listen %s\n", helloV2, busy.Addr()),
			line:   []string{"exited with exit status 1 before it was ready"},
			stderr: []string{"new generation starting", "address already in use", busy.Addr().String()},
		}}
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				installBytes(t, []byte(c.script), s.exe)
				line, errOut := s.reloadFails()
				wantContains(t, "reason", line, c.line...)
				wantContains(t, "handoff reload's stderr", errOut, c.stderr...)
				l.advance(1000)
				s.wantUnchanged(pid, pidFile)
			})
		}
		l.finish()
		s.wantGoodUpgrade()
	})
}

// wantGoodUpgrade installs a good binary and upgrades to it: the failures
// before left the control socket and the upgrade machinery working.
func (s *service) wantGoodUpgrade() {
	s.t.Helper()
	install(s.t, helloV2, s.exe)
	s.reload()
}

// Row 2: the new binary hangs before ready. Either it hangs before it
// serves at all, or some of its workers serve while one never gets ready:
// its listeners accept nothing until the whole generation is ready, so
// killing it loses no connection.
func TestFaultNewBinaryHangsBeforeReady(t *testing.T) {
	forEachMode(t, func(t *testing.T, m workerMode) {
		testsvc := buildBin(t, "integration/testdata/testsvc", "v1")
		cases := []struct {
			name, bin string
			hang      func(s *service)
			stderr    string
		}{
			{"before serving", helloV1, func(s *service) { installGate(t, s.exe, helloV2) }, "  | gate: waiting"},
			{"one worker never ready", testsvc, func(s *service) {
				script := fmt.Sprintf("#!/bin/bash\nexec -a \"$0\" %q \"$@\" --hang-worker\n", testsvc)
				installBytes(t, []byte(script), s.exe)
			}, `msg="not ready yet" `},
		}
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				s := newService(t, c.bin, "hello")
				s.start(append(m.args, "--upgrade-timeout", "2s")...)
				s.log.waitFor(t, 0, "msg=ready")
				pid, pidFile := s.pid(), s.pidFileBytes()
				l := runLoad(t, s, false)
				c.hang(s)
				line, errOut := s.reloadFails()
				wantContains(t, "reason", line, "timed out: not ready within the upgrade timeout of 2s, killed")
				wantContains(t, "handoff reload's stderr", errOut, c.stderr)
				if c.bin == testsvc {
					// Before it is killed, the new generation names what
					// it waits for: worker 0, which hangs.
					wantContains(t, "handoff reload's stderr", errOut, `waiting_for="worker 0`)
					if strings.Contains(errOut, "worker 1") {
						t.Errorf("worker 1, which is ready, is named among those waited for:\n%s", errOut)
					}
				}
				l.advance(1000)
				l.finish()
				s.wantUnchanged(pid, pidFile)
			})
		}
	})
}

// elfMachine returns a copy of the ELF binary b marked as built for
// another machine, one that no binfmt_misc handler here would run.
func elfMachine(t *testing.T, b []byte) []byte {
	t.Helper()
	const eMachine = 18 // offset of e_machine in the ELF header
	machines := []struct {
		name string
		code uint16
	}{{"aarch64", 183}, {"riscv64", 243}, {"s390x", 22}, {"ppc64le", 21}}
	for _, m := range machines {
		if _, err := os.Stat("/proc/sys/fs/binfmt_misc/qemu-" + m.name); err == nil {
			continue
		}
		if binary.LittleEndian.Uint16(b[eMachine:]) == m.code {
			continue
		}
		out := slices.Clone(b)
		binary.LittleEndian.PutUint16(out[eMachine:], m.code)
		return out
	}
	t.Skip("every foreign architecture here runs under binfmt_misc")
	return nil
}

// Row 3: the new binary is missing, not executable, truncated or built for
// another architecture.
func TestFaultNewBinaryCannotStart(t *testing.T) {
	forEachMode(t, func(t *testing.T, m workerMode) {
		s := startHello(t, helloV1, m.args...)
		pid, pidFile := s.pid(), s.pidFileBytes()
		v2, err := os.ReadFile(helloV2)
		if err != nil {
			t.Fatal(err)
		}
		l := runLoad(t, s, true)
		cases := []struct {
			name    string
			install func()
			want    []string
		}{
			{"missing", func() { os.Remove(s.exe) }, []string{"cannot start the new generation from " + s.exe, "no such file or directory"}},
			{"not executable", func() { installBytes(t, v2, s.exe); os.Chmod(s.exe, 0o644) }, []string{"permission denied (the file is not executable)"}},
			{"truncated", func() { installBytes(t, v2[:len(v2)/2], s.exe) }, []string{"new generation pid", "before it was ready"}},
			{"other architecture", func() { installBytes(t, elfMachine(t, v2), s.exe) }, []string{"exec format error (not an executable for this machine"}},
		}
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				c.install()
				line, _ := s.reloadFails()
				wantContains(t, "reason", line, c.want...)
				l.advance(1000)
				s.wantUnchanged(pid, pidFile)
			})
		}
		l.finish()
		s.wantGoodUpgrade()
	})
}

// reloadResult is the outcome of a handoff reload run in the background.
type reloadResult struct {
	code        int
	out, errOut string
}

// reloadAsync runs handoff reload in the background.
func (s *service) reloadAsync() <-chan reloadResult {
	c := make(chan reloadResult, 1)
	go func() {
		code, out, errOut := s.handoff("reload")
		c <- reloadResult{code, out, errOut}
	}()
	return c
}

// Row 4: a storm of SIGHUP and concurrent handoff reload calls during an
// upgrade: one upgrade at a time, the others refused.
func TestFaultUpgradeStorm(t *testing.T) {
	forEachMode(t, func(t *testing.T, m workerMode) {
		s := startHello(t, helloV1, m.args...)
		pid := s.pid()
		l := runLoad(t, s, true)
		g := installGate(t, s.exe, helloV2)
		first := s.reloadAsync()
		s.log.waitFor(t, 0, "gate: waiting")
		from := s.log.len()

		// 10 SIGHUP in 100 ms and 5 concurrent reloads while the first
		// upgrade waits at the gate.
		var wg sync.WaitGroup
		others := make(chan reloadResult, 5)
		for range 5 {
			wg.Go(func() { others <- <-s.reloadAsync() })
		}
		tick := time.NewTicker(10 * time.Millisecond)
		for range 10 {
			if err := syscall.Kill(pid, syscall.SIGHUP); err != nil {
				t.Fatal(err)
			}
			<-tick.C
		}
		tick.Stop()
		wg.Wait()
		close(others)
		for r := range others {
			if r.code == 0 || !strings.Contains(r.errOut, "upgrader: upgrade in progress") {
				t.Errorf("concurrent handoff reload: exit %d, want a refusal naming the upgrade in progress:\n%s%s", r.code, r.out, r.errOut)
			}
		}
		s.log.waitFor(t, from, "upgrade already in progress, signal ignored", fmt.Sprintf("pid=%d", pid))

		g.open()
		if r := <-first; r.code != 0 || !strings.Contains(r.out, "generation 2") {
			t.Fatalf("first handoff reload: exit %d\n%s%s", r.code, r.out, r.errOut)
		}
		s.log.waitFor(t, 0, "previous generation exited", "generation=2")
		l.advance(1000)
		l.finish()
		ignored := strings.Count(s.log.String(), "signal ignored")
		t.Logf("SIGHUPs ignored: %d of 10", ignored)
		if n := strings.Count(s.log.String(), "msg=\"upgrade starting\""); n != 1 {
			t.Errorf("%d upgrades started, want 1", n)
		}
		newPID := s.pid()
		s.onlyProcess(newPID)
		if code, body, err := s.get("/healthz"); err != nil || code != 200 || !strings.Contains(body, "generation=2") {
			t.Errorf("GET /healthz = %d %q %v, want generation 2", code, body, err)
		}
	})
}

// Row 5: an upgrade asked while the previous generation still drains
// starts at once, without waiting for that drain: the draining generation
// goes on and finishes its held request; nothing is lost.
func TestFaultUpgradeWhileDraining(t *testing.T) {
	forEachMode(t, func(t *testing.T, m workerMode) {
		s := startHello(t, helloV1, m.args...)
		l := runLoad(t, s, true)
		held := holdRequest(t, s) // keeps generation 1 draining
		install(t, helloV2, s.exe)
		s.reload()
		install(t, helloV1, s.exe)
		r := <-s.reloadAsync()
		if r.code != 0 {
			t.Fatalf("second handoff reload: exit %d\n%s%s", r.code, r.out, r.errOut)
		}
		wantContains(t, "second handoff reload's output", r.errOut+r.out, "generation 3, version v1")
		if !alive(held.master) {
			t.Errorf("the second upgrade was answered after generation 1 (pid %d) had exited: it waited for its drain", held.master)
		}
		if strings.Contains(r.errOut+r.out, "still draining") {
			t.Errorf("the second upgrade waited for a drain:\n%s%s", r.out, r.errOut)
		}
		l.advance(1000)
		held.wantFinished()
		waitExit(t, held.master)
		l.advance(1000)
		l.finish()
		s.log.waitFor(t, 0, "previous generation exited", "generation=3")
		s.onlyProcess(s.pid())
	})
}

// Row 6: a second instance with the same PID file refuses to start.
func TestFaultSecondInstanceRefused(t *testing.T) {
	s := startHello(t, helloV1)
	pid, pidFile := s.pid(), s.pidFileBytes()
	l := runLoad(t, s, false)
	addr := freeAddr(t)
	code, out := runOnce(t, s.dir, s.exe, "--listen", addr, "--pidfile", s.pidfile)
	t.Logf("second instance: exit %d: %s", code, out)
	if code == 0 || strings.Count(strings.TrimSpace(out), "\n") != 0 {
		t.Errorf("second instance: exit %d, want non-zero and one line:\n%s", code, out)
	}
	wantContains(t, "second instance's error", out, fmt.Sprintf("already running as pid %d", pid), s.pidfile)
	wantFree(t, addr)
	l.advance(1000)
	l.finish()
	s.wantUnchanged(pid, pidFile)
}

// Row 6: a stale PID file, and the control socket a killed instance left,
// are taken over with a warning.
func TestFaultStalePIDFileTakenOver(t *testing.T) {
	s := newService(t, helloV1, "hello")
	dead := deadPID(t)
	if err := os.MkdirAll(filepath.Dir(s.pidfile), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(s.pidfile, fmt.Appendf(nil, "%d\n", dead), 0o644); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("unix", strings.TrimSuffix(s.pidfile, ".pid")+".sock")
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	s.start()
	s.log.waitFor(t, 0, "taking over stale pid file", fmt.Sprintf("stale_pid=%d", dead))
	s.log.waitFor(t, 0, "msg=ready")
	if got := s.pid(); got != s.cmd.Process.Pid {
		t.Errorf("pid file holds %d, want %d", got, s.cmd.Process.Pid)
	}
	if code, out, errOut := s.handoff("status"); code != 0 {
		t.Errorf("handoff status: exit %d\n%s%s", code, out, errOut)
	}
}

// Row 7: the PID file's folder cannot be written, at start.
func TestFaultPIDFolderNotWritableAtStart(t *testing.T) {
	wrap := dropDAC(t)
	dir := t.TempDir()
	run := filepath.Join(dir, "run")
	if err := os.Mkdir(run, 0o500); err != nil {
		t.Fatal(err)
	}
	addr := freeAddr(t)
	args := append(wrap, helloV1, "--listen", addr, "--pidfile", filepath.Join(run, "hello.pid"))
	code, out := runOnce(t, dir, args[0], args[1:]...)
	t.Logf("exit %d: %s", code, out)
	if code == 0 || strings.Count(strings.TrimSpace(out), "\n") != 0 {
		t.Errorf("exit %d, want non-zero and one line:\n%s", code, out)
	}
	wantContains(t, "error", out, "pid file folder "+run+" is not writable", "permission denied")
	wantFree(t, addr)
}

// Row 7: the PID file's folder cannot be written during an upgrade.
func TestFaultPIDFolderNotWritableDuringUpgrade(t *testing.T) {
	forEachMode(t, func(t *testing.T, m workerMode) {
		s := newService(t, helloV1, "hello")
		s.wrap = dropDAC(t)
		s.start(m.args...)
		s.log.waitFor(t, 0, "msg=ready")
		pid, pidFile := s.pid(), s.pidFileBytes()
		l := runLoad(t, s, true)
		run := filepath.Dir(s.pidfile)
		install(t, helloV2, s.exe)
		if err := os.Chmod(run, 0o500); err != nil {
			t.Fatal(err)
		}
		line, errOut := s.reloadFails()
		wantContains(t, "reason", line, "exited with exit status 1 before it was ready")
		wantContains(t, "handoff reload's stderr", errOut, "write pid file "+s.pidfile, "permission denied")
		l.advance(1000)
		s.wantUnchanged(pid, pidFile)
		if err := os.Chmod(run, 0o755); err != nil {
			t.Fatal(err)
		}
		s.reload()
		l.advance(1000)
		l.finish()
	})
}

// Row 8: the port is already in use at first start.
func TestFaultPortInUse(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	s := newService(t, helloV1, "hello")
	code, out := runOnce(t, s.dir, s.exe, "--listen", busy.Addr().String(), "--pidfile", s.pidfile)
	t.Logf("exit %d: %s", code, out)
	if code == 0 {
		t.Errorf("exit %d, want non-zero:\n%s", code, out)
	}
	wantContains(t, "error line", errorLine(out, "hello: "), "listen on tcp "+busy.Addr().String(), "address already in use")
	wantNothingLeft(t, s)
}

// wantNothingLeft fails the test if s left a process, a PID file or a
// control socket behind.
func wantNothingLeft(t *testing.T, s *service) {
	t.Helper()
	if pids := s.pids(); len(pids) > 0 {
		t.Errorf("processes left: %v", pids)
	}
	for _, p := range []string{s.pidfile, strings.TrimSuffix(s.pidfile, ".pid") + ".sock"} {
		if _, err := os.Lstat(p); err == nil {
			t.Errorf("%s left behind", p)
		}
	}
}

// Row 9: SIGKILL of the master leaves no process on the port, and a
// restart works at once, also while a previous generation still drains.
// Worker processes die with their master: the kernel sends them SIGKILL
// when it dies, and the test waits until they have exited.
func TestFaultMasterKilled(t *testing.T) {
	forEachMode(t, func(t *testing.T, m workerMode) {
		t.Run("serving", func(t *testing.T) {
			s := startHello(t, helloV1, m.args...)
			l := runLoad(t, s, false)
			workers := s.workersOf(s.pid())
			s.cmd.Process.Kill()
			<-s.exited
			s.waitWorkersDead(workers)
			l.stop() // requests fail while nothing serves: not counted
			wantFree(t, s.addr)
			s2 := s.restart(m.args...)
			s2.log.waitFor(t, 0, "taking over stale pid file")
			if code, _, err := s2.get("/"); err != nil || code != 200 {
				t.Errorf("GET / after the restart: %d %v", code, err)
			}
		})
		t.Run("previous generation draining", func(t *testing.T) {
			s := startHello(t, helloV1, m.args...)
			held := holdRequest(t, s)
			install(t, helloV2, s.exe)
			s.reload()
			master := s.pid()
			workers := s.workersOf(master)
			syscall.Kill(master, syscall.SIGKILL)
			waitExit(t, master)
			s.waitWorkersDead(workers)
			wantFree(t, s.addr) // the draining generation holds no listener
			s2 := s.restart(m.args...)
			if code, _, err := s2.get("/"); err != nil || code != 200 {
				t.Errorf("GET / after the restart: %d %v", code, err)
			}
			held.wantFinished()
		})
	})
}

// Row 10: SIGTERM, or handoff stop, during an upgrade: the upgrade ends,
// then both generations drain and exit, no orphan, exit status 0.
func TestFaultStopDuringUpgrade(t *testing.T) {
	forEachMode(t, func(t *testing.T, m workerMode) {
		for _, via := range []string{"SIGTERM", "handoff stop"} {
			t.Run(via, func(t *testing.T) {
				s := startHello(t, helloV1, m.args...)
				pid := s.pid()
				held := holdRequest(t, s)
				g := installGate(t, s.exe, helloV2)
				reload := s.reloadAsync()
				s.log.waitFor(t, 0, "gate: waiting")
				stopped := make(chan reloadResult, 1)
				if via == "SIGTERM" {
					if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
						t.Fatal(err)
					}
				} else {
					go func() {
						code, out, errOut := s.handoff("stop")
						stopped <- reloadResult{code, out, errOut}
					}()
				}
				s.log.waitFor(t, 0, "stop requested during an upgrade", fmt.Sprintf("pid=%d", pid))
				g.open()
				if r := <-reload; r.code != 0 {
					t.Errorf("handoff reload: exit %d\n%s%s", r.code, r.out, r.errOut)
				}
				i := s.log.waitFor(t, 0, "stopping the new generation too", fmt.Sprintf("pid=%d", pid))
				newPID, _ := strconv.Atoi(logValue(s.log.line(i), "new_pid"))
				held.wantFinished()
				<-s.exited
				if s.waitErr != nil {
					t.Errorf("old generation exited with %v, want status 0", s.waitErr)
				}
				if via != "SIGTERM" {
					if r := <-stopped; r.code != 0 || !strings.Contains(r.out, fmt.Sprintf("stopped: pid %d exited", pid)) {
						t.Errorf("handoff stop: exit %d\n%s%s", r.code, r.out, r.errOut)
					}
				}
				s.log.waitFor(t, 0, "msg=exited", fmt.Sprintf("pid=%d", newPID))
				waitExit(t, newPID)
				wantNothingLeft(t, s)
			})
		}
	})
}

// Row 11: a request longer than the drain timeout is cut at the timeout,
// with a count in the log; a shorter one completes with 200.
func TestFaultDrainTimeout(t *testing.T) {
	forEachMode(t, func(t *testing.T, m workerMode) {
		s := startHello(t, helloV1, append(m.args, "--drain-timeout", "3s")...)
		l := runLoad(t, s, true)
		long := holdRequest(t, s)
		short := holdRequest(t, s)
		install(t, helloV2, s.exe)
		s.reload()
		short.wantFinished()
		if code, _, err := long.answer(); err == nil {
			t.Errorf("request longer than the drain timeout answered %d, want it cut", code)
		}
		s.log.waitFor(t, 0, "drain timeout: connections cut", "cut=1", fmt.Sprintf("pid=%d", long.pid))
		s.log.waitFor(t, 0, "previous generation exited", "generation=2", fmt.Sprintf("parent_pid=%d", long.master))
		l.advance(1000)
		l.finish()
	})
}

// Row 14: bad flags, addresses and durations: a usage error naming the
// flag, exit status 2, nothing started.
func TestFaultBadFlags(t *testing.T) {
	s := startHello(t, helloV1)
	dir := t.TempDir()
	pidfile := filepath.Join(dir, "run", "x.pid")
	addr := freeAddr(t)
	hello := [][]string{
		{"--listen", "nonsense"},
		{"--listen", "127.0.0.1:99999"},
		{"--listen", "127.0.0.1:http"},
		{"--drain-timeout", "5"},
		{"--upgrade-timeout", "-1s"},
		{"--workers", "0"},
		{"--workers", "many"},
		{"--log-level", "loud"},
		{"--log-format", "xml"},
		{"--tls-cert", "cert.pem"},
		{"--bogus"},
		{"stray"},
	}
	for _, args := range hello {
		code, out := runOnce(t, dir, helloV1, append([]string{"--listen", addr, "--pidfile", pidfile}, args...)...)
		wantUsageError(t, "hello "+strings.Join(args, " "), code, out, strings.TrimLeft(args[0], "-"))
	}
	echo := buildBin(t, "examples/echo", "v1")
	for _, args := range [][]string{{"--listen", "127.0.0.1:x"}, {"--drain-timeout", "0s"}, {"--bogus"}} {
		code, out := runOnce(t, dir, echo, append([]string{"--listen", addr, "--pidfile", pidfile}, args...)...)
		wantUsageError(t, "echo "+strings.Join(args, " "), code, out, strings.TrimLeft(args[0], "-"))
	}
	if _, err := os.Stat(filepath.Dir(pidfile)); err == nil {
		t.Errorf("a bad start created %s", filepath.Dir(pidfile))
	}
	wantFree(t, addr)

	// handoff: the flag named, and the PID file of the running service
	// unless the case gives one.
	handoff := []struct {
		args []string
		flag string
	}{
		{[]string{"reload", "--timeout", "soon"}, "timeout"},
		{[]string{"reload", "--timeout", "-1s"}, "timeout"},
		{[]string{"reload", "--bogus"}, "bogus"},
		{[]string{"stop", "--timeout", "0s"}, "timeout"},
		{[]string{"status", "stray"}, "stray"},
		{[]string{"reload", "--pidfile", ""}, "pidfile"},
		{[]string{"frobnicate"}, "frobnicate"},
	}
	for _, c := range handoff {
		args := c.args
		if !slices.Contains(args, "--pidfile") {
			args = append(slices.Clone(args), "--pidfile", s.pidfile)
		}
		code, out := runOnce(t, dir, handoffBin, args...)
		wantUsageError(t, "handoff "+strings.Join(c.args, " "), code, out, c.flag)
	}
	if strings.Contains(s.log.String(), "requested") {
		t.Errorf("a bad handoff command reached the service:\n%s", s.log)
	}
}

func wantUsageError(t *testing.T, what string, code int, out, flag string) {
	t.Helper()
	t.Logf("%s: exit %d: %s", what, code, strings.TrimSpace(out))
	if code != 2 {
		t.Errorf("%s: exit %d, want 2", what, code)
	}
	if n := strings.Count(strings.TrimSpace(out), "\n"); n != 0 {
		t.Errorf("%s: %d lines of output, want one:\n%s", what, n+1, out)
	}
	if !strings.Contains(out, flag) {
		t.Errorf("%s: %q does not name %q", what, out, flag)
	}
}

// workersOf lists the worker processes of master.
func (s *service) workersOf(master int) []int {
	var out []int
	for _, pid := range s.pids() {
		if ppid(pid) == master {
			out = append(out, pid)
		}
	}
	return out
}

// waitWorkersDead waits until the worker processes of a killed master
// have exited.
func (s *service) waitWorkersDead(workers []int) {
	s.t.Helper()
	for _, pid := range workers {
		waitExit(s.t, pid)
	}
}

// Row 10, systemd's way: systemctl stop with the default
// KillMode=control-group (or a terminal's Ctrl-C) signals the master and
// every worker process at once, and the master then signals its workers
// too. A worker takes that second signal as the same stop: its request in
// flight completes with 200, and every process exits.
func TestFaultStopSignalsEveryProcess(t *testing.T) {
	s := startHello(t, helloV1, "--workers", "2", "--worker-mode", "process")
	held := holdRequest(t, s)
	master := s.pid()
	procs := s.generation(master)
	for _, pid := range procs {
		if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
	}
	held.wantFinished()
	<-s.exited
	if s.waitErr != nil {
		t.Errorf("master exited with %v, want status 0", s.waitErr)
	}
	for _, pid := range procs {
		waitExit(t, pid)
	}
	if strings.Contains(s.log.String(), "cutting the drain short") {
		t.Errorf("a drain was cut short:\n%s", s.log)
	}
	wantNothingLeft(t, s)
}
