//go:build integration

package integration

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/gohandoff/handoff/control"
	"github.com/gohandoff/handoff/pidfile"
	"github.com/gohandoff/handoff/upgrader"
)

const processWorkers = 4

// workersPIDFile is the workers PID file next to s's PID file.
func (s *service) workersPIDFile() string {
	return strings.TrimSuffix(s.pidfile, ".pid") + ".workers.pid"
}

// workerPIDs reads the workers PID file.
func (s *service) workerPIDs() []int {
	s.t.Helper()
	pids, err := pidfile.Read(s.workersPIDFile())
	if err != nil {
		s.t.Fatalf("workers pid file: %v", err)
	}
	return pids
}

// ppid reads the parent pid of pid.
func ppid(pid int) int {
	stat, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return 0
	}
	i := bytes.LastIndexByte(stat, ')')
	fields := strings.Fields(string(stat[i+1:]))
	if len(fields) < 2 {
		return 0
	}
	n, _ := strconv.Atoi(fields[1])
	return n
}

// checkWorkers checks that the workers PID file lists n live children of
// the master in the PID file, and returns them.
func (s *service) checkWorkers(n int) []int {
	s.t.Helper()
	master := s.pid()
	pids := s.workerPIDs()
	if len(pids) != n {
		s.t.Fatalf("workers pid file lists %v, want %d pids", pids, n)
	}
	for _, pid := range pids {
		if !alive(pid) {
			s.t.Errorf("worker %d listed but not alive", pid)
		}
		if pp := ppid(pid); pp != master {
			s.t.Errorf("worker %d has parent %d, want the master %d", pid, pp, master)
		}
	}
	return pids
}

// waitWorkersChange waits, by watching the folder of the workers PID
// file, until the file lists n pids none of which is gone, and returns
// them with how long it took. It fails the test after within.
func (s *service) waitWorkersChange(gone int, n int, within time.Duration) ([]int, time.Duration) {
	s.t.Helper()
	start := time.Now()
	w, err := fsnotify.NewWatcher()
	if err != nil {
		s.t.Fatal(err)
	}
	defer w.Close()
	if err := w.Add(filepath.Dir(s.workersPIDFile())); err != nil {
		s.t.Fatal(err)
	}
	timer := time.NewTimer(within)
	defer timer.Stop()
	for {
		pids, _ := pidfile.Read(s.workersPIDFile())
		if len(pids) == n && !slices.Contains(pids, gone) {
			return pids, time.Since(start)
		}
		select {
		case <-w.Events:
		case err := <-w.Errors:
			s.t.Fatal(err)
		case <-timer.C:
			s.t.Fatalf("workers pid file still %v after %s, want %d pids without %d", pids, within, n, gone)
		}
	}
}

// statusJSON runs handoff status --json.
func (s *service) statusJSON() control.Status {
	s.t.Helper()
	code, out, errOut := s.handoff("status", "--json")
	if code != 0 {
		s.t.Fatalf("handoff status: exit %d %s", code, errOut)
	}
	var st control.Status
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		s.t.Fatalf("handoff status --json: %v\n%s", err, out)
	}
	return st
}

// TestProcessModeRollAndUpgradesUnderLoad: hello with 4 worker processes
// under 200 concurrent clients, with a connection per request and with
// keep-alive, goes through a rolling restart (SIGUSR2, then handoff
// restart-workers) and 3 upgrades by SIGHUP without a failed request; the
// old workers are all gone after and 4 new ones are listed.
func TestProcessModeRollAndUpgradesUnderLoad(t *testing.T) {
	for _, keepAlive := range []bool{false, true} {
		name := "connection-per-request"
		if keepAlive {
			name = "keep-alive"
		}
		t.Run(name, func(t *testing.T) {
			s := startHello(t, helloV1, "--workers", strconv.Itoa(processWorkers), "--worker-mode", "process")
			old := s.checkWorkers(processWorkers)
			var completed atomic.Int64
			done := make(chan struct{})
			results := startLoad(t, s, keepAlive, 20000, done, &completed)
			waitCount(t, &completed, 1000)

			from := s.log.len()
			if keepAlive {
				code, out, errOut := s.handoff("restart-workers")
				if code != 0 {
					t.Fatalf("handoff restart-workers: exit %d\n%s%s", code, out, errOut)
				}
				t.Logf("handoff restart-workers:\n%s", out)
			} else {
				if err := syscall.Kill(s.pid(), syscall.SIGUSR2); err != nil {
					t.Fatal(err)
				}
				s.log.waitFor(t, from, "rolling restart done", fmt.Sprintf("replaced=%d", processWorkers))
			}
			// The new workers come first; old ones may still be draining.
			rolled := s.workerPIDs()
			if len(rolled) < processWorkers {
				t.Fatalf("workers pid file after the roll: %v", rolled)
			}
			rolled = rolled[:processWorkers]
			for _, pid := range rolled {
				if slices.Contains(old, pid) {
					t.Errorf("worker %d still listed after the roll (before: %v, after: %v)", pid, old, rolled)
				}
			}
			old = append(old, rolled...)
			waitCount(t, &completed, completed.Load()+2000)

			for gen := 2; gen <= 4; gen++ {
				old = append(old, s.workerPIDs()...)
				install(t, helloV2, s.exe)
				from := s.log.len()
				if err := syscall.Kill(s.pid(), syscall.SIGHUP); err != nil {
					t.Fatal(err)
				}
				s.log.waitFor(t, from, "msg=ready", fmt.Sprintf("generation=%d", gen))
				waitCount(t, &completed, completed.Load()+2000)
			}
			close(done)
			checkLoad(t, <-results)
			// A master exits after its last worker: once generation 3
			// has, every old worker has.
			s.log.waitFor(t, 0, "previous generation exited", "generation=4")
			now := s.checkWorkers(processWorkers)
			for _, pid := range old {
				if slices.Contains(now, pid) {
					t.Errorf("old worker %d still listed: %v", pid, now)
				}
				if alive(pid) {
					t.Errorf("old worker %d still alive", pid)
				}
			}
			if code, body, err := s.get("/version"); err != nil || code != 200 || body != "v2" {
				t.Errorf("GET /version = %d %q %v, want 200 v2", code, body, err)
			}
		})
	}
}

// TestProcessModeWorkerKilledUnderLoad: kill -9 of a worker under load; a
// new worker is listed within 2s and the service keeps answering. The
// requests in flight on the killed worker fail: they are counted and
// reported, and can be no more than the clients.
func TestProcessModeWorkerKilledUnderLoad(t *testing.T) {
	s := startHello(t, helloV1, "--workers", strconv.Itoa(processWorkers), "--worker-mode", "process")
	pids := s.checkWorkers(processWorkers)
	var completed atomic.Int64
	done := make(chan struct{})
	results := startLoad(t, s, true, 10000, done, &completed)
	waitCount(t, &completed, 2000)

	victim := pids[1]
	if err := syscall.Kill(victim, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	now, took := s.waitWorkersChange(victim, processWorkers, 2*time.Second)
	t.Logf("worker %d killed: new worker listed after %s: %v", victim, took.Round(time.Millisecond), now)
	s.log.waitFor(t, 0, "worker died, replacing it", "signal: killed")
	waitCount(t, &completed, completed.Load()+3000)
	close(done)
	res := <-results
	t.Logf("load: %s", res)
	t.Logf("requests failed with the killed worker: %d %v %q", res.Failed, res.ByKind, res.Errors)
	if res.Failed > 200 {
		t.Errorf("%d failed requests, more than the 200 clients could have had in flight on one worker", res.Failed)
	}
	s.checkWorkers(processWorkers)
	st := s.statusJSON()
	restarts := 0
	for _, w := range st.Workers {
		restarts += w.Restarts
	}
	if restarts != 1 {
		t.Errorf("status shows %d restarts, want 1: %+v", restarts, st.Workers)
	}
}

// TestProcessModeCrashLoop: workers that exit at once are restarted with
// a growing backoff; the master stays up and handoff status shows the
// crash loop.
func TestProcessModeCrashLoop(t *testing.T) {
	s := newService(t, handoffBin, "handoff")
	script := filepath.Join(s.dir, "crash.sh")
	installBytes(t, []byte("#!/bin/sh\necho 'worker: config missing' >&2\nexit 3\n"), script)
	cmd := exec.Command(s.exe, "run", "--listen", "tcp://"+s.addr, "--workers", "2", "--pidfile", s.pidfile, "--", script)
	cmd.Dir = s.dir
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = pw, pw
	s.log = newLogWatch(pr)
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	master := cmd.Process.Pid
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("service log:\n%s", s.log)
		}
	})
	s.log.waitFor(t, 0, "WORKER CRASH LOOP", "worker=0")
	s.log.waitFor(t, 0, "WORKER CRASH LOOP", "worker=1")
	st := s.statusJSON()
	if st.PID != master {
		t.Errorf("status pid %d, want the master %d", st.PID, master)
	}
	for _, w := range st.Workers {
		if !strings.HasPrefix(w.State, "crash-loop") || w.Restarts < upgrader.CrashLoopDeaths-1 {
			t.Errorf("worker %d: state %q restarts %d, want crash-loop and at least %d", w.ID, w.State, w.Restarts, upgrader.CrashLoopDeaths-1)
		}
		if !strings.Contains(w.LastErr, "exit status 3") {
			t.Errorf("worker %d: last error %q does not name the exit status", w.ID, w.LastErr)
		}
	}
	if code, text, _ := s.handoff("status"); code != 0 || !strings.Contains(text, "crash-loop") {
		t.Errorf("handoff status (exit %d) does not show the crash loop:\n%s", code, text)
	}
	// Let the backoff grow, then count the starts: with a backoff doubling
	// from 100ms, a worker starts at most about log2(elapsed/100ms)+3
	// times; a respawn loop without backoff would start hundreds.
	from := s.log.len()
	i := s.log.waitFor(t, from, "worker in crash loop died again")
	s.log.waitFor(t, i+1, "worker in crash loop died again")
	elapsed := time.Since(start)
	starts := strings.Count(s.log.String(), `msg="worker started"`)
	bound := 2 * (6 + int(elapsedLog2(elapsed/upgrader.MinRestartBackoff)))
	cpu := cpuTime(master)
	t.Logf("%d worker starts in %s (bound %d); master CPU time %s", starts, elapsed.Round(time.Millisecond), bound, cpu)
	if starts > bound {
		t.Errorf("%d worker starts in %s, want at most %d with backoff", starts, elapsed.Round(time.Millisecond), bound)
	}
	if !alive(master) {
		t.Fatal("master exited")
	}
}

func elapsedLog2(n time.Duration) float64 {
	l := 0.0
	for ; n > 1; n /= 2 {
		l++
	}
	return l
}

// cpuTime is the user and system CPU time pid has used.
func cpuTime(pid int) time.Duration {
	stat, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return 0
	}
	i := bytes.LastIndexByte(stat, ')')
	f := strings.Fields(string(stat[i+1:]))
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.Atoi(f[11])
	st, _ := strconv.Atoi(f[12])
	return time.Duration(ut+st) * 10 * time.Millisecond // USER_HZ is 100 on Linux
}

// TestProcessModeMasterKilled: after kill -9 of the master, no worker
// is alive within 2s, and a fresh start on the same port succeeds.
func TestProcessModeMasterKilled(t *testing.T) {
	s := startHello(t, helloV1, "--workers", strconv.Itoa(processWorkers), "--worker-mode", "process")
	workers := s.checkWorkers(processWorkers)
	if err := syscall.Kill(s.pid(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		left := slices.DeleteFunc(slices.Clone(workers), func(pid int) bool { return !alive(pid) })
		if len(left) == 0 {
			break
		}
		if time.Since(start) > 2*time.Second {
			t.Fatalf("workers %v still alive 2s after the master was killed", left)
		}
		<-tick.C
	}
	t.Logf("all workers gone %s after the master was killed", time.Since(start).Round(time.Millisecond))

	fresh := newService(t, helloV1, "hello")
	fresh.addr = s.addr
	fresh.pidfile = s.pidfile // the stale PID file and control socket of the killed run
	fresh.start("--workers", "2", "--worker-mode", "process")
	fresh.waitReady()
	fresh.checkWorkers(2)
	if code, body, err := fresh.get("/"); err != nil || code != 200 || body != "Hello, world!" {
		t.Errorf("GET / on the fresh start = %d %q %v", code, body, err)
	}
}

// TestHandoffRunNode: handoff run with the Node.js example as workers
// loses no request through a rolling restart and an upgrade that also
// picks up a new app.js.
func TestHandoffRunNode(t *testing.T) {
	node, src := nodeServer(t, false)
	s := newService(t, handoffBin, "handoff")
	app := filepath.Join(s.dir, "app.js")
	installBytes(t, src, app)
	ready := "notify"
	if _, err := exec.LookPath("systemd-notify"); err != nil {
		ready = "delay:1s"
	}
	t.Logf("node %s, ready %s", node, ready)
	s.startArgs("run", "--listen", "tcp://"+s.addr, "--workers", "2", "--pidfile", s.pidfile, "--ready", ready, "--", node, app)
	s.waitReady()
	old := s.checkWorkers(2)

	var completed atomic.Int64
	done := make(chan struct{})
	results := startLoad(t, s, true, 3000, done, &completed)
	waitCount(t, &completed, 500)
	if code, out, errOut := s.handoff("restart-workers"); code != 0 {
		t.Fatalf("handoff restart-workers: exit %d\n%s%s", code, out, errOut)
	}
	old = append(old, s.workerPIDs()...)
	waitCount(t, &completed, completed.Load()+500)
	installBytes(t, bytes.ReplaceAll(src, []byte("'node-dev'"), []byte("'node-v2'")), app)
	if code, out, errOut := s.handoff("reload"); code != 0 {
		t.Fatalf("handoff reload: exit %d\n%s%s", code, out, errOut)
	}
	waitCount(t, &completed, completed.Load()+500)
	close(done)
	res := <-results
	checkLoad(t, res)
	s.log.waitFor(t, 0, "previous generation exited", "generation=2")
	now := s.checkWorkers(2)
	for _, pid := range old {
		if slices.Contains(now, pid) || alive(pid) {
			t.Errorf("old worker %d still listed or alive (now %v)", pid, now)
		}
	}
	if code, body, err := s.get("/version"); err != nil || code != 200 || body != "node-v2" {
		t.Errorf("GET /version = %d %q %v, want 200 node-v2", code, body, err)
	}
}

// TestHandoffRunWatch: with --watch, a change of the app upgrades
// handoff run by itself; a broken app fails the upgrade, reported, while
// the old generation goes on serving, and the next change is tried again.
func TestHandoffRunWatch(t *testing.T) {
	node, src := nodeServer(t, false)
	s := newService(t, handoffBin, "handoff")
	appDir := filepath.Join(s.dir, "app")
	if err := os.Mkdir(appDir, 0o755); err != nil {
		t.Fatal(err)
	}
	app := filepath.Join(appDir, "app.js")
	installBytes(t, src, app)
	// A broken app must not look ready: notify, or a delay longer than
	// Node takes to fail on a syntax error.
	ready := "notify"
	if _, err := exec.LookPath("systemd-notify"); err != nil {
		ready = "delay:3s"
	}
	s.startArgs("run", "--listen", "tcp://"+s.addr, "--workers", "1", "--pidfile", s.pidfile, "--ready", ready,
		"--watch", appDir, "--", node, app)
	s.waitReady()

	version := func(v string) []byte { return bytes.ReplaceAll(src, []byte("'node-dev'"), []byte("'"+v+"'")) }
	from := s.log.len()
	// A burst of writes makes one upgrade.
	for i := range 5 {
		installBytes(t, version(fmt.Sprintf("node-v2-%d", i)), app)
	}
	s.log.waitFor(t, from, "previous generation exited", "generation=2")
	if n := strings.Count(strings.Join(strings.Split(s.log.String(), "\n")[from:], "\n"), "change detected, upgrading"); n != 1 {
		t.Errorf("%d upgrades for one burst of writes, want 1", n)
	}
	if code, body, err := s.get("/version"); err != nil || code != 200 || body != "node-v2-4" {
		t.Errorf("GET /version = %d %q %v, want 200 node-v2-4", code, body, err)
	}

	from = s.log.len()
	installBytes(t, []byte("this is not javascript\n"), app)
	s.log.waitFor(t, from, "crash loop before this generation was ready")
	s.log.waitFor(t, from, "upgrade on change failed", "before it was ready")
	if code, body, err := s.get("/version"); err != nil || code != 200 || body != "node-v2-4" {
		t.Errorf("after the failed upgrade GET /version = %d %q %v, want 200 node-v2-4 from generation 2", code, body, err)
	}

	from = s.log.len()
	installBytes(t, version("node-v3"), app)
	s.log.waitFor(t, from, "previous generation exited", "generation=3")
	if code, body, err := s.get("/version"); err != nil || code != 200 || body != "node-v3" {
		t.Errorf("GET /version = %d %q %v, want 200 node-v3", code, body, err)
	}
}

// TestRollStopsAtFailingReplacement: when a replacement exits before it is
// ready, handoff restart-workers stops the roll and exits non-zero with
// the reason, and the old workers go on.
func TestRollStopsAtFailingReplacement(t *testing.T) {
	s := newService(t, handoffBin, "handoff")
	script := filepath.Join(s.dir, "worker.sh")
	installBytes(t, []byte("#!/bin/sh\nexec sleep 600\n"), script)
	s.startArgs("run", "--listen", "tcp://"+s.addr, "--workers", "3", "--pidfile", s.pidfile, "--ready", "delay:200ms", "--", script)
	s.waitReady()
	old := s.checkWorkers(3)

	installBytes(t, []byte("#!/bin/sh\necho 'worker: bad release' >&2\nexit 4\n"), script)
	code, out, errOut := s.handoff("restart-workers")
	if code == 0 {
		t.Fatalf("handoff restart-workers succeeded with a worker that exits at once:\n%s", out)
	}
	if !strings.Contains(errOut, "roll stopped at worker 0") || !strings.Contains(errOut, "exit status 4") {
		t.Errorf("handoff restart-workers stderr %q does not say where the roll stopped and why", errOut)
	}
	if now := s.checkWorkers(3); !slices.Equal(now, old) {
		t.Errorf("workers after the failed roll: %v, want the old ones %v", now, old)
	}
	st := s.statusJSON()
	if st.State != "ready" {
		t.Errorf("master state %q after the failed roll, want ready", st.State)
	}
}

// servedBy asks GET /healthz on new connections until the answer comes
// from pid, and returns that answer.
func (s *service) servedBy(pid int) string {
	s.t.Helper()
	want := fmt.Sprintf("pid=%d ", pid)
	for time.Now().Before(deadline(s.t)) {
		code, body, err := s.get("/healthz")
		if err != nil || code != 200 {
			s.t.Fatalf("GET /healthz = %d %q %v", code, body, err)
		}
		if strings.Contains(body, want) {
			return body
		}
	}
	s.t.Fatalf("no answer from pid %d", pid)
	return ""
}

// TestProcessModeRespawnRunsServingCode: a binary replaced on disk reaches
// worker processes only through an upgrade. A worker that crashes after a
// deploy installed a broken build, or removed the file, is replaced from
// the serving generation's own executable; so is every worker of a roll.
// Under load, nothing beyond the killed worker's own requests fails.
func TestProcessModeRespawnRunsServingCode(t *testing.T) {
	for _, c := range []struct {
		name    string
		install func(s *service)
	}{
		{"broken build installed", func(s *service) {
			installBytes(t, []byte("#!/bin/sh\necho 'broken build' >&2\nexit 1\n"), s.exe)
		}},
		{"file removed", func(s *service) { os.Remove(s.exe) }},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := startHello(t, helloV1, "--workers", "2", "--worker-mode", "process")
			l := runLoad(t, s, false)
			c.install(s)

			victim := s.checkWorkers(2)[0]
			if err := syscall.Kill(victim, syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			now, _ := s.waitWorkersChange(victim, 2, 10*time.Second)
			for _, pid := range now {
				if body := s.servedBy(pid); !strings.Contains(body, "generation=1 version=v1") {
					t.Errorf("worker %d after the respawn: %q, want generation 1's v1", pid, body)
				}
			}
			res := l.stop()
			if res.Failed > 200 {
				t.Errorf("%d requests failed, more than the 200 clients could have had on the killed worker: %v", res.Failed, res.ByKind)
			}

			code, out, errOut := s.handoff("restart-workers")
			if code != 0 {
				t.Fatalf("handoff restart-workers: exit %d\n%s%s", code, out, errOut)
			}
			// The new workers come first; an old one may still drain.
			for _, pid := range s.workerPIDs()[:2] {
				if slices.Contains(now, pid) {
					t.Errorf("worker %d not replaced by the roll", pid)
				}
				if body := s.servedBy(pid); !strings.Contains(body, "generation=1 version=v1") {
					t.Errorf("worker %d after the roll: %q, want generation 1's v1", pid, body)
				}
			}
			if strings.Contains(s.log.String(), "broken build") {
				t.Errorf("a worker ran the build installed on disk:\n%s", s.log)
			}
		})
	}
}

// TestHandoffRunNodeFailedUpgrade: handoff run's new generation of Node
// workers in which one worker never reports ready is killed at the upgrade
// timeout. Its other worker was ready, but accepts only once handoff opens
// the gate on its stdin, which a generation that is not ready never does:
// the keep-alive load on the serving generation loses nothing.
func TestHandoffRunNodeFailedUpgrade(t *testing.T) {
	node, src := nodeServer(t, true)
	s := newService(t, handoffBin, "handoff")
	app, real := filepath.Join(s.dir, "app.js"), filepath.Join(s.dir, "server.js")
	installBytes(t, src, app)
	installBytes(t, src, real)
	s.startArgs("run", "--listen", "tcp://"+s.addr, "--workers", "2", "--pidfile", s.pidfile,
		"--upgrade-timeout", "3s", "--", node, app)
	s.waitReady()
	pid, pidFile := s.pid(), s.pidFileBytes()
	l := runLoad(t, s, true)

	// The first worker to start never reports ready; the other serves.
	flag := filepath.Join(s.dir, "hang-taken")
	hang := fmt.Sprintf(`const fs = require('node:fs');
try {
  fs.closeSync(fs.openSync(%q, 'wx'));
  process.stderr.write('app=node msg="this worker never reports ready"\n');
  delete process.env.NOTIFY_SOCKET;
} catch (e) {}
require(%q);
`, flag, real)
	installBytes(t, []byte(hang), app)
	line, errOut := s.reloadFails()
	wantContains(t, "reason", line, "timed out: not ready within the upgrade timeout of 3s")
	wantContains(t, "handoff reload's stderr", errOut, `waiting_for="worker `)
	l.advance(1000)
	l.finish()
	s.wantUnchanged(pid, pidFile)
	// The failed generation's master started its workers with the shared
	// socket: that must not have made it blocking, or the serving Node
	// workers would block in accept and stall their connections.
	for _, w := range s.workerPIDs() {
		if !nonblocking(t, w, 3) {
			t.Errorf("worker %d: its listening socket (fd 3) is blocking", w)
		}
	}

	installBytes(t, bytes.ReplaceAll(src, []byte("'node-dev'"), []byte("'node-v2'")), app)
	s.reload()
	s.log.waitFor(t, 0, "previous generation exited", "generation=2")
	if code, body, err := s.get("/version"); err != nil || code != 200 || body != "node-v2" {
		t.Errorf("GET /version = %d %q %v, want 200 node-v2", code, body, err)
	}
}

// TestProcessModeRollbackAfterCrashLoop: an upgrade to a build whose
// worker processes report ready, then crash under traffic, succeeds; once
// a worker falls into a crash loop, the master rolls every worker back to
// the previous build, and the service serves again without a failure.
// The requests the crashing workers had in flight are lost and reported.
// A later upgrade to a good build works as usual.
func TestProcessModeRollbackAfterCrashLoop(t *testing.T) {
	v1 := buildBin(t, "integration/testdata/testsvc", "v1")
	crashy := buildBin(t, "integration/testdata/testsvc", "crash-after-ready")
	v2 := buildBin(t, "integration/testdata/testsvc", "v2")
	s := newService(t, v1, "svc")
	s.start("--workers", "2", "--worker-mode", "process")
	s.waitReady()
	l := runLoad(t, s, false)

	install(t, crashy, s.exe)
	s.reload()
	s.log.waitFor(t, 0, "WORKERS ROLLED BACK to the previous build", "generation=2")
	s.log.waitFor(t, 0, "rolling restart done", "generation=2")
	res := l.stop()
	t.Logf("load through the crash loop and the rollback: %s", res)
	for _, pid := range s.workerPIDs()[:2] {
		if body := s.servedBy(pid); !strings.Contains(body, "generation=2 version=v1") {
			t.Errorf("worker %d after the rollback: %q, want generation 2 running v1", pid, body)
		}
	}
	st := s.statusJSON()
	if !strings.Contains(st.Rollback, "crash loop") {
		t.Errorf("handoff status: rollback %q, want the crash loop named", st.Rollback)
	}
	if code, out, _ := s.handoff("status"); code != 0 || !strings.Contains(out, "ROLLED BACK") {
		t.Errorf("handoff status: exit %d, want the rollback shown:\n%s", code, out)
	}
	after := runLoad(t, s, false)
	after.advance(2000)
	after.finish()

	install(t, v2, s.exe)
	s.reload()
	s.log.waitFor(t, 0, "previous generation exited", "generation=3")
	for _, pid := range s.checkWorkers(2) {
		if body := s.servedBy(pid); !strings.Contains(body, "generation=3 version=v2") {
			t.Errorf("worker %d after the next upgrade: %q, want generation 3 running v2", pid, body)
		}
	}
	if st := s.statusJSON(); st.Rollback != "" {
		t.Errorf("generation 3 reports a rollback: %q", st.Rollback)
	}
}

// nonblocking reports whether descriptor fd of process pid has O_NONBLOCK,
// a flag of the open file description that every process sharing it sees.
func nonblocking(t *testing.T, pid, fd int) bool {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/fdinfo/%d", pid, fd))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "flags:"); ok {
			flags, err := strconv.ParseInt(strings.TrimSpace(v), 8, 64)
			if err != nil {
				t.Fatalf("fdinfo of %d/%d: %q", pid, fd, line)
			}
			return flags&syscall.O_NONBLOCK != 0
		}
	}
	t.Fatalf("fdinfo of %d/%d has no flags", pid, fd)
	return false
}

// nodeServer returns the path of node and examples/node/server.js, or
// skips the test without node, or with notify, without systemd-notify
// (with which a Node worker reports ready).
func nodeServer(t *testing.T, notify bool) (node string, src []byte) {
	t.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		t.Skip("node is not installed: skipping handoff run with examples/node (apt-get install nodejs)")
	}
	if _, err := exec.LookPath("systemd-notify"); err != nil && notify {
		t.Skip("systemd-notify is not installed: a Node worker cannot report ready (apt-get install systemd)")
	}
	src, err = os.ReadFile("../examples/node/server.js")
	if err != nil {
		t.Fatal(err)
	}
	return node, src
}
