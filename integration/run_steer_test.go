//go:build integration

package integration

import (
	"bufio"
	"bytes"
	"context"
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

	"github.com/gohandoff/handoff/internal/load"
	"github.com/gohandoff/handoff/upgrader"
)

// The tests of kernel steering run the seed's 7-line Node.js app,
// examples/node/app.js, unchanged: it has no signal handling, no drain
// code and no accept gate, and still loses nothing.

// steerAB is the size of an ab run: -n from HANDOFF_STEER_AB_N (default
// 20,000; the figure is 100,000), at -c 1000.
func steerAB(t *testing.T) int {
	n := 20000
	if v := os.Getenv("HANDOFF_STEER_AB_N"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 1000 {
			t.Fatalf("HANDOFF_STEER_AB_N=%q: want a number of requests, at least 1000", v)
		}
	}
	return n
}

// appRuntime is a program that serves on fd 3 without knowing handoff.
type appRuntime struct {
	name string
	argv func(app string) []string
	src  string // the app, copied into the test's folder
}

func nodeApp(t *testing.T) appRuntime {
	node, err := exec.LookPath("node")
	if err != nil {
		t.Skip("node is not installed (apt-get install nodejs; .ci/run installs it)")
	}
	src, err := os.ReadFile("../examples/node/app.js")
	if err != nil {
		t.Fatal(err)
	}
	return appRuntime{"node", func(app string) []string { return []string{node, app} }, string(src)}
}

// pythonApp is the same app in Python's standard library.
const pythonApp = `import http.server, socket
class Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header('Content-Type', 'text/plain')
        self.send_header('Content-Length', '14')
        self.end_headers()
        self.wfile.write(b'Hello, world!\n')
    def log_message(self, *args):
        pass
srv = http.server.ThreadingHTTPServer(('', 0), Hello, bind_and_activate=False)
srv.socket = socket.socket(fileno=3)
srv.serve_forever()
`

func pyApp(t *testing.T) appRuntime {
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 is not installed")
	}
	return appRuntime{"python", func(app string) []string { return []string{py, app} }, pythonApp}
}

// startSteered runs app under handoff run with workers workers and
// --ready delay:200ms (the app cannot notify; extra may say otherwise),
// and waits until ready.
func startSteered(t *testing.T, rt appRuntime, workers int, extra ...string) (*service, string) {
	t.Helper()
	s := newService(t, handoffBin, "handoff")
	app := filepath.Join(s.dir, "app", "app.js")
	if err := os.Mkdir(filepath.Dir(app), 0o755); err != nil {
		t.Fatal(err)
	}
	installBytes(t, []byte(rt.src), app)
	args := append([]string{"run", "--listen", "tcp://" + s.addr, "--workers", strconv.Itoa(workers), "--pidfile", s.pidfile,
		"--ready", "delay:200ms"}, extra...) // a later --ready wins
	s.startArgs(append(append(args, "--"), rt.argv(app)...)...)
	s.waitReady()
	s.log.waitFor(t, 0, "kernel steering on")
	return s, app
}

// abRun is ab -r (go on after socket errors, counting them) on s.
type abRun struct {
	t        *testing.T
	cmd      *exec.Cmd
	report   bytes.Buffer
	progress *bufio.Scanner
	n        int
}

func startAB(t *testing.T, s *service, n, c int) *abRun {
	t.Helper()
	ab := lookTool(t, "ab", "apache2-utils")
	a := &abRun{t: t, n: n}
	a.cmd = exec.Command(ab, "-r", "-s", "30", "-n", strconv.Itoa(n), "-c", strconv.Itoa(c), "http://"+s.addr+"/")
	a.cmd.Stdout = &a.report
	pr, err := a.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := a.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.cmd.Process.Kill(); a.cmd.Wait() })
	a.progress = bufio.NewScanner(pr)
	return a
}

// tick waits for ab's next "Completed N requests" (every tenth of the
// run) and reports false once ab has finished instead.
func (a *abRun) tick() bool {
	for a.progress.Scan() {
		line := a.progress.Text()
		if strings.HasPrefix(line, "Finished") {
			return false
		}
		if strings.HasPrefix(line, "Completed") {
			return true
		}
	}
	return false
}

// finish waits for ab and fails the test unless every request
// completed with a 2xx answer.
func (a *abRun) finish(what string) {
	t := a.t
	t.Helper()
	for a.tick() {
	}
	if err := a.cmd.Wait(); err != nil {
		t.Fatalf("ab: %v\n%s", err, a.report.String())
	}
	out := a.report.String()
	complete := countIn(t, out, `Complete requests:\s+(\d+)`)
	failed := countIn(t, out, `Failed requests:\s+(\d+)`)
	non2xx := countIn(t, out, `Non-2xx responses:\s+(\d+)`)
	rps := requestsPerSecond(out)
	t.Logf("ab -n %d -c %s through %s: complete=%d failed=%d non-2xx=%d, %.0f req/s", a.n, a.cmd.Args[7], what, complete, failed, non2xx, rps)
	if complete != a.n || failed != 0 || non2xx != 0 {
		t.Errorf("ab through %s: %d complete of %d, %d failed, %d non-2xx:\n%s", what, complete, a.n, failed, non2xx, out)
	}
}

// abThrough runs ab -n steerAB -c 1000 on s, and ops one after the other
// at its tenths; if a run ends before the last op, another one starts
// where it left off. Every run must complete every request with a 2xx.
func abThrough(t *testing.T, s *service, what string, ops ...func()) {
	t.Helper()
	abThroughN(t, s, steerAB(t), what, ops...)
}

// abThroughN is abThrough with runs of n requests.
func abThroughN(t *testing.T, s *service, n int, what string, ops ...func()) {
	t.Helper()
	for run := 1; len(ops) > 0; run++ {
		a := startAB(t, s, n, 1000)
		for len(ops) > 0 && a.tick() {
			ops[0]()
			ops = ops[1:]
		}
		a.finish(fmt.Sprintf("%s (run %d, %d steps left)", what, run, len(ops)))
		if t.Failed() {
			return
		}
	}
}

// requestsPerSecond reads ab's "Requests per second".
func requestsPerSecond(s string) float64 {
	i := strings.Index(s, "Requests per second:")
	if i < 0 {
		return 0
	}
	var f float64
	fmt.Sscanf(strings.TrimSpace(s[i+len("Requests per second:"):]), "%f", &f)
	return f
}

// listeners counts the listening sockets on addr's port: the socket
// group's size.
func listeners(t *testing.T, addr string) int {
	t.Helper()
	_, port, _ := strings.Cut(addr, ":")
	p, _ := strconv.Atoi(port)
	want := fmt.Sprintf(":%04X", p)
	n := 0
	for _, f := range procNetTCP(t) {
		if len(f) > 3 && strings.HasSuffix(f[1], want) && f[3] == "0A" {
			n++
		}
	}
	return n
}

// TestRunSteerReloadsAndRolls: the unmodified app under handoff run with
// 2 and 4 workers, ab -c 1000 through 5 reloads and 2 rolling restarts:
// not one request fails. The old workers are all gone after, and the
// socket group holds no more sockets than workers were alive at once
// (the sockets of gone workers are reused).
func TestRunSteerReloadsAndRolls(t *testing.T) {
	for _, tc := range []struct {
		rt      func(*testing.T) appRuntime
		workers int
		share   int // of steerAB's requests per ab run: Python's server is slow
	}{{nodeApp, 2, 1}, {nodeApp, 4, 1}, {pyApp, 2, 4}} {
		rt := tc.rt(t)
		t.Run(fmt.Sprintf("%s-%d-workers", rt.name, tc.workers), func(t *testing.T) {
			s, _ := startSteered(t, rt, tc.workers)
			var old []int
			old = append(old, s.checkWorkers(tc.workers)...)
			var ops []func()
			for _, op := range []string{"reload", "reload", "restart-workers", "reload", "reload", "restart-workers", "reload"} {
				ops = append(ops, func() {
					if code, out, errOut := s.handoff(op); code != 0 {
						t.Fatalf("handoff %s: exit %d\n%s%s", op, code, out, errOut)
					}
					old = append(old, s.workerPIDs()...)
				})
			}
			abThroughN(t, s, max(steerAB(t)/tc.share, 1000), "5 reloads and 2 rolling restarts", ops...)
			s.log.waitFor(t, 0, "previous generation exited", "generation=6")
			now := s.checkWorkers(tc.workers)
			// Older generations may still drain (the upgrades overlap
			// up to --max-draining): a master logs its exit once every
			// worker it started, rolled ones included, has exited.
			for gen := 1; gen <= 5; gen++ {
				s.log.waitFor(t, 0, "msg=exited", fmt.Sprintf("generation=%d", gen))
			}
			for _, pid := range old {
				if !slices.Contains(now, pid) && alive(pid) {
					t.Errorf("old worker %d still alive after its generation exited (now %v)", pid, now)
				}
			}
			// As many sockets as workers were ever alive at once: the new
			// generation's and the serving one's during an upgrade, those
			// of the older ones still draining (an upgrade does not wait
			// for them; at most --max-draining), and the workers each roll
			// retired, which drain on in their generation: a generation
			// rolled just before its upgrade drains twice its workers.
			// Without reuse, every start takes sockets of its own: the
			// first generation's, 5 reloads' and 2 rolls' replacements.
			const reloads, rolls = 5, 2
			most := (upgrader.DefaultMaxDraining + 2 + rolls) * tc.workers
			unused := (1 + reloads + rolls) * tc.workers
			if most >= unused {
				t.Fatalf("bound %d does not tell reuse from none (%d)", most, unused)
			}
			if n := listeners(t, s.addr); n > most {
				t.Errorf("%d listening sockets on the port after %d reloads and %d rolls, want at most %d (%d without reuse): sockets are not reused", n, reloads, rolls, most, unused)
			} else {
				t.Logf("%d listening sockets in the group (at most %d; %d without reuse)", n, most, unused)
			}
		})
	}
}

// TestRunSteerWatch: a --watch edit of the app reloads handoff run under
// ab -c 1000 without a failed request.
func TestRunSteerWatch(t *testing.T) {
	rt := nodeApp(t)
	s, app := startSteered(t, rt, 2, "--watch", "app")
	abThrough(t, s, "a --watch reload", func() {
		from := s.log.len()
		installBytes(t, []byte(rt.src+"// edited\n"), app)
		s.log.waitFor(t, from, "change detected, upgrading")
		s.log.waitFor(t, from, "previous generation exited", "generation=2")
	})
}

// TestRunSteerFailedUpgrade: a new generation whose app exits at start
// fails the reload, under ab -c 1000, without a failed request: its
// workers were never steered any connection, with no accept gate. (The
// ready delay must outlast the app's start: a worker up for the delay
// counts as ready.)
func TestRunSteerFailedUpgrade(t *testing.T) {
	rt := nodeApp(t)
	s, app := startSteered(t, rt, 2, "--ready", "delay:5s")
	pid := s.pid()
	workers := s.checkWorkers(2)
	abThrough(t, s, "a failed upgrade", func() {
		installBytes(t, []byte("process.exit(3);\n"), app)
		code, _, errOut := s.handoff("reload")
		if code != 1 || !strings.Contains(errOut, "crash loop before this generation was ready") {
			t.Fatalf("handoff reload of an app that exits at start: exit %d, want 1 and the crash loop:\n%s", code, errOut)
		}
	})
	if got := s.pid(); got != pid {
		t.Errorf("pid file names %d, want the serving master %d", got, pid)
	}
	if now := s.checkWorkers(2); !slices.Equal(now, workers) {
		t.Errorf("workers %v, want the serving ones %v", now, workers)
	}
}

// socketInode is the inode of fd of process pid.
func socketInode(t *testing.T, pid, fd int) string {
	t.Helper()
	link, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%d", pid, fd))
	if err != nil {
		t.Fatal(err)
	}
	return link
}

// TestRunSteerWorkerKilled: kill -9 of a worker under 200 clients: only
// the requests that worker had in flight fail, counted here; its
// replacement takes its socket, and with it the connections queued there,
// and the next requests all succeed.
func TestRunSteerWorkerKilled(t *testing.T) {
	s, _ := startSteered(t, nodeApp(t), 2)
	pids := s.checkWorkers(2)
	victim := pids[0]
	sock := socketInode(t, victim, 3)
	var completed atomic.Int64
	done := make(chan struct{})
	results := make(chan load.Result, 1)
	go func() {
		results <- load.Run(context.Background(), load.Config{Addr: s.addr, Concurrency: 200, Requests: 5000,
			Until: done, MaxDuration: time.Until(deadline(t)), Completed: &completed})
	}()
	waitCount(t, &completed, 1000)
	from := s.log.len()
	if err := syscall.Kill(victim, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	now, took := s.waitWorkersChange(victim, 2, 5*time.Second)
	s.log.waitFor(t, from, "worker ready", "worker=0")
	waitCount(t, &completed, completed.Load()+2000)
	close(done)
	res := <-results
	t.Logf("kill -9 of worker %d, replaced after %s: %s; failed %d %v %q", victim, took.Round(time.Millisecond), res, res.Failed, res.ByKind, res.Errors)
	if res.Failed > 200 {
		t.Errorf("%d requests failed, more than the 200 clients could have had in flight on the killed worker", res.Failed)
	}
	var repl int
	for _, pid := range now {
		if !slices.Contains(pids, pid) {
			repl = pid
		}
	}
	if got := socketInode(t, repl, 3); got != sock {
		t.Errorf("replacement %d listens on %s, want the killed worker's %s (its queue)", repl, got, sock)
	}
	after := load.Run(context.Background(), load.Config{Addr: s.addr, Concurrency: 200, Requests: 2000, MaxDuration: time.Until(deadline(t))})
	checkLoad(t, after)
}

// TestRunSteerPortInUse: the sockets have SO_REUSEPORT, yet a second
// handoff run on the same port fails at once, naming it, as without
// steering; and a unix socket, which cannot be steered, falls back to
// shared sockets with one log line.
func TestRunSteerPortInUse(t *testing.T) {
	rt := nodeApp(t)
	s, app := startSteered(t, rt, 1)
	code, out := runOnce(t, s.dir, handoffBin, "run", "--listen", "tcp://"+s.addr, "--workers", "1",
		"--pidfile", filepath.Join(s.dir, "run", "second.pid"), "--", rt.argv(app)[0], app)
	if code == 0 || !strings.Contains(out, "address already in use") || !strings.Contains(out, s.addr) {
		t.Errorf("second handoff run on %s: exit %d, want an error naming the address in use:\n%s", s.addr, code, out)
	}

	u := newService(t, handoffBin, "handoff")
	sock := filepath.Join(u.dir, "app.sock")
	u.startArgs("run", "--listen", "tcp://"+u.addr, "--listen", "unix://"+sock, "--workers", "1", "--pidfile", u.pidfile,
		"--ready", "delay:200ms", "--", rt.argv(app)[0], app)
	u.waitReady()
	u.log.waitFor(t, 0, "kernel steering off", "is not TCP")
	if n := strings.Count(u.log.String(), "kernel steering"); n != 1 {
		t.Errorf("%d log lines about kernel steering, want 1", n)
	}
	if code, body, err := u.get("/"); err != nil || code != 200 || body != "Hello, world!" {
		t.Errorf("GET / without steering = %d %q %v", code, body, err)
	}
}
