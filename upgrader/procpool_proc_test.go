//go:build linux

package upgrader

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gohandoff/handoff/internal/supervise"
	"github.com/oklog/run"
)

// The process pool with real worker processes: this test binary re-run as
// a fake worker (TestFakeWorkerProcess) that does what its mode file says.

// fakeWorkerEnv names the mode file of a fake worker process;
// fakeEventsEnv the test's datagram socket it reports events on.
const (
	fakeWorkerEnv = "HANDOFF_TEST_FAKE_WORKER"
	fakeEventsEnv = "HANDOFF_TEST_FAKE_EVENTS"
)

// TestFakeWorkerProcess is not a test: it is the fake worker, run by the
// process pool tests through the pool's own /bin/sh wrapper. Modes:
//
//	ready     READY=1, then exit 0 at SIGTERM or the lifeline's EOF
//	hang      never ready; exit 0 at SIGTERM
//	quiet     no notification (a ready delay makes it ready)
//	stubborn  READY=1, then ignore SIGTERM (only SIGKILL ends it)
//	deaf      never ready, and ignore SIGTERM
//	crash     exit 3 at once
//
// It reports each gate byte and each SIGTERM on the test's events socket
// (not its NOTIFY_SOCKET: a drain removes that): "fake pid=PID gate open",
// "fake pid=PID sigterm".
func TestFakeWorkerProcess(t *testing.T) {
	path := os.Getenv(fakeWorkerEnv)
	if path == "" {
		return
	}
	b, err := os.ReadFile(path)
	if err != nil {
		os.Exit(10)
	}
	os.Exit(fakeWorker(strings.TrimSpace(string(b))))
}

func fakeWorker(mode string) int {
	if mode == "crash" {
		return 3
	}
	term := make(chan os.Signal, 4)
	signal.Notify(term, syscall.SIGTERM)
	send := func(path, s string) {
		if path != "" {
			if c, err := net.Dial("unixgram", path); err == nil {
				c.Write([]byte(s))
				c.Close()
			}
		}
	}
	notify := func(s string) { send(os.Getenv("NOTIFY_SOCKET"), s) }
	event := func(s string) { send(os.Getenv(fakeEventsEnv), fmt.Sprintf("fake pid=%d %s\n", os.Getpid(), s)) }
	if mode == "ready" || mode == "stubborn" {
		notify("READY=1")
	}
	eof := make(chan struct{})
	go func() {
		b := make([]byte, 64)
		for {
			n, err := os.Stdin.Read(b)
			if bytes.IndexByte(b[:n], gateOpen) >= 0 {
				event("gate open")
			}
			if err != nil {
				close(eof)
				return
			}
		}
	}()
	for {
		select {
		case <-term:
			event("sigterm")
			if mode != "stubborn" && mode != "deaf" {
				return 0
			}
		case <-eof:
			if mode != "stubborn" && mode != "deaf" {
				return 0
			}
		}
	}
}

// procTestPool is testProcPool's pool whose workers are fake worker
// processes in mode; setMode changes the mode of the next ones started.
// Every process it starts is killed and reaped at the end of the test.
func procTestPool(t *testing.T, n int, mode string) (pp *procPool, logs *logLines, setMode func(string)) {
	t.Helper()
	pp, logs = testProcPool(t, n)
	modeFile := filepath.Join(t.TempDir(), "mode")
	setMode = func(m string) {
		if err := os.WriteFile(modeFile, []byte(m), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	setMode(mode)
	t.Setenv(fakeWorkerEnv, modeFile)
	evPath := filepath.Join(t.TempDir(), "ev")
	ev, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: evPath, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	evDone := make(chan struct{})
	go func() {
		defer close(evDone)
		b := make([]byte, 512)
		for {
			n, err := ev.Read(b)
			if err != nil {
				return
			}
			logs.Write(b[:n])
		}
	}()
	t.Setenv(fakeEventsEnv, evPath)
	pp.spec.argv = []string{os.Args[0], "-test.run=^TestFakeWorkerProcess$"}
	t.Cleanup(func() {
		// No respawn after the test, unless a drain said so already.
		pp.drainOnce.Do(func() {
			pp.mu.Lock()
			close(pp.draining)
			pp.mu.Unlock()
		})
		pp.mu.Lock()
		for p := range pp.procs {
			p.cmd.Process.Kill()
		}
		pp.mu.Unlock()
		pp.live.Wait()
		ev.Close()
		<-evDone
	})
	return pp, logs, setMode
}

// fakeEvent is the log line of a fake worker's event.
func fakeEvent(pid int, what string) string { return fmt.Sprintf("fake pid=%d %s", pid, what) }

func waitClosed(t *testing.T, c <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-c:
	case <-time.After(20 * time.Second):
		t.Fatalf("%s: not within 20s", what)
	}
}

func pidsOf(t *testing.T, pp *procPool) []int {
	t.Helper()
	var pids []int
	for _, st := range pp.status() {
		pids = append(pids, st.PID)
	}
	return pids
}

// TestProcPoolServesReplacesAndDrains: the pool starts its workers, is
// ready once each says READY=1, opens their gate, lists them in the
// workers PID file; a worker killed is replaced at once and its slot's
// ready not counted again; the drain asks each to stop with SIGTERM (no
// SIGKILL for a worker that exits), lets go of the master's sockets,
// removes the PID file and starts no worker any more.
func TestProcPoolServesReplacesAndDrains(t *testing.T) {
	pp, logs, _ := procTestPool(t, 2, "ready")
	pp.open, pp.publish = true, true
	pp.pidFile = filepath.Join(t.TempDir(), "w.pid")
	socketsClosed := make(chan struct{})
	pp.closeSockets = func() { close(socketsClosed) }
	if err := pp.start(); err != nil {
		t.Fatal(err)
	}
	waitClosed(t, pp.ready(), "pool ready")
	first := pidsOf(t, pp)
	if len(first) != 2 || first[0] == 0 || first[1] == 0 || first[0] == first[1] {
		t.Fatalf("workers %v, want 2 processes", first)
	}
	logs.waitFor(t, 1, fakeEvent(first[0], "gate open"))
	logs.waitFor(t, 1, fakeEvent(first[1], "gate open"))
	if got, err := readPIDFile(pp.pidFile); err != nil || !slices.Equal(got, first) {
		t.Fatalf("workers PID file %v (%v), want %v", got, err, first)
	}

	syscall.Kill(first[0], syscall.SIGKILL)
	logs.waitFor(t, 1, "worker died, replacing it", "worker=0", "signal: killed")
	logs.waitFor(t, 2, "msg=\"worker ready\"", "worker=0")
	st := pp.status()
	if st[0].PID == first[0] || st[0].PID == 0 || st[0].Restarts != 1 || st[0].LastErr != "signal: killed" || st[1].PID != first[1] {
		t.Fatalf("after worker 0 was killed: %+v", st)
	}
	if pp.nready.N() != 2 {
		t.Errorf("%d slots counted ready, want 2", pp.nready.N())
	}
	logs.waitFor(t, 1, fakeEvent(st[0].PID, "gate open"))
	if got, _ := readPIDFile(pp.pidFile); !slices.Equal(got, []int{st[0].PID, first[1]}) {
		t.Errorf("workers PID file %v after the restart, want %v", got, []int{st[0].PID, first[1]})
	}

	procs := []*workerProc{pp.slots[0].cur, pp.slots[1].cur}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := pp.drain(ctx); err != nil {
		t.Fatalf("drain: %v", err)
	}
	waitClosed(t, socketsClosed, "master's sockets closed")
	for _, p := range procs {
		if p.err != nil {
			t.Errorf("worker %d: %v, want exit 0 at SIGTERM", p.pid, p.err)
		}
	}
	for _, p := range procs {
		logs.waitFor(t, 1, fakeEvent(p.pid, "sigterm"))
	}
	if logs.count("killing it") > 0 {
		t.Errorf("the drain did not stop each worker with SIGTERM alone; the log:\n%s", logs)
	}
	if _, err := os.Stat(pp.pidFile); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("workers PID file left after the drain: %v", err)
	}
	if _, err := os.Stat(pp.spec.dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("notify socket folder left after the drain: %v", err)
	}
	if pp.cutCount() != 0 || pp.progress().Left != 0 {
		t.Errorf("after a clean drain: cut %d, left %d", pp.cutCount(), pp.progress().Left)
	}
	if err := os.Mkdir(pp.spec.dir, 0o700); err != nil { // the drain removed it
		t.Fatal(err)
	}
	if _, err := pp.spawn(0, false); !errors.Is(err, errPoolDraining) {
		t.Errorf("spawn after the drain: %v, want errPoolDraining", err)
	}
}

// TestProcPoolGateClosedUntilOpen: a generation started by an upgrade
// opens no gate before it is ready; openGate opens it for every worker.
func TestProcPoolGateClosedUntilOpen(t *testing.T) {
	pp, logs, _ := procTestPool(t, 1, "ready")
	pp.start()
	waitClosed(t, pp.ready(), "pool ready")
	if logs.count("gate open") > 0 {
		t.Fatal("gate opened before the generation is ready")
	}
	pp.openGate()
	logs.waitFor(t, 1, fakeEvent(pidsOf(t, pp)[0], "gate open"))
}

// TestProcPoolCrashLoopFailsUpgrade: a worker that dies at once, in a
// generation started by an upgrade, makes a crash loop that fails the
// generation before it is ready, through the start failure actor.
func TestProcPoolCrashLoopFailsUpgrade(t *testing.T) {
	pp, logs, _ := procTestPool(t, 1, "crash")
	pp.failFast = true
	var g run.Group
	addStartFailureActor(&g, pp)
	stop := make(chan struct{})
	g.Add(func() error { <-stop; return nil }, func(error) { close(stop) })
	pp.start()
	errc := make(chan error, 1)
	go func() { errc <- g.Run() }()
	var err error
	select {
	case err = <-errc:
	case <-time.After(20 * time.Second):
		t.Fatalf("no failure; the log:\n%s", logs)
	}
	if err == nil || !strings.Contains(err.Error(), "worker 0 in a crash loop before this generation was ready: exit status 3") {
		t.Fatalf("run: %v", err)
	}
	if st := pp.status(); st[0].Restarts != CrashLoopDeaths-1 || st[0].State != string(supervise.CrashLoop) && st[0].State != string(supervise.CrashLoop)+"/"+string(supervise.Starting) {
		t.Errorf("status %+v: want %d restarts, in a crash loop", st[0], CrashLoopDeaths-1)
	}
	select {
	case <-pp.ready():
		t.Error("pool ready")
	default:
	}
}

// TestStartFailureActorOnlyWithFailFast: the first generation, or a
// goroutine pool, keeps retrying: no actor.
func TestStartFailureActorOnlyWithFailFast(t *testing.T) {
	pp, _ := testProcPool(t, 1)
	for _, p := range []workers{pp, &pool{}} {
		var g run.Group
		addStartFailureActor(&g, p)
		if err := g.Run(); err != nil { // a group without actors returns at once
			t.Errorf("%T without fail fast: %v", p, err)
		}
	}
}

// TestProcPoolKillsWorkerNotReadyInTime: a worker that does not say ready
// within the ready timeout is killed, and the reason is its error.
func TestProcPoolKillsWorkerNotReadyInTime(t *testing.T) {
	pp, logs, _ := procTestPool(t, 1, "hang")
	pp.readyTimeout = 300 * time.Millisecond
	pp.start()
	logs.waitFor(t, 1, "worker died, replacing it", "not ready within 300ms, killed (signal: killed)")
	select {
	case <-pp.ready():
		t.Fatal("a worker that never said ready made the pool ready")
	default:
	}
}

// TestProcPoolReadyDelay: with a ready delay, a worker that never
// notifies is ready once up for it.
func TestProcPoolReadyDelay(t *testing.T) {
	pp, logs, _ := procTestPool(t, 1, "quiet")
	pp.readyDelay = 100 * time.Millisecond
	pp.start()
	waitClosed(t, pp.ready(), "pool ready after the delay")
	if logs.count("not ready in time") > 0 {
		t.Error("killed instead")
	}
}

// TestProcPoolRoll: a roll replaces each worker by a ready one, then
// drains the old with SIGTERM; it stops at a replacement that dies, or is
// not ready in time, and keeps the workers not replaced; one roll at a
// time.
func TestProcPoolRoll(t *testing.T) {
	pp, _, setMode := procTestPool(t, 2, "ready")
	pp.publish, pp.pidFile = true, filepath.Join(t.TempDir(), "w.pid")
	pp.start()
	waitClosed(t, pp.ready(), "pool ready")
	old := []*workerProc{pp.slots[0].cur, pp.slots[1].cur}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var msgs []string
	n, err := pp.roll(ctx, func(m string) { msgs = append(msgs, m) })
	if n != 2 || err != nil {
		t.Fatalf("roll: %d, %v; want 2 replaced", n, err)
	}
	for i, p := range old {
		waitClosed(t, p.exited, "old worker exited")
		if p.err != nil {
			t.Errorf("old worker %d: %v, want exit 0 at SIGTERM", i, p.err)
		}
		if len(msgs) != 2 || !strings.Contains(msgs[i], "old pid "+strconv.Itoa(p.pid)+" draining") {
			t.Errorf("roll progress %q", msgs)
		}
	}
	rolled := pidsOf(t, pp)
	if len(rolled) != 2 || slices.Contains(rolled, old[0].pid) || slices.Contains(rolled, old[1].pid) || slices.Contains(rolled, 0) {
		t.Fatalf("workers after the roll %v, old %d %d", rolled, old[0].pid, old[1].pid)
	}
	if got, _ := readPIDFile(pp.pidFile); !slices.Equal(got, rolled) {
		t.Errorf("workers PID file %v after the roll, want %v", got, rolled)
	}
	if pp.nready.N() != 2 || pp.slots[0].Restarts != 0 {
		t.Errorf("a roll counted as deaths or readies: %d ready, %d restarts", pp.nready.N(), pp.slots[0].Restarts)
	}

	setMode("crash")
	n, err = pp.roll(ctx, func(string) {})
	if n != 0 || err == nil || !strings.Contains(err.Error(), "roll stopped at worker 0: replacement pid") ||
		!strings.Contains(err.Error(), "exited before ready: exit status 3; workers 0 to 1 keep serving") {
		t.Fatalf("roll to a crashing build: %d, %v", n, err)
	}
	if got := pidsOf(t, pp); !slices.Equal(got, rolled) {
		t.Fatalf("workers %v after a failed roll, want %v kept", got, rolled)
	}

	setMode("hang")
	short, cancelShort := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancelShort()
	n, err = pp.roll(short, func(string) {})
	if n != 0 || err == nil || !strings.Contains(err.Error(), "not ready: context deadline exceeded") {
		t.Fatalf("roll to a build never ready: %d, %v", n, err)
	}
	pp.mu.Lock()
	repl := pp.slots[0].next
	pp.mu.Unlock()
	if repl != nil { // the replacement, stopped with SIGTERM (before its handler, if slow to start)
		waitClosed(t, repl.exited, "replacement not ready in time stopped")
		if repl.err != nil && repl.err.Error() != "signal: terminated" {
			t.Errorf("replacement not ready in time: %v, want stopped by SIGTERM", repl.err)
		}
	}
	if got := pidsOf(t, pp); !slices.Equal(got, rolled) {
		t.Fatalf("workers %v after a roll not ready in time, want %v kept", got, rolled)
	}

	pp.mu.Lock()
	pp.rolling = true
	pp.mu.Unlock()
	if _, err := pp.roll(ctx, func(string) {}); !errors.Is(err, ErrRollInProgress) {
		t.Errorf("second roll: %v, want ErrRollInProgress", err)
	}
}

// TestProcPoolRollKillsStubbornOldWorker: an old worker still running
// the drain timeout and workerCutGrace after its SIGTERM is killed.
func TestProcPoolRollKillsStubbornOldWorker(t *testing.T) {
	pp, logs, setMode := procTestPool(t, 1, "stubborn")
	pp.drainTimeout = 100 * time.Millisecond
	pp.start()
	waitClosed(t, pp.ready(), "pool ready")
	old := pp.slots[0].cur
	setMode("ready")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := pp.roll(ctx, func(string) {}); err != nil {
		t.Fatal(err)
	}
	waitClosed(t, old.exited, "old stubborn worker killed")
	if old.err == nil || !strings.Contains(old.err.Error(), "signal: killed") {
		t.Errorf("old worker: %v, want killed", old.err)
	}
	logs.waitFor(t, 1, "worker still running after its drain timeout, killing it", "timeout=1.1s")
}

// TestProcPoolDrainKillsStubbornWorker: at the drain timeout the workers
// get a second SIGTERM, and those left after workerCutGrace are killed,
// and counted as cut.
func TestProcPoolDrainKillsStubbornWorker(t *testing.T) {
	pp, logs, _ := procTestPool(t, 1, "stubborn")
	pp.start()
	waitClosed(t, pp.ready(), "pool ready")
	p := pp.slots[0].cur
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := pp.drain(ctx); err != nil {
		t.Fatalf("drain: %v", err)
	}
	if p.err == nil || !strings.Contains(p.err.Error(), "signal: killed") {
		t.Errorf("stubborn worker: %v, want killed", p.err)
	}
	logs.waitFor(t, 2, fakeEvent(p.pid, "sigterm"))
	if pp.cutCount() != 1 || logs.count("drain timeout: worker processes killed", "killed=1") != 1 {
		t.Errorf("cut %d; the log:\n%s", pp.cutCount(), logs)
	}
}

// TestProcPoolRollKillsStubbornReplacement: a replacement not ready in
// time that ignores SIGTERM is killed the drain timeout and
// workerCutGrace after it.
func TestProcPoolRollKillsStubbornReplacement(t *testing.T) {
	pp, logs, setMode := procTestPool(t, 1, "ready")
	pp.drainTimeout = 100 * time.Millisecond
	pp.start()
	waitClosed(t, pp.ready(), "pool ready")
	setMode("deaf")
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	var repl *workerProc
	_, err := pp.roll(ctx, func(string) {})
	pp.mu.Lock()
	repl = pp.slots[0].next
	pp.mu.Unlock()
	if err == nil || repl == nil {
		t.Fatalf("roll to a build never ready: %v, replacement %v", err, repl)
	}
	waitClosed(t, repl.exited, "stubborn replacement killed")
	logs.waitFor(t, 1, "worker still running after its drain timeout, killing it", "worker_pid="+strconv.Itoa(repl.pid), "timeout=1.1s")
}

// TestProcPoolUnpublishedLeavesWorkersPIDFile: while the workers PID
// file is not this generation's (a new one takes over), the pool neither
// writes it nor removes it at its drain.
func TestProcPoolUnpublishedLeavesWorkersPIDFile(t *testing.T) {
	pp, _, _ := procTestPool(t, 1, "ready")
	pp.pidFile = filepath.Join(t.TempDir(), "w.pid")
	if err := writePIDFile(pp.pidFile, 1); err != nil { // the new generation's
		t.Fatal(err)
	}
	pp.start()
	waitClosed(t, pp.ready(), "pool ready")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := pp.drain(ctx); err != nil {
		t.Fatal(err)
	}
	if got, err := readPIDFile(pp.pidFile); err != nil || !slices.Equal(got, []int{1}) {
		t.Errorf("workers PID file %v (%v) after an unpublished pool ran and drained, want the other generation's [1]", got, err)
	}
}

// TestPublishWorkers: the Upgrader turns its process pool's PID file on
// and off; a goroutine pool has none.
func TestPublishWorkers(t *testing.T) {
	pp, _ := testProcPool(t, 1)
	u := &Upgrader{pool: pp}
	u.publishWorkers(true)
	if !pp.publish {
		t.Error("publishWorkers(true) left the pool unpublished")
	}
	u.publishWorkers(false)
	if pp.publish {
		t.Error("publishWorkers(false) left the pool published")
	}
	(&Upgrader{pool: &pool{}}).publishWorkers(true) // nothing to publish
}
