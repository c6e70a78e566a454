//go:build linux

package upgrader

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The worker side of process mode (worker.go), in this process: the
// worker role taken from the environment, the inherited sockets, and
// serveWorker's gate, lifeline and ready report.

// TestTakeWorkerRole: the worker marker is ID:GENERATION, removed once
// read with NOTIFY_SOCKET; sockets passed for another process (LISTEN_PID
// not this one) are refused, LISTEN_PID without sockets is not.
func TestTakeWorkerRole(t *testing.T) {
	for _, v := range []string{workerEnv, "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET"} {
		t.Setenv(v, "")
		os.Unsetenv(v)
	}
	if w, gen, err := takeWorkerRole(); w != nil || gen != 0 || err != nil {
		t.Fatalf("no marker: %v, %d, %v; want no worker role", w, gen, err)
	}
	for _, v := range []string{"x:7", "2:y", "2"} {
		os.Setenv(workerEnv, v)
		if _, _, err := takeWorkerRole(); err == nil || !strings.Contains(err.Error(), "is not ID:GENERATION") {
			t.Errorf("marker %q: %v, want refused", v, err)
		}
	}
	os.Setenv(workerEnv, "2:7")
	os.Setenv("LISTEN_FDS", "1")
	os.Setenv("LISTEN_PID", "1")
	if _, _, err := takeWorkerRole(); err == nil || !strings.Contains(err.Error(), "LISTEN_PID=1 is not this process") {
		t.Errorf("sockets passed to pid 1: %v, want refused", err)
	}
	os.Unsetenv("LISTEN_FDS")
	for _, pid := range []string{"1", ""} { // LISTEN_PID alone, or none (set to this process)
		os.Setenv(workerEnv, "2:7")
		os.Unsetenv("LISTEN_PID")
		if pid != "" {
			os.Setenv("LISTEN_PID", pid)
		}
		os.Setenv("NOTIFY_SOCKET", "/run/master/w2.sock")
		w, gen, err := takeWorkerRole()
		if err != nil {
			t.Fatalf("LISTEN_PID %q, no sockets: %v", pid, err)
		}
		if w.lifeline != nil {
			w.lifeline.Close()
		}
		if w.id != 2 || gen != 7 || w.notify != "/run/master/w2.sock" || len(w.files) != 0 {
			t.Errorf("worker %d, generation %d, notify %q, %d sockets", w.id, gen, w.notify, len(w.files))
		}
		for _, v := range []string{workerEnv, "NOTIFY_SOCKET"} {
			if _, ok := os.LookupEnv(v); ok {
				t.Errorf("%s left in the worker's environment", v)
			}
		}
	}
}

// TestWorkerSockets: Listen and ListenPacket return each inherited socket
// once, by its name; another is refused, naming it.
func TestWorkerSockets(t *testing.T) {
	ln, pc := tcpAndUDP(t)
	lf, _ := ln.(*net.TCPListener).File()
	pf, _ := pc.(*net.UDPConn).File()
	w := &workerSide{files: map[string]*os.File{fdName("tcp", "127.0.0.1:0"): lf, fdName("udp", "127.0.0.1:0"): pf}}

	l2, err := w.listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	defer l2.Close()
	if l2.Addr().String() != ln.Addr().String() {
		t.Errorf("listener on %s, want the inherited %s", l2.Addr(), ln.Addr())
	}
	p2, err := w.listenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listenPacket: %v", err)
	}
	defer p2.Close()
	if p2.LocalAddr().String() != pc.LocalAddr().String() {
		t.Errorf("packet conn on %s, want the inherited %s", p2.LocalAddr(), pc.LocalAddr())
	}
	if _, err := w.listen("tcp", "127.0.0.1:0"); err == nil || !strings.Contains(err.Error(), `no inherited socket "tcp-127.0.0.1-0"`) {
		t.Errorf("the same socket twice: %v", err)
	}
	if _, err := w.listenPacket("udp", ":53"); err == nil || !strings.Contains(err.Error(), `no inherited socket "udp--53"`) {
		t.Errorf("a socket not passed: %v", err)
	}
}

// testWorker is the Upgrader of a worker process, serving ln with a worker
// that answers "hi" to each connection; lifeline is the master's end of
// the lifeline (nil: the worker has none).
type testWorker struct {
	u        *Upgrader
	logs     *logLines
	lifeline *os.File
	ln       net.Listener
	done     chan error
}

func startTestWorker(t *testing.T, withLifeline bool, notify string) *testWorker {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tw := &testWorker{logs: newLogLines(), ln: ln, done: make(chan error, 1)}
	w := &workerSide{id: 3, files: map[string]*os.File{}, notify: notify, stopC: make(chan struct{}), gate: make(chan struct{})}
	if withLifeline {
		r, wr, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		w.lifeline, tw.lifeline = r, wr
		t.Cleanup(func() { r.Close(); wr.Close() })
	}
	tw.u = newWorker(Options{Logger: tw.logs.logger(), DrainTimeout: 5 * time.Second}, w, 4)
	tw.u.lns = []net.Listener{ln}
	fn := func(ctx context.Context, w *Worker) error {
		w.Ready()
		for {
			c, err := w.Listeners[0].Accept()
			if err != nil {
				<-w.Draining()
				return nil
			}
			c.Write([]byte("hi"))
			c.Close()
		}
	}
	go func() { tw.done <- tw.u.serveWorker(context.Background(), fn) }()
	t.Cleanup(func() {
		tw.u.Stop()
		select {
		case <-tw.done:
		case <-time.After(20 * time.Second):
			t.Error("worker did not stop")
		}
	})
	return tw
}

// answered dials the worker and waits for its answer.
func (tw *testWorker) answered(t *testing.T) {
	t.Helper()
	c, err := net.Dial("tcp", tw.ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	if b, err := io.ReadAll(c); err != nil || string(b) != "hi" {
		t.Fatalf("worker answered %q, %v", b, err)
	}
}

func (tw *testWorker) wait(t *testing.T) error {
	t.Helper()
	select {
	case err := <-tw.done:
		tw.done <- err // for the cleanup
		return err
	case <-time.After(20 * time.Second):
		t.Fatalf("serveWorker did not return; the log:\n%s", tw.logs)
		return nil
	}
}

// TestServeWorkerGateAndStop: a worker tells its master READY=1 on the
// NOTIFY_SOCKET it was given, accepts once the master writes the gate byte
// on the lifeline (and keeps serving), and drains at its stop.
func TestServeWorkerGateAndStop(t *testing.T) {
	notify := filepath.Join(t.TempDir(), "notify")
	nc, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notify, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	tw := startTestWorker(t, true, notify)
	if got := nextNotification(t, nc); got != "READY=1" {
		t.Fatalf("the master was told %q, want READY=1", got)
	}
	select {
	case <-tw.u.worker.gate:
		t.Fatal("gate open before the master said so")
	default:
	}
	tw.lifeline.Write([]byte{gateOpen})
	tw.answered(t)
	tw.answered(t)
	tw.u.Stop()
	if err := tw.wait(t); err != nil {
		t.Fatalf("serveWorker: %v", err)
	}
	select {
	case <-tw.u.force:
		t.Error("a stop taken for the master's death")
	default:
	}
	if tw.logs.count("master gone") > 0 || tw.logs.count(`msg="worker exited"`) != 1 || tw.logs.count("worker failed") > 0 {
		t.Errorf("the log:\n%s", tw.logs)
	}
}

// TestServeWorkerMasterGone: EOF on the lifeline stops the worker at once
// (the drain forced), and bytes other than the gate byte open no gate.
func TestServeWorkerMasterGone(t *testing.T) {
	tw := startTestWorker(t, true, "")
	tw.lifeline.Write([]byte("xyz"))
	tw.lifeline.Close()
	tw.wait(t)
	select {
	case <-tw.u.force:
	default:
		t.Error("the master's death did not force the drain")
	}
	select {
	case <-tw.u.worker.gate:
		t.Error("gate opened by bytes other than the gate byte")
	default:
	}
	if tw.logs.count("master gone, worker stopping at once") != 1 {
		t.Errorf("the log:\n%s", tw.logs)
	}
}

// TestServeWorkerWithoutLifeline: a worker with no lifeline has no gate:
// it accepts at once.
func TestServeWorkerWithoutLifeline(t *testing.T) {
	tw := startTestWorker(t, false, "")
	tw.answered(t)
}

// TestServeWorkerReadyReportFails: a worker that cannot tell its master
// it is ready fails, saying where it tried.
func TestServeWorkerReadyReportFails(t *testing.T) {
	notify := filepath.Join(t.TempDir(), "none")
	tw := startTestWorker(t, true, notify)
	err := tw.wait(t)
	if err == nil || !strings.Contains(err.Error(), "report ready to the master on "+notify) {
		t.Fatalf("serveWorker: %v", err)
	}
	if tw.logs.count("worker failed") != 1 {
		t.Errorf("the log:\n%s", tw.logs)
	}
}

// TestPreviousImage: the previous generation's image is kept for a
// rollback only if it is another build than this one; a process that is
// gone is an error.
func TestPreviousImage(t *testing.T) {
	if f, err := previousImage(os.Getpid()); f != nil || err != nil {
		t.Errorf("this very build: %v, %v; want none", f, err)
	}
	pid, _ := successorProcess(t) // sleep: another build
	f, err := previousImage(pid)
	if err != nil || f == nil {
		t.Fatalf("another build: %v, %v", f, err)
	}
	defer f.Close()
	sleep, _ := os.Stat("/proc/" + strconv.Itoa(pid) + "/exe")
	if got, _ := f.Stat(); !os.SameFile(got, sleep) {
		t.Error("not the previous generation's image")
	}
	if f, err := previousImage(1 << 30); f != nil || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("no such process: %v, %v", f, err)
	}
}

// TestRollBackWorkersLogsFailure: a roll to the previous build that cannot
// run says so.
func TestRollBackWorkersLogsFailure(t *testing.T) {
	logs := newLogLines()
	pp, _ := testProcPool(t, 1)
	u := &Upgrader{log: logs.logger(), pool: pp, opts: Options{WorkerMode: ProcessWorkers}, ready: make(chan struct{})} // not ready: no roll
	u.rollBackWorkers()
	if logs.count("roll to the previous build did not finish", ErrNotReady.Error()) != 1 || logs.count("rolling restart failed") != 1 {
		t.Errorf("the log:\n%s", logs)
	}
}

// TestNewProcPool: a first generation's pool serves alone (open, no fail
// fast), each slot keeps no socket set yet, and its drain closes the
// master's sockets.
func TestNewProcPool(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	u := &Upgrader{opts: Options{Workers: 3, DrainTimeout: time.Second, UpgradeTimeout: 2 * time.Second}, log: newLogLines().logger(), lns: []net.Listener{ln}}
	pp := newProcPool(u, &procSpec{})
	if pp.n != 3 || len(pp.slots) != 3 || !pp.open || pp.failFast || pp.steer != nil || pp.drainTimeout != time.Second || pp.readyTimeout != 2*time.Second {
		t.Fatalf("pool %+v", pp)
	}
	for i, s := range pp.slots {
		if s.keep != -1 {
			t.Errorf("slot %d keeps socket set %d, want none (-1)", i, s.keep)
		}
	}
	pp.closeSockets()
	if _, err := ln.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("master's listener after closeSockets: %v, want closed", err)
	}
}

// tcpAndUDP listens on a TCP and a UDP socket of 127.0.0.1, closed at
// the test's end.
func tcpAndUDP(t *testing.T) (net.Listener, net.PacketConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	return ln, pc
}
