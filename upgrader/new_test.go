//go:build unix

package upgrader

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gohandoff/handoff/control"
	"github.com/gohandoff/handoff/internal/handover"
	"github.com/gohandoff/handoff/pidfile"
)

// New, Listen, markReady and Stop on a fake handover (handover_test.go):
// the first generation and a generation started by an upgrade, in the
// test process.

// mustNew is newFakeUpgrader for a New that must succeed; the generation
// is stopped at the test's end.
func mustNew(t *testing.T, opts Options, h *fakeHandover) *Upgrader {
	t.Helper()
	u, err := newFakeUpgrader(t, opts, h)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(u.Stop)
	return u
}

// TestNewFillsDefaults: every option left zero gets its default, and every
// option set is kept, down to the smallest value.
func TestNewFillsDefaults(t *testing.T) {
	u := mustNew(t, Options{}, newFakeHandover(t))
	o := u.opts
	if o.UpgradeTimeout != DefaultUpgradeTimeout || o.DrainTimeout != DefaultDrainTimeout {
		t.Errorf("timeouts %v, %v; want %v, %v", o.UpgradeTimeout, o.DrainTimeout, DefaultUpgradeTimeout, DefaultDrainTimeout)
	}
	if o.Workers != runtime.GOMAXPROCS(0) {
		t.Errorf("workers %d, want GOMAXPROCS %d", o.Workers, runtime.GOMAXPROCS(0))
	}
	if o.WorkerMode != GoroutineWorkers || o.MaxDraining != DefaultMaxDraining || o.MaxDrainingPolicy != DrainingKillOldest {
		t.Errorf("mode %q, max draining %d %q", o.WorkerMode, o.MaxDraining, o.MaxDrainingPolicy)
	}
	if o.ControlSocket != "" || o.WorkersPIDFile != "" || o.ListenConfig != nil {
		t.Errorf("without a PID file or steering: control socket %q, workers PID file %q, listen config %v", o.ControlSocket, o.WorkersPIDFile, o.ListenConfig)
	}
	if u.Generation() != 1 || u.HasParent() {
		t.Errorf("first generation: generation %d, has parent %v", u.Generation(), u.HasParent())
	}

	lc := &net.ListenConfig{}
	set := Options{
		UpgradeTimeout: time.Nanosecond, DrainTimeout: time.Nanosecond, Workers: 1,
		WorkerMode: ProcessWorkers, MaxDraining: 1, MaxDrainingPolicy: DrainingRefuse,
		ControlSocket: "", WorkersPIDFile: "", KernelSteering: true, ListenConfig: lc,
		Logger: discardLogger(),
	}
	h := newFakeHandover(t)
	u2 := mustNew(t, set, h)
	o = u2.opts
	if o.UpgradeTimeout != time.Nanosecond || o.DrainTimeout != time.Nanosecond || o.Workers != 1 {
		t.Errorf("set values replaced: timeouts %v, %v, workers %d", o.UpgradeTimeout, o.DrainTimeout, o.Workers)
	}
	if o.WorkerMode != ProcessWorkers || o.MaxDraining != 1 || o.MaxDrainingPolicy != DrainingRefuse || o.ListenConfig != lc {
		t.Errorf("set values replaced: mode %q, max draining %d %q, listen config %p (want %p)", o.WorkerMode, o.MaxDraining, o.MaxDrainingPolicy, o.ListenConfig, lc)
	}
	if h.opts.UpgradeTimeout != time.Nanosecond || h.opts.ListenConfig != lc {
		t.Errorf("tableflip's options: %+v", h.opts)
	}
}

// TestNewDefaultsFromPIDFile: the control socket and the workers PID file
// sit beside the PID file unless given; kernel steering brings its own
// listen config.
func TestNewDefaultsFromPIDFile(t *testing.T) {
	dir := t.TempDir()
	pid := filepath.Join(dir, "svc.pid")
	u := mustNew(t, Options{PIDFile: pid, KernelSteering: true}, newFakeHandover(t))
	if u.opts.ControlSocket != control.SocketPath(pid) || u.opts.WorkersPIDFile != workersPIDFile(pid) {
		t.Errorf("control socket %q, workers PID file %q", u.opts.ControlSocket, u.opts.WorkersPIDFile)
	}
	if u.opts.ListenConfig == nil || u.opts.ListenConfig.Control == nil {
		t.Error("kernel steering without its listen config")
	}
	if _, err := os.Stat(u.opts.ControlSocket); err != nil {
		t.Errorf("control socket not listening: %v", err)
	}
	own := filepath.Join(dir, "own.sock")
	wp := filepath.Join(dir, "w.pids")
	u.Stop()
	u2 := mustNew(t, Options{PIDFile: pid, ControlSocket: own, WorkersPIDFile: wp}, newFakeHandover(t))
	if u2.opts.ControlSocket != own || u2.opts.WorkersPIDFile != wp {
		t.Errorf("given paths replaced: control socket %q, workers PID file %q", u2.opts.ControlSocket, u2.opts.WorkersPIDFile)
	}
}

// TestNewChecksPIDFilesOfFirstGenerationOnly: a first generation refuses a
// PID file naming a live process, and in process mode a workers PID file
// it must not replace; a generation started by an upgrade takes the PID
// file over from its parent, which is alive, and checks nothing.
func TestNewChecksPIDFilesOfFirstGenerationOnly(t *testing.T) {
	dir := t.TempDir()
	pid := filepath.Join(dir, "svc.pid")
	// A live process that is not this one: the test's parent.
	if err := pidfile.Write(pid, os.Getppid()); err != nil {
		t.Fatal(err)
	}
	_, err := newFakeUpgrader(t, Options{PIDFile: pid, ControlSocket: filepath.Join(dir, "a.sock")}, newFakeHandover(t))
	if err == nil || !strings.Contains(err.Error(), "already running as pid "+strconv.Itoa(os.Getppid())) {
		t.Fatalf("first generation with a live pid in its PID file: %v", err)
	}

	h := newFakeHandover(t)
	asNewGeneration(t, h, 1, deadPIDForTest(t))
	u, err := newFakeUpgrader(t, Options{PIDFile: pid, ControlSocket: filepath.Join(dir, "b.sock")}, h)
	if err != nil {
		t.Fatalf("new generation refused its parent's PID file: %v", err)
	}
	u.Stop()

	// A folder where the workers PID file goes: refused in process mode,
	// not looked at with goroutine workers.
	pid2 := filepath.Join(dir, "two.pid")
	folder := filepath.Join(dir, "workers")
	if err := os.Mkdir(folder, 0o755); err != nil {
		t.Fatal(err)
	}
	_, err = newFakeUpgrader(t, Options{PIDFile: pid2, WorkersPIDFile: folder, WorkerMode: ProcessWorkers, ControlSocket: filepath.Join(dir, "c.sock")}, newFakeHandover(t))
	if err == nil || !strings.Contains(err.Error(), folder) {
		t.Fatalf("process mode with a folder for the workers PID file: %v", err)
	}
	u, err = newFakeUpgrader(t, Options{PIDFile: pid2, WorkersPIDFile: folder, ControlSocket: filepath.Join(dir, "d.sock")}, newFakeHandover(t))
	if err != nil {
		t.Fatalf("goroutine mode looked at the workers PID file: %v", err)
	}
	u.Stop()
	// And a folder for the PID file itself.
	_, err = newFakeUpgrader(t, Options{PIDFile: folder, ControlSocket: filepath.Join(dir, "e.sock")}, newFakeHandover(t))
	if err == nil || !strings.Contains(err.Error(), folder) {
		t.Fatalf("a folder for the PID file: %v", err)
	}
}

// TestNewGenerationTakesParentsState: a generation started by an upgrade
// counts on from its parent's generation and knows its parent.
func TestNewGenerationTakesParentsState(t *testing.T) {
	h := newFakeHandover(t)
	ppid := deadPIDForTest(t)
	asNewGeneration(t, h, 4, ppid)
	u := mustNew(t, Options{}, h)
	if u.Generation() != 5 || u.ppid != ppid || !u.HasParent() {
		t.Errorf("generation %d, parent %d, has parent %v; want 5, %d, true", u.Generation(), u.ppid, u.HasParent(), ppid)
	}
	if os.Getenv(handover.ParentEnv) != "" {
		t.Error("tableflip's marker left in the environment of processes the service starts")
	}
	h.endParent()
	waitClosed(t, u.link, "the parent link once the parent ended it")
	waitClosed(t, u.parent, "the parent's exit (its pid is gone)")
}

// TestStopBeforeReadyLeavesInheritedSockets: a new generation stopped
// before it is ready (its parent still serves on the sockets it inherited)
// does not stop the handover, which would unlink the unix sockets, the
// control socket among them, under the parent; it aborts, and can no
// longer become ready.
func TestStopBeforeReadyLeavesInheritedSockets(t *testing.T) {
	h := newFakeHandover(t)
	asNewGeneration(t, h, 1, deadPIDForTest(t))
	u, err := newFakeUpgrader(t, Options{}, h)
	if err != nil {
		t.Fatal(err)
	}
	u.Stop()
	if _, stops, _ := h.counts(); stops != 0 {
		t.Fatal("a new generation stopped before ready stopped the handover (tableflip would unlink the parent's unix sockets)")
	}
	waitClosed(t, u.exit, "the generation's end after an abort")
	if err := u.markReady(); !errors.Is(err, ErrStopping) {
		t.Errorf("markReady after the abort: %v, want ErrStopping", err)
	}
	if readies, _, _ := h.counts(); readies != 0 {
		t.Error("an aborted generation told its parent it is ready")
	}
	u.Stop() // twice: no panic on the abort's close
}

// TestStopStopsHandover: a first generation, ready or not, and a new
// generation once ready stop the handover.
func TestStopStopsHandover(t *testing.T) {
	for _, tc := range []struct {
		name         string
		parent, read bool
	}{
		{"first generation, not ready", false, false},
		{"first generation, ready", false, true},
		{"new generation, ready", true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newFakeHandover(t)
			if tc.parent {
				asNewGeneration(t, h, 1, deadPIDForTest(t))
			}
			u, err := newFakeUpgrader(t, Options{}, h)
			if err != nil {
				t.Fatal(err)
			}
			if tc.read {
				if err := u.markReady(); err != nil {
					t.Fatal(err)
				}
			}
			u.Stop()
			if _, stops, _ := h.counts(); stops != 1 {
				t.Errorf("handover stopped %d times, want 1", stops)
			}
			waitClosed(t, u.exit, "the generation's end")
		})
	}
}

// TestMarkReady: ready means the PID file names this process, the state
// tells the previous generation who it is, the parent is told, and then
// (not before) the gate opens.
func TestMarkReady(t *testing.T) {
	dir := t.TempDir()
	pid := filepath.Join(dir, "svc.pid")
	h := newFakeHandover(t)
	asNewGeneration(t, h, 2, deadPIDForTest(t))
	u := mustNew(t, Options{PIDFile: pid, Version: "v-new"}, h)
	if isClosedChan(u.gate) || isClosedChan(u.Ready()) {
		t.Fatal("gate or ready open before markReady")
	}
	if err := u.markReady(); err != nil {
		t.Fatal(err)
	}
	if readies, _, _ := h.counts(); readies != 1 {
		t.Errorf("parent told %d times", readies)
	}
	if !isClosedChan(u.gate) || !isClosedChan(u.Ready()) || u.phase.get() != phaseReady {
		t.Errorf("after markReady: gate open %v, ready %v, phase %v", isClosedChan(u.gate), isClosedChan(u.Ready()), u.phase.get())
	}
	if pids, err := pidfile.Read(pid); err != nil || len(pids) != 1 || pids[0] != os.Getpid() {
		t.Errorf("PID file: %v, %v", pids, err)
	}
	st, err := u.state.read()
	if err != nil || st.Generation != 3 || st.PID != os.Getpid() || st.Version != "v-new" || !st.FirstStart.Equal(time.Unix(1e9, 0)) {
		t.Errorf("state for the parent: %+v, %v", st, err)
	}
}

// TestMarkReadyReportFails: when the parent cannot be told, the generation
// is not ready: the gate stays shut, so no worker accepts.
func TestMarkReadyReportFails(t *testing.T) {
	h := newFakeHandover(t)
	ppid := deadPIDForTest(t)
	asNewGeneration(t, h, 1, ppid)
	h.readyErr = errors.New("broken pipe")
	u := mustNew(t, Options{}, h)
	err := u.markReady()
	if err == nil || !strings.Contains(err.Error(), "report ready to parent pid "+strconv.Itoa(ppid)) || !strings.Contains(err.Error(), "broken pipe") {
		t.Fatalf("markReady: %v", err)
	}
	if isClosedChan(u.gate) || isClosedChan(u.Ready()) || u.isReady {
		t.Error("a generation whose parent was not told is ready")
	}
}

// TestListenRecordsSockets: each socket is asked for once, named for the
// next generation by the address it was asked with, and listed with the
// address it got.
func TestListenRecordsSockets(t *testing.T) {
	h := newFakeHandover(t)
	u := mustNew(t, Options{}, h)
	ln, err := u.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := u.Listen("tcp", "127.0.0.1:0"); err == nil || !strings.Contains(err.Error(), "already asked for") {
		t.Errorf("a second socket on the same address: %v", err)
	}
	pc, err := u.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := u.ListenPacket("udp", "127.0.0.1:0"); err == nil {
		t.Error("a second packet socket on the same address was given")
	}
	if _, err := u.Listen("tcp", "256.0.0.1:0"); err == nil || !strings.Contains(err.Error(), "listen on tcp 256.0.0.1:0") {
		t.Errorf("a bad address: %v", err)
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	want := []string{"tcp://" + ln.Addr().String(), "udp://" + pc.LocalAddr().String()}
	if strings.Join(u.addrs, " ") != strings.Join(want, " ") {
		t.Errorf("addresses %v, want %v", u.addrs, want)
	}
	if len(u.socks) != 2 || u.socks[0].name != fdName("tcp", "127.0.0.1:0") || u.socks[1].name != fdName("udp", "127.0.0.1:0") {
		t.Errorf("sockets for the next generation: %+v", u.socks)
	}
	if len(u.lns) != 1 || len(u.pcs) != 1 {
		t.Errorf("%d listeners, %d packet conns", len(u.lns), len(u.pcs))
	}
}

// TestListenInherits: a new generation gets the very socket its parent
// passed on, not a new one.
func TestListenInherits(t *testing.T) {
	h := newFakeHandover(t)
	asNewGeneration(t, h, 1, deadPIDForTest(t))
	parentLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer parentLn.Close()
	h.lns[handoverKey("tcp", "127.0.0.1:0")] = parentLn
	u := mustNew(t, Options{}, h)
	ln, err := u.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if ln != parentLn {
		t.Errorf("got %v, not the inherited %v", ln.Addr(), parentLn.Addr())
	}
}

// TestServeStopsOnContext: a first generation on the fake serves, reports
// ready once, and on its context's end drains, stops the handover and
// returns nil.
func TestServeStopsOnContext(t *testing.T) {
	h := newFakeHandover(t)
	u, addr, cancel, served := serveOnFake(t, h, Options{Workers: 2})
	if s, err := get(addr); s != "HTTP/1.0 404" {
		t.Errorf("a request to the ready generation: %q, %v", s, err)
	}
	cancel()
	select {
	case err := <-served:
		if err != nil {
			t.Errorf("Serve: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after its context ended")
	}
	if readies, stops, _ := h.counts(); readies != 1 || stops == 0 {
		t.Errorf("parent told %d times, handover stopped %d times; want 1, at least 1", readies, stops)
	}
	if u.phase.get() != phaseStopping {
		t.Errorf("phase %v after a stop", u.phase.get())
	}
}

// serveOnFake starts a first generation on h serving HTTP (404 to every
// request) and waits until it is ready. It returns the address and
// Serve's result.
func serveOnFake(t *testing.T, h *fakeHandover, opts Options) (*Upgrader, string, context.CancelFunc, <-chan error) {
	t.Helper()
	u := mustNew(t, opts, h)
	ln, err := u.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	srv := &HTTPServer{Server: &http.Server{Handler: http.NotFoundHandler()}}
	go func() {
		served <- u.Serve(ctx, srv.Worker)
		close(served) // for the cleanup, once the test has read it
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-served:
		case <-time.After(10 * time.Second):
			t.Error("Serve did not return at the test's end")
		}
	})
	waitClosed(t, u.Ready(), "ready")
	return u, ln.Addr().String(), cancel, served
}

// get sends one HTTP/1.0 request and returns the status line's start.
func get(addr string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte("GET / HTTP/1.0\r\n\r\n")); err != nil {
		return "", err
	}
	b := make([]byte, 12)
	n, err := c.Read(b)
	return string(b[:n]), err
}

// TestUpgradeHandsOverThenDrains: an upgrade whose new generation is
// ready reports it with the state it wrote, and by the time it is
// answered this generation accepts no more (the new one alone does);
// then it drains and Serve returns.
func TestUpgradeHandsOverThenDrains(t *testing.T) {
	h := newFakeHandover(t)
	u, addr, _, served := serveOnFake(t, h, Options{Workers: 2, Version: "v1"})
	if s, err := get(addr); s != "HTTP/1.0 404" {
		t.Fatalf("before the upgrade: %q, %v", s, err)
	}
	succ := deadPIDForTest(t)
	var during phase
	h.onUpgrade = func() error {
		during = u.phase.get()
		// What the new generation does before it tells tableflip it is
		// ready: write who it is into the shared state.
		return u.state.write(genState{Generation: 2, PID: succ, Version: "v2"})
	}
	res, err := u.Upgrade(context.Background())
	if err != nil {
		t.Fatalf("upgrade: %v", err)
	}
	if during != phaseUpgrading {
		t.Errorf("phase during the upgrade %v", during)
	}
	if res.OldPID != os.Getpid() || res.NewPID != succ || res.Generation != 2 || res.Version != "v2" || res.Duration <= 0 {
		t.Errorf("result %+v", res)
	}
	// The fake passes no socket on: a connection accepted now would be
	// this generation's.
	if s, err := get(addr); err == nil {
		t.Errorf("the old generation still accepted once the upgrade was answered: %q", s)
	}
	select {
	case err := <-served:
		if err != nil {
			t.Errorf("Serve after the upgrade: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the old generation did not drain and return after the upgrade")
	}
	if u.phase.get() != phaseDraining || u.handedOverTo() != succ {
		t.Errorf("after the handover: phase %v, successor %d", u.phase.get(), u.handedOverTo())
	}
	if _, _, ups := h.counts(); ups != 1 {
		t.Errorf("%d upgrades through the handover", ups)
	}
	if _, err := u.Upgrade(context.Background()); !errors.Is(err, ErrUpgraded) {
		t.Errorf("a second upgrade from a generation that handed over: %v, want ErrUpgraded", err)
	}
}

// TestUpgradeFailsAndServesOn: a new generation that dies before ready is
// reported as an *UpgradeError naming it, is killed if still there, and
// this generation serves on and can upgrade again.
func TestUpgradeFailsAndServesOn(t *testing.T) {
	h := newFakeHandover(t)
	u, addr, _, _ := serveOnFake(t, h, Options{Workers: 1})
	child := exec.Command("sleep", "60")
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	go func() { waited <- child.Wait() }()
	t.Cleanup(func() { child.Process.Kill() })
	h.onUpgrade = func() error {
		return &handover.ChildError{PID: child.Process.Pid, Status: "exit status 3"}
	}
	_, err := u.Upgrade(context.Background())
	var ue *UpgradeError
	if !errors.As(err, &ue) || !strings.Contains(err.Error(), strconv.Itoa(child.Process.Pid)) {
		t.Fatalf("upgrade: %v, want an *UpgradeError naming pid %d", err, child.Process.Pid)
	}
	select {
	case <-waited:
	case <-time.After(10 * time.Second):
		t.Error("the failed new generation was not killed")
	}
	if u.phase.get() != phaseReady || isClosedChan(u.exit) {
		t.Fatalf("after a failed upgrade: phase %v, exiting %v", u.phase.get(), isClosedChan(u.exit))
	}
	if s, err := get(addr); s != "HTTP/1.0 404" {
		t.Errorf("after a failed upgrade: %q, %v", s, err)
	}
	h.onUpgrade = nil
	if _, err := u.Upgrade(context.Background()); err != nil {
		t.Errorf("upgrade after a failed one: %v", err)
	}
}

// TestUpgraderRoll: a rolling restart is refused without worker processes,
// before ready, during an upgrade or another roll, and once stopping; a
// roll that stops at a failing replacement says so.
func TestUpgraderRoll(t *testing.T) {
	h := newFakeHandover(t)
	u := mustNew(t, Options{Workers: 1}, h)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	nop := func(string) {}
	if _, err := u.roll(ctx, nop); err == nil || !strings.Contains(err.Error(), "worker mode is goroutine") {
		t.Errorf("roll without worker processes: %v", err)
	}
	pp, _, setMode := procTestPool(t, 1, "ready")
	pp.start()
	waitClosed(t, pp.ready(), "pool ready")
	u.mu.Lock()
	u.pool = pp
	u.opts.WorkerMode = ProcessWorkers
	u.mu.Unlock()
	if _, err := u.roll(ctx, nop); !errors.Is(err, ErrNotReady) {
		t.Errorf("roll before ready: %v, want ErrNotReady", err)
	}
	if err := u.markReady(); err != nil {
		t.Fatal(err)
	}
	u.upgrading.Store(true)
	if _, err := u.roll(ctx, nop); !errors.Is(err, ErrUpgradeInProgress) {
		t.Errorf("roll during an upgrade: %v, want ErrUpgradeInProgress", err)
	}
	u.rolling.Store(true)
	if _, err := u.roll(ctx, nop); !errors.Is(err, ErrRollInProgress) {
		t.Errorf("roll during a roll: %v, want ErrRollInProgress", err)
	}
	u.rolling.Store(false)
	u.upgrading.Store(false)

	setMode("crash")
	if n, err := u.roll(ctx, nop); n != 0 || err == nil || !strings.Contains(err.Error(), "roll stopped at worker 0") {
		t.Errorf("roll onto a crashing build: %d, %v; want 0 and the failure", n, err)
	}
	if u.rolling.Load() || u.upgrading.Load() {
		t.Error("a failed roll left the roll or upgrade marked in progress")
	}
	setMode("ready")
	if n, err := u.roll(ctx, nop); n != 1 || err != nil {
		t.Errorf("roll: %d, %v; want 1 replaced", n, err)
	}
	u.Stop()
	if _, err := u.roll(ctx, nop); !errors.Is(err, ErrStopping) {
		t.Errorf("roll once stopping: %v, want ErrStopping", err)
	}
}

// TestServeRefusesWorkersItCannotStart: Serve fails, starting nothing,
// without a WorkerFunc in goroutine mode, with an unknown worker mode, and
// in process mode when two sockets would reach the workers under one name.
func TestServeRefusesWorkersItCannotStart(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name  string
		opts  Options
		fn    WorkerFunc
		socks []string
		want  string
	}{
		{"no WorkerFunc", Options{}, nil, nil, "needs a WorkerFunc"},
		{"unknown mode", Options{WorkerMode: "threads"}, func(context.Context, *Worker) error { return nil }, nil, `unknown worker mode "threads"`},
		{"one name for two sockets", Options{WorkerMode: ProcessWorkers, WorkerCommand: []string{"true"}},
			nil, []string{filepath.Join(dir, "a:b"), filepath.Join(dir, "a-b")}, "two sockets pass to workers under the name"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u := mustNew(t, tc.opts, newFakeHandover(t))
			for _, path := range tc.socks {
				if _, err := u.Listen("unix", path); err != nil {
					t.Fatal(err)
				}
			}
			err := u.Serve(context.Background(), tc.fn)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Serve: %v, want %q", err, tc.want)
			}
			if isClosedChan(u.Ready()) {
				t.Error("ready after a refused Serve")
			}
		})
	}
}

// TestStopAcceptingKeepsSocketsFirst: with a probation, the sockets the
// stand-by would restore with are copied before the accept loops end and
// close them: copies of the very listening socket, still listening.
// Without a probation nothing is kept.
func TestStopAcceptingKeepsSocketsFirst(t *testing.T) {
	for _, probation := range []time.Duration{time.Minute, 0} {
		t.Run(fmt.Sprint("probation ", probation), func(t *testing.T) {
			u, addr, _, _ := serveOnFake(t, newFakeHandover(t), Options{Workers: 1, Probation: probation})
			u.stopAccepting()
			u.mu.Lock()
			k := u.kept
			u.mu.Unlock()
			if probation == 0 {
				if k != nil {
					t.Fatalf("%d sockets kept without a probation", len(k.files))
				}
				return
			}
			if k == nil || len(k.files) != 1 {
				t.Fatalf("kept %+v before the accept loops ended, want the one listener", k)
			}
			ln, err := net.FileListener(k.files[0])
			if err != nil {
				t.Fatalf("the kept socket: %v", err)
			}
			defer ln.Close()
			if ln.Addr().String() != addr {
				t.Errorf("kept a socket on %v, want %v", ln.Addr(), addr)
			}
		})
	}
}

// TestNewTakesWorkerRole: in a process its master started as a worker,
// New returns the worker side and starts no handover; a bad worker
// marker is refused, not taken for a master.
func TestNewTakesWorkerRole(t *testing.T) {
	for _, v := range []string{workerEnv, "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET"} {
		t.Setenv(v, "")
		os.Unsetenv(v)
	}
	t.Setenv(workerEnv, "x:7")
	h := newFakeHandover(t)
	if u, err := newFakeUpgrader(t, Options{}, h); err == nil || !strings.Contains(err.Error(), "is not ID:GENERATION") {
		t.Fatalf("bad worker marker: %v (an Upgrader: %v); want refused", err, u != nil)
	}
	t.Setenv(workerEnv, "2:7")
	u, err := newFakeUpgrader(t, Options{}, h)
	if err != nil {
		t.Fatal(err)
	}
	defer u.Stop()
	if u.worker == nil || u.worker.id != 2 || u.gen != 7 {
		t.Fatalf("worker marker 2:7: worker %+v, generation %d; want worker 2 of generation 7", u.worker, u.gen)
	}
	if _, ok := u.as().(workerRole); !ok {
		t.Fatalf("a worker process's role is %T, want workerRole", u.as())
	}
	if h.opts.UpgradeTimeout != 0 {
		t.Error("a worker started a handover of its own")
	}
}

// TestReadyCountsUpgrade: a new generation's ready is a successful
// upgrade in the stats; the first generation's is not.
func TestReadyCountsUpgrade(t *testing.T) {
	for _, parent := range []bool{false, true} {
		h := newFakeHandover(t)
		if parent {
			asNewGeneration(t, h, 1, deadPIDForTest(t))
		}
		u := mustNew(t, Options{}, h)
		if err := u.markReady(); err != nil {
			t.Fatal(err)
		}
		want := uint64(0)
		if parent {
			want = 1
		}
		if got := u.Stats().Upgrades[resultSuccess]; got != want {
			t.Errorf("new generation %v: %d successful upgrades counted at ready, want %d", parent, got, want)
		}
	}
}

// TestCheckPathsRefuses: with a valid drain policy, every other check
// still runs: too many workers, a control socket path too long to bind,
// and two files at one path; options without any of these pass.
func TestCheckPathsRefuses(t *testing.T) {
	long := "/" + strings.Repeat("s", maxSocketPath)
	for _, tc := range []struct {
		name string
		opts Options
		want string // "" for no error
	}{
		{"fine", Options{Workers: MaxWorkers, PIDFile: "a.pid", ControlSocket: "a.sock", WorkersPIDFile: "a.workers.pid", WorkerMode: ProcessWorkers}, ""},
		{"bad policy", Options{MaxDrainingPolicy: "nope"}, `max draining policy "nope"`},
		{"too many workers", Options{Workers: MaxWorkers + 1}, "100001 workers, more than the 100000 allowed"},
		{"long socket path", Options{ControlSocket: long}, "longer than the 107 a unix socket takes"},
		{"PID file is the socket", Options{PIDFile: "run/a", ControlSocket: "run/./a"}, "the PID file and the control socket are both run/a"},
		{"workers PID file is the PID file", Options{PIDFile: "a.pid", WorkersPIDFile: "a.pid", WorkerMode: ProcessWorkers}, "the PID file and the workers PID file are both a.pid"},
		{"workers PID file unused with goroutines", Options{PIDFile: "a.pid", WorkersPIDFile: "a.pid"}, ""},
	} {
		if tc.opts.MaxDrainingPolicy == "" {
			tc.opts.MaxDrainingPolicy = DrainingKillOldest
		}
		err := checkPaths(tc.opts)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case tc.want != "" && (!errors.Is(err, ErrInvalidOptions) || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: %v, want ErrInvalidOptions with %q", tc.name, err, tc.want)
		}
	}
}
