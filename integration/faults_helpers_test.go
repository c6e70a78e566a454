//go:build integration

package integration

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gohandoff/handoff/internal/load"
	"golang.org/x/sys/unix"
)

// workerMode is a way of running a service's workers. The fault tests run
// in every mode listed in workerModes; a mode adds its flags to the
// service's command line.
type workerMode struct {
	name string
	args []string
}

var workerModes = []workerMode{
	{name: "goroutines", args: []string{"--workers", "4"}},
	{name: "processes", args: []string{"--workers", "2", "--worker-mode", "process"}},
}

// forEachMode runs f as a subtest in every worker mode.
func forEachMode(t *testing.T, f func(t *testing.T, m workerMode)) {
	for _, m := range workerModes {
		t.Run(m.name, func(t *testing.T) { f(t, m) })
	}
}

// built caches the binaries built by buildBin.
var built sync.Map // "pkg@version" -> *buildResult

type buildResult struct {
	once sync.Once
	path string
	err  error
}

// buildBin builds pkg (a path relative to the module root) stamped with
// version into the binaries folder, once per test binary.
func buildBin(t *testing.T, pkg, version string) string {
	t.Helper()
	v, _ := built.LoadOrStore(pkg+"@"+version, &buildResult{})
	b := v.(*buildResult)
	b.once.Do(func() {
		b.path = filepath.Join(binDir, filepath.Base(pkg)+"-"+version)
		cmd := exec.Command("go", "build", "-ldflags", "-X main.version="+version, "-o", b.path, "../"+pkg)
		if out, err := cmd.CombinedOutput(); err != nil {
			b.err = fmt.Errorf("build %s: %v\n%s", pkg, err, out)
		}
	})
	if b.err != nil {
		t.Fatal(b.err)
	}
	return b.path
}

// loadRun is a load on a service for the length of a test; see runLoad.
type loadRun struct {
	t         *testing.T
	done      chan struct{}
	stopOnce  sync.Once
	results   <-chan load.Result
	res       load.Result
	completed atomic.Int64
}

// runLoad puts 200 concurrent clients on s (POSTs and GETs, every failure
// counted, no retry) and returns once they have completed 500 requests.
func runLoad(t *testing.T, s *service, keepAlive bool) *loadRun {
	t.Helper()
	l := &loadRun{t: t, done: make(chan struct{})}
	l.results = startLoad(t, s, keepAlive, 2000, l.done, &l.completed)
	t.Cleanup(func() { l.stop() })
	waitCount(t, &l.completed, 500)
	return l
}

// advance waits until the load has completed n more requests.
func (l *loadRun) advance(n int64) {
	l.t.Helper()
	waitCount(l.t, &l.completed, l.completed.Load()+n)
}

func (l *loadRun) stop() load.Result {
	l.stopOnce.Do(func() {
		close(l.done)
		l.res = <-l.results
	})
	return l.res
}

// finish stops the load and fails the test if any request failed.
func (l *loadRun) finish() load.Result {
	l.t.Helper()
	res := l.stop()
	checkLoad(l.t, res)
	return res
}

// gate is a new "binary" that stops before it starts the real one: a
// script that logs "gate: waiting", blocks until open is called, then
// execs target with the same argv[0] and arguments, as a slow start or a
// hang (if never opened) of a new generation.
type gate struct {
	t    *testing.T
	fifo string
}

// installGate installs at dst a script that waits on a gate, then execs
// target.
func installGate(t *testing.T, dst, target string) *gate {
	t.Helper()
	g := &gate{t: t, fifo: filepath.Join(t.TempDir(), "gate")}
	if err := syscall.Mkfifo(g.fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	script := fmt.Sprintf("#!/bin/bash\necho \"gate: waiting pid=$$\" >&2\nread -r _ < %q\nexec -a \"$0\" %q \"$@\"\n", g.fifo, target)
	installBytes(t, []byte(script), dst)
	return g
}

// open lets the waiting script go on.
func (g *gate) open() {
	g.t.Helper()
	f, err := os.OpenFile(g.fifo, os.O_WRONLY, 0)
	if err != nil {
		g.t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString("go\n"); err != nil {
		g.t.Fatal(err)
	}
}

// runOnce runs exe with args to its end, bounded by the test's deadline,
// and returns its exit code and combined output.
func runOnce(t *testing.T, dir, exe string, args ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithDeadline(context.Background(), deadline(t))
	defer cancel()
	cmd := exec.CommandContext(ctx, exe, args...)
	cmd.Dir = dir
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, out.String()
	case errors.As(err, &ee):
		return ee.ExitCode(), out.String()
	}
	t.Fatalf("run %s %q: %v\n%s", exe, args, err, out.String())
	return 0, ""
}

// reload runs handoff reload and fails the test unless it succeeds.
func (s *service) reload() string {
	s.t.Helper()
	code, out, errOut := s.handoff("reload")
	if code != 0 {
		s.t.Fatalf("handoff reload: exit %d\n%s%s", code, out, errOut)
	}
	return out
}

// pidFileBytes returns the PID file's content ("" if missing).
func (s *service) pidFileBytes() string {
	b, _ := os.ReadFile(s.pidfile)
	return string(b)
}

// onlyProcess fails the test unless the processes of s are pid and its
// worker processes, if it has any: no other generation is left.
func (s *service) onlyProcess(pid int) {
	s.t.Helper()
	pids := s.pids()
	ok := slices.Contains(pids, pid)
	for _, p := range pids {
		ok = ok && (p == pid || ppid(p) == pid)
	}
	if !ok {
		s.t.Errorf("processes of %s: %v, want only %d and its workers", s.exe, pids, pid)
	}
}

// lastLines returns the last n lines of text, for messages.
func lastLines(text string, n int) string {
	lines := strings.Split(strings.TrimRight(text, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// heldRequest is a POST in flight on a connection of its own: its body is
// half sent, so the generation that accepted it goes on draining until the
// test finishes the body or the drain timeout cuts the connection.
type heldRequest struct {
	t    *testing.T
	conn net.Conn
	br   *bufio.Reader
	pid  int // the process that holds it: the master, or a worker process
	gen  int // its generation
	// master is the pid of that generation's master (pid in goroutine
	// mode).
	master int
}

var (
	healthzPID = regexp.MustCompile(`pid=(\d+)`)
	healthzGen = regexp.MustCompile(`generation=(\d+)`)
)

// holdRequest asks GET /healthz on a new connection, so that the serving
// generation surely holds it, then sends half of a POST / on it. The
// serving generation is the only one of s.
func holdRequest(t *testing.T, s *service) *heldRequest {
	t.Helper()
	addr := s.addr
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	h := &heldRequest{t: t, conn: conn, br: bufio.NewReader(conn)}
	fmt.Fprintf(conn, "GET /healthz HTTP/1.1\r\nHost: %s\r\n\r\n", addr)
	resp, err := http.ReadResponse(h.br, nil)
	if err != nil {
		t.Fatalf("held request: GET /healthz: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	m := healthzPID.FindSubmatch(body)
	if resp.StatusCode != 200 || m == nil {
		t.Fatalf("held request: GET /healthz = %d %q", resp.StatusCode, body)
	}
	h.pid, _ = strconv.Atoi(string(m[1]))
	if m := healthzGen.FindSubmatch(body); m != nil {
		h.gen, _ = strconv.Atoi(string(m[1]))
	}
	h.master = s.pid()
	fmt.Fprintf(conn, "POST / HTTP/1.1\r\nHost: %s\r\nContent-Length: 8\r\n\r\nhalf", addr)
	return h
}

// finish sends the rest of the body and returns the answer's status code
// and its Connection header, or the error that ended the connection. (A
// handler that began before the drain answers without "Connection: close";
// the connection is then closed once idle for the drain's idle grace.)
func (h *heldRequest) finish() (int, string, error) {
	h.conn.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.WriteString(h.conn, "done"); err != nil {
		return 0, "", err
	}
	return h.answer()
}

// answer reads the answer to the held request without finishing it.
func (h *heldRequest) answer() (int, string, error) {
	h.conn.SetReadDeadline(time.Now().Add(time.Until(deadline(h.t))))
	resp, err := http.ReadResponse(h.br, nil)
	if err != nil {
		return 0, "", err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, resp.Header.Get("Connection"), nil
}

// wantFinished finishes h and fails the test unless it is answered 200.
func (h *heldRequest) wantFinished() {
	h.t.Helper()
	code, _, err := h.finish()
	if err != nil || code != 200 {
		h.t.Errorf("held request on pid %d: %d %v, want 200", h.pid, code, err)
	}
}

// wantUnchanged fails the test unless pid is still the only process of s,
// the PID file still holds pidFile, and the control socket answers.
func (s *service) wantUnchanged(pid int, pidFile string) {
	s.t.Helper()
	if got := s.pidFileBytes(); got != pidFile {
		s.t.Errorf("pid file holds %q, want it unchanged: %q", got, pidFile)
	}
	s.onlyProcess(pid)
	code, out, errOut := s.handoff("status")
	if code != 0 || !strings.Contains(out, strconv.Itoa(pid)) {
		s.t.Errorf("handoff status: exit %d\n%s%s\nwant pid %d", code, out, errOut, pid)
	}
}

// restart starts the service again, as an operator would, in the same
// folder on the same address and PID file, and waits until it is ready.
func (s *service) restart(args ...string) *service {
	s.t.Helper()
	s2 := &service{t: s.t, dir: s.dir, exe: s.exe, pidfile: s.pidfile, addr: s.addr, wrap: s.wrap, env: s.env}
	s2.start(args...)
	s2.waitReady()
	return s2
}

// errorLine returns the line of a CLI's output that starts with prefix.
func errorLine(out, prefix string) string {
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, prefix) {
			return l
		}
	}
	return ""
}

// waitExit waits until the process pid has exited, bounded by the test's
// deadline. It watches a pidfd, so it works for processes that are not
// the test's children.
func waitExit(t *testing.T, pid int) {
	t.Helper()
	fd, err := unix.PidfdOpen(pid, 0)
	if errors.Is(err, unix.ESRCH) {
		return
	}
	if err != nil {
		t.Fatalf("pidfd of %d: %v", pid, err)
	}
	defer unix.Close(fd)
	ms := int(time.Until(deadline(t)).Milliseconds())
	n, err := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, ms)
	if err != nil || n == 0 {
		t.Fatalf("pid %d has not exited: %v", pid, err)
	}
}

// dropDAC returns a command prefix that runs a process without the power
// to write where file modes forbid it: nothing for a user, setpriv
// dropping root's CAP_DAC_OVERRIDE for root.
func dropDAC(t *testing.T) []string {
	t.Helper()
	if os.Geteuid() != 0 {
		return nil
	}
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Skip("running as root without setpriv (util-linux): cannot make a folder unwritable")
	}
	return []string{"setpriv", "--bounding-set=-dac_override,-dac_read_search"}
}

// deadPID returns the pid of a process that has exited.
func deadPID(t *testing.T) int {
	t.Helper()
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	return cmd.Process.Pid
}

// wantFree fails the test unless addr can be listened on at once.
func wantFree(t *testing.T, addr string) {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Errorf("address %s still taken: %v", addr, err)
		return
	}
	ln.Close()
}

// clients run a request function in a loop, each until stopped, for the
// loads internal/load does not speak (raw TCP echo, HTTP/2); they count
// successes and every failure, and never retry.
type clients struct {
	ok, failed atomic.Int64
	mu         sync.Mutex
	errs       []string
	stop       chan struct{}
	wg         sync.WaitGroup
}

// startClients starts n clients calling do with their number and round.
func startClients(n int, do func(client, round int) error) *clients {
	c := &clients{stop: make(chan struct{})}
	for i := range n {
		c.wg.Go(func() {
			for round := 0; ; round++ {
				select {
				case <-c.stop:
					return
				default:
				}
				if err := do(i, round); err != nil {
					c.failed.Add(1)
					c.mu.Lock()
					if len(c.errs) < 10 {
						c.errs = append(c.errs, err.Error())
					}
					c.mu.Unlock()
					continue
				}
				c.ok.Add(1)
			}
		})
	}
	return c
}

// advance waits until the clients have succeeded n more times.
func (c *clients) advance(t *testing.T, n int64) {
	t.Helper()
	waitCount(t, &c.ok, c.ok.Load()+n)
}

// finish stops the clients and fails the test if any request failed.
func (c *clients) finish(t *testing.T, what string) {
	t.Helper()
	close(c.stop)
	c.wg.Wait()
	t.Logf("%s: ok=%d failed=%d", what, c.ok.Load(), c.failed.Load())
	if c.failed.Load() != 0 || c.ok.Load() == 0 {
		t.Errorf("%s: %d failed, %d ok; first errors %q", what, c.failed.Load(), c.ok.Load(), c.errs)
	}
}

// line returns the i-th line logged.
func (lw *logWatch) line(i int) string { return lw.Line(i) }

// logValue returns the value of key in a text log line.
func logValue(line, key string) string {
	_, v, _ := strings.Cut(line, " "+key+"=")
	v, _, _ = strings.Cut(v, " ")
	return v
}
