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
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gohandoff/handoff/internal/load"
)

// sdApp is an application installed for a real systemd: its folder (the
// /srv/hello of the shipped units), its address, and the unit files.
type sdApp struct {
	t    *testing.T
	sd   *realSystemd
	dir  string // /srv/hello of the shipped units
	addr string
	unit string // the service unit's name

	node, socket bool
	json         bool      // the service logs JSON
	pidfile      string    // inside the namespace
	log          *logWatch // the unit's journal since install
	cursor       string    // the journal's cursor at install
	stops        int       // stops with a request in flight that passed
	since        time.Time // the end of the last phase
}

// newSdApp makes a folder for an application under the real systemd's
// root, with deploy/current/ holding hello v1 and handoff.
func newSdApp(t *testing.T, sd *realSystemd, unit string) *sdApp {
	t.Helper()
	dir, err := os.MkdirTemp(sd.root, "app-")
	if err != nil {
		t.Fatal(err)
	}
	a := &sdApp{t: t, sd: sd.in(t), dir: dir, addr: freeAddr(t), unit: unit}
	if err := os.MkdirAll(a.current(), 0o755); err != nil {
		t.Fatal(err)
	}
	install(t, helloV1, a.current("hello"))
	install(t, handoffBin, a.current("handoff"))
	t.Cleanup(func() {
		if t.Failed() {
			out, _ := sd.run("journalctl", "--no-pager", "-n", "80", "-u", unit)
			t.Logf("journal of %s:\n%s", unit, out)
		}
		sd.removeUnit(unit)
	})
	return a
}

func (a *sdApp) current(name ...string) string {
	return filepath.Join(append([]string{a.dir, "deploy", "current"}, name...)...)
}

// shipped reads examples/systemd/name and rewrites only what the machine
// needs: the paths of the binaries, the addresses and User= (the test
// runs as root and makes no user). Every rewrite must apply, so that the
// test follows the unit as shipped.
func (a *sdApp) shipped(name string, rewrites ...string) string {
	a.t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "examples", "systemd", name))
	if err != nil {
		a.t.Fatal(err)
	}
	text := string(b)
	for i := 0; i+1 < len(rewrites); i += 2 {
		if !strings.Contains(text, rewrites[i]) {
			a.t.Fatalf("examples/systemd/%s no longer holds %q", name, rewrites[i])
		}
		text = strings.ReplaceAll(text, rewrites[i], rewrites[i+1])
	}
	var out []string
	for line := range strings.SplitSeq(text, "\n") {
		if strings.HasPrefix(line, "User=") {
			continue
		}
		out = append(out, line)
	}
	return strings.Join(out, "\n")
}

// procs lists the host pids in the unit's cgroup, but the short-lived
// systemd-notify a Node worker runs to say it is ready.
func (a *sdApp) procs() []int {
	b, _ := os.ReadFile(filepath.Join(a.sd.cg, "system.slice", a.unit, "cgroup.procs"))
	var pids []int
	for _, f := range strings.Fields(string(b)) {
		p, err := strconv.Atoi(f)
		if err != nil {
			continue
		}
		if comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", p)); strings.TrimSpace(string(comm)) == "systemd-notify" {
			continue
		}
		pids = append(pids, p)
	}
	return pids
}

// waitProcs waits until the unit's cgroup holds n processes (after an
// upgrade: until the old generation has exited).
func (a *sdApp) waitProcs(n int) []int {
	a.t.Helper()
	end := deadline(a.t)
	for {
		p := a.procs()
		if len(p) == n {
			return p
		}
		if time.Now().After(end) {
			a.t.Fatalf("unit %s: processes %v, want %d", a.unit, p, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// sdCase is a shipped unit under test.
type sdCase struct {
	name    string
	unit    string // the service's file in examples/systemd, installed as hello.service or app.service
	socket  bool   // hello.socket too
	node    bool   // app.service: handoff run with examples/node/server.js
	restore bool   // a probation restore (the unit runs with --probation)
	// extra rewrites of the unit, beyond paths, addresses and User=.
	extra []string
	// stopOnly: start, two upgrades and a stop with a request in flight,
	// nothing else; with wantCut, systemd must cut that request.
	stopOnly, wantCut bool
	// overlap: start, two upgrades while older generations drain, and a
	// stop during the overlap (systemd_real_overlap_test.go).
	overlap bool
}

// The probation of hello.service is 30s as shipped; the test shortens it,
// so that an old generation has exited a few seconds after each upgrade.
var sdProbation = []string{"--probation 30s", "--probation 2s"}

var sdCases = []sdCase{
	{name: "notify", unit: "hello.service", restore: true, extra: sdProbation},
	{name: "pidfile", unit: "hello-pidfile.service"},
	{name: "socket", unit: "hello.service", socket: true, extra: sdProbation},
	{name: "processes", unit: "hello.service", extra: []string{"--probation 30s", "--worker-mode process --workers 2"}},
	{name: "app", unit: "app.service", node: true},
	// An old unit without ExecStop=: with worker processes, systemd's
	// SIGTERM to the whole cgroup makes it wait for the cgroup to empty,
	// so the stop drains anyway.
	{name: "processes-without-ExecStop", unit: "hello.service", stopOnly: true, extra: []string{
		"--probation 30s", "--worker-mode process --workers 2", sdExecStop, ""}},
	// The same old unit with goroutine workers: what ExecStop= is for.
	// systemd sends SIGKILL right after SIGTERM to a main process that is
	// not its child, and cuts the request. If this ever passes, systemd
	// has changed, and so must docs/operations.md.
	{name: "goroutines-without-ExecStop", unit: "hello.service", stopOnly: true, wantCut: true, extra: []string{
		"--probation 30s", "--probation 2s", sdExecStop, ""}},
	// Overlapping generations (no probation: an upgrade waits for none).
	{name: "overlap", unit: "hello.service", overlap: true, extra: []string{" --probation 30s", ""}},
}

// sdExecStop is hello.service's ExecStop= line, as shipped.
const sdExecStop = "ExecStop=-/srv/hello/deploy/current/handoff stop --pidfile /run/hello/hello.pid\n"

// TestRealSystemd runs every shipped unit under a real systemd, each
// through the same scenario under load (every failure counted): start;
// reloads of good builds and of a bad one, which must fail systemctl
// reload with the reason in systemctl status; systemctl stop with a
// request in flight after the upgrades (HANDOFF_SYSTEMD_STOP_RUNS times,
// default 1), which must complete, the unit ending inactive with
// Result=success; a probation restore and a stop after it; a kill -9 of
// the serving generation after an upgrade, after which Restart=on-failure
// must restart the unit; systemctl restart (with socket activation, under
// load without a failure); and every generation's lines in the journal,
// attributed to the unit. Last, nothing but journald and the test's units
// may have been started in the namespace.
func TestRealSystemd(t *testing.T) {
	sd := bootSystemd(t)
	runs := 1
	if v := os.Getenv("HANDOFF_SYSTEMD_STOP_RUNS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("HANDOFF_SYSTEMD_STOP_RUNS=%q: want a positive number", v)
		}
		runs = n
	}
	for _, c := range sdCases {
		t.Run(c.name, func(t *testing.T) { c.run(t, sd, runs) })
	}
	sd.wantOnlyTestUnits()
}

func (c sdCase) run(t *testing.T, sd *realSystemd, stopRuns int) {
	unit := "hello.service"
	if c.node {
		unit = "app.service"
	}
	a := newSdApp(t, sd, unit)
	a.since = time.Now()
	a.install(c)
	a.start()
	base := len(a.procs())
	if c.overlap {
		a.overlapStop()
		return
	}
	if c.stopOnly {
		a.upgrade(helloV2)
		a.upgrade(helloV1)
		a.waitProcs(base)
		if !c.wantCut {
			a.stopInFlight()
			return
		}
		answer, state := a.stopWithRequest()
		t.Logf("without ExecStop=: the request in flight got %q, the unit ended %s", answer, state)
		// The unit's end varies with timing: failed with Result=signal, or
		// inactive while the killed process is still exiting.
		if answer == "200" {
			t.Errorf("without ExecStop=, the stop drained (unit: %s): systemd no longer kills a main process that is not its child at once; update docs/operations.md", state)
		}
		return
	}

	// Reloads under load: two good builds and a bad one between them.
	l := a.load()
	a.upgrade(helloV2)
	a.badReload()
	a.upgrade(helloV1)
	a.waitProcs(base)
	l.finish()
	a.phase("start, reloads under load")
	a.wantGeneration(3)

	a.stopInFlight()
	for i := 1; i < stopRuns; i++ {
		a.start()
		a.upgrade(helloV2)
		a.upgrade(helloV1)
		a.waitProcs(base)
		a.stopInFlight()
	}
	a.phase("stops")
	t.Logf("stops after upgrades: %d of %d with the request in flight answered and the unit inactive with Result=success", a.stops, stopRuns)

	if c.restore {
		a.start()
		a.probationRestore()
		a.waitProcs(base)
		a.stopInFlight()
		a.phase("probation restore and stop")
	}

	// kill -9 of the serving generation after an upgrade.
	a.start()
	a.upgrade(helloV2)
	a.waitProcs(base)
	a.wantGeneration(2)
	a.killServing()
	a.phase("kill -9")

	// systemctl restart. With socket activation, under load: connections
	// wait in the socket's queue while the service restarts, so none
	// fails. (Without, the port is closed between stop and start.)
	var rl *loadRun
	if c.socket {
		rl = a.load()
	}
	before := sd.show(a.unit, "MainPID")["MainPID"]
	from := a.log.len()
	sd.must("systemctl", "restart", a.unit)
	sd.waitUnit(a.unit, map[string]string{"ActiveState": "active", "SubState": "running"})
	a.waitReady(from)
	if sd.show(a.unit, "MainPID")["MainPID"] == before {
		t.Errorf("systemctl restart: main pid still %s", before)
	}
	if rl != nil {
		rl.advance(200)
		rl.finish()
	}
	a.wantServes()
	a.phase("restart")
	a.wantJournal()

	// A stop by hand, not through systemd: the service exits 0, systemd
	// runs ExecStop=, which finds nothing to stop; its "-" keeps the unit
	// from failing.
	a.sd.must(a.current("handoff"), "stop", "--pidfile", a.pidfile)
	sd.waitUnit(a.unit, map[string]string{"ActiveState": "inactive", "Result": "success"})
}

// phase logs how long the last phase of the case took.
func (a *sdApp) phase(name string) {
	now := time.Now()
	a.t.Logf("%s: %s", name, now.Sub(a.since).Round(time.Millisecond))
	a.since = now
}

// install writes the case's unit files and the application.
func (a *sdApp) install(c sdCase) {
	t := a.t
	t.Helper()
	a.node = c.node
	a.socket = c.socket
	if c.node {
		b, err := os.ReadFile("../examples/node/server.js")
		if err != nil {
			t.Fatal(err)
		}
		installBytes(t, b, filepath.Join(a.dir, "server.js"))
		a.pidfile = "/run/app/app.pid"
		a.sd.installUnit(a.unit, a.shipped(c.unit, append(slices.Clone(c.extra),
			"/usr/local/bin/handoff", a.current("handoff"), "/srv/app", a.dir, "127.0.0.1:8080", a.addr)...))
	} else {
		a.pidfile = "/run/hello/hello.pid"
		rewrites := []string{"/srv/hello", a.dir, "127.0.0.1:8080", a.addr}
		if b, _ := os.ReadFile(filepath.Join("..", "examples", "systemd", c.unit)); strings.Contains(string(b), "127.0.0.1:9090") {
			rewrites = append(rewrites, "127.0.0.1:9090", freeAddr(t))
		}
		// The case's own rewrites first: they name the unit's text as shipped.
		text := a.shipped(c.unit, append(slices.Clone(c.extra), rewrites...)...)
		a.json = strings.Contains(text, "--log-format json")
		a.sd.installUnit(a.unit, text)
	}
	if c.socket {
		a.sd.installUnit("hello.socket", a.shipped("hello.socket", "127.0.0.1:8080", a.addr))
		t.Cleanup(func() { a.sd.removeUnit("hello.socket") })
		a.sd.must("systemctl", "start", "hello.socket")
	}
	// The unit's journal as it comes, to wait for a line: every line
	// after the cursor, however late journalctl starts to follow.
	a.cursor = a.sd.cursor()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, "nsenter", "-t", strconv.Itoa(a.sd.pid), "-m", "-p", "--",
		"journalctl", "-f", "--after-cursor", a.cursor, "-o", "cat", "-u", a.unit)
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout = pw
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	a.log = newLogWatch(pr)
	t.Cleanup(func() { cancel(); cmd.Wait() })
}

// in returns sd as seen from test t (a subtest), so that a failed
// command fails t rather than the test that booted systemd.
func (sd *realSystemd) in(t *testing.T) *realSystemd {
	c := *sd
	c.t = t
	return &c
}

// cursor returns the journal's cursor now.
func (sd *realSystemd) cursor() string {
	sd.t.Helper()
	out := sd.must("journalctl", "-n", "0", "--show-cursor", "-q")
	_, c, ok := strings.Cut(out, "-- cursor: ")
	if !ok {
		sd.t.Fatalf("journalctl --show-cursor: %q", out)
	}
	return strings.TrimSpace(c)
}

// start starts the unit, which must then serve.
// With Type=exec (hello-pidfile.service) the unit is active once hello
// runs, before it serves: start waits for its "ready" line too.
func (a *sdApp) start() {
	a.t.Helper()
	from := a.log.len()
	a.sd.must("systemctl", "start", a.unit)
	a.sd.waitUnit(a.unit, map[string]string{"ActiveState": "active", "SubState": "running"})
	a.waitReady(from)
	a.wantServes()
}

// waitReady waits for a first generation's "ready" line in the unit's
// journal after line from.
func (a *sdApp) waitReady(from int) {
	a.t.Helper()
	if a.json {
		a.log.waitFor(a.t, from, `"msg":"ready"`, `"generation":1,`)
	} else {
		a.log.waitFor(a.t, from, "msg=ready", "generation=1 ")
	}
}

// load puts 50 clients on the application (POSTs and GETs, a connection
// per request, every failure counted) until finished, and returns once
// they have completed 200 requests.
func (a *sdApp) load() *loadRun {
	t := a.t
	t.Helper()
	l := &loadRun{t: t, done: make(chan struct{})}
	out := make(chan load.Result, 1)
	l.results = out
	cfg := load.Config{Addr: a.addr, Concurrency: 50, Requests: 500, Until: l.done,
		MaxDuration: time.Until(deadline(t)), PostEvery: 2, Completed: &l.completed}
	go func() { out <- load.Run(context.Background(), cfg) }()
	t.Cleanup(func() { l.stop() })
	waitCount(t, &l.completed, 200)
	return l
}

// upgrade installs bin (hello; app.service's workers start from
// server.js as it is) and reloads through systemctl, which must succeed.
func (a *sdApp) upgrade(bin string) {
	t := a.t
	t.Helper()
	if a.node {
		install(t, "../examples/node/server.js", filepath.Join(a.dir, "server.js"))
	} else {
		install(t, bin, a.current("hello"))
	}
	if code, out := a.sd.systemctl("reload", a.unit); code != 0 {
		t.Fatalf("systemctl reload %s: exit %d\n%s", a.unit, code, out)
	}
}

// wantGeneration: hello serves as generation gen, once the previous one
// has exited (app.service: not checked).
func (a *sdApp) wantGeneration(gen int) {
	a.t.Helper()
	if a.node {
		return
	}
	code, body, err := a.get("/healthz")
	if err != nil || code != 200 || !strings.Contains(body, fmt.Sprintf("generation=%d ", gen)) {
		a.t.Fatalf("GET /healthz = %d %q %v, want generation %d", code, body, err, gen)
	}
}

// badReload installs a build that exits at start: systemctl reload must
// fail, and systemctl status must say why.
func (a *sdApp) badReload() {
	t := a.t
	t.Helper()
	if a.node {
		installBytes(t, []byte("console.error('bad build: config missing'); process.exit(1);\n"), filepath.Join(a.dir, "server.js"))
	} else {
		installBytes(t, []byte("#!/bin/sh\necho 'bad build: config missing' >&2\nexit 1\n"), a.current("hello"))
	}
	code, out := a.sd.systemctl("reload", a.unit)
	if code == 0 {
		t.Fatalf("systemctl reload of a bad build: exit 0, want a failure\n%s", out)
	}
	_, status := a.sd.systemctl("status", "-n", "30", a.unit)
	// The why: the service's STATUS= ("upgrade failed, generation N goes
	// on serving: …"), or handoff reload's own line in the journal, which
	// a crash-looping new generation's worker lines can push out of the
	// last 30; and the bad build's stderr.
	if !strings.Contains(status, "upgrade failed, generation") && !strings.Contains(status, "reload failed") ||
		!strings.Contains(status, "bad build: config missing") {
		t.Errorf("systemctl status after a failed reload does not say why:\n%s", status)
	}
	if st := a.sd.show(a.unit, "ActiveState")["ActiveState"]; st != "active" {
		t.Errorf("after a failed reload the unit is %s, want active", st)
	}
	a.wantServes()
}

// stopInFlight holds a request on the serving generation, runs systemctl
// stop, then finishes the request: it must be answered, and the unit must
// end inactive with Result=success.
func (a *sdApp) stopInFlight() {
	a.t.Helper()
	answer, state := a.stopWithRequest()
	ok := true
	if answer != "200" {
		ok = false
		a.t.Errorf("request in flight during systemctl stop: %s, want 200", answer)
	}
	if state != "inactive success" {
		ok = false
		a.t.Errorf("after systemctl stop: %s, want inactive with Result=success", state)
	}
	if ok {
		a.stops++
	}
}

// stopWithRequest holds a request on the serving generation, runs
// systemctl stop, then finishes the request. It returns the answer's
// status code (or the error) and the unit's ActiveState and Result after
// the stop.
func (a *sdApp) stopWithRequest() (answer, state string) {
	t := a.t
	t.Helper()
	conn, err := net.Dial("tcp", a.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	br := bufio.NewReader(conn)
	// A first request on the connection: it is surely accepted.
	fmt.Fprintf(conn, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("held connection: GET / = %v %v", resp, err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	fmt.Fprintf(conn, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\n\r\nhalf")

	stopped := make(chan string, 1)
	go func() {
		code, out := a.sd.systemctl("stop", a.unit)
		stopped <- fmt.Sprintf("exit %d %s", code, strings.TrimSpace(out))
	}()
	// systemd has begun the stop (or, cutting it, already ended it).
	a.sd.waitUnitNot(a.unit, "ActiveState", "active")
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	_, werr := io.WriteString(conn, "done")
	resp, err = http.ReadResponse(br, nil)
	switch {
	case werr != nil:
		answer = werr.Error()
	case err != nil:
		answer = err.Error()
	default:
		answer = strconv.Itoa(resp.StatusCode)
		resp.Body.Close()
	}
	out := <-stopped
	got := a.sd.show(a.unit, "ActiveState", "Result")
	state = got["ActiveState"] + " " + got["Result"]
	if state != "inactive success" {
		state += " (systemctl stop: " + out + ")"
	}
	return answer, state
}

// probationRestore upgrades, then kills the new generation as a build
// that crashes after ready would die: the old one, on probation, must
// restore its build, which serves.
func (a *sdApp) probationRestore() {
	t := a.t
	t.Helper()
	from := a.log.len()
	a.upgrade(helloV2)
	pid := a.pidInFile()
	a.sd.must("kill", "-9", strconv.Itoa(pid))
	a.log.waitFor(t, from, "NEW GENERATION DIED ON PROBATION")
	a.log.waitFor(t, from, "restored: this build serves again")
	code, body, err := a.get("/healthz")
	if err != nil || code != 200 || !strings.Contains(body, "version=v1") {
		t.Fatalf("after the restore: GET /healthz = %d %q %v, want v1", code, body, err)
	}
}

// killServing kills the serving generation with SIGKILL: systemd must
// notice and restart the unit (Restart=on-failure).
func (a *sdApp) killServing() {
	t := a.t
	t.Helper()
	before := a.sd.show(a.unit, "NRestarts", "MainPID")
	if pid := a.pidInFile(); strconv.Itoa(pid) != before["MainPID"] {
		t.Fatalf("systemd's main pid %s, the PID file's %d", before["MainPID"], pid)
	}
	a.sd.must("kill", "-9", before["MainPID"])
	n, _ := strconv.Atoi(before["NRestarts"])
	from := a.log.len()
	a.sd.waitUnit(a.unit, map[string]string{"NRestarts": strconv.Itoa(n + 1), "ActiveState": "active", "SubState": "running"})
	a.waitReady(from)
	if pid := a.sd.show(a.unit, "MainPID")["MainPID"]; pid == before["MainPID"] {
		t.Fatalf("restarted with the killed main pid %s", pid)
	}
	a.wantServes()
}

// pidInFile reads the service's PID file (a pid of the namespace).
func (a *sdApp) pidInFile() int {
	a.t.Helper()
	out := a.sd.must("cat", a.pidfile)
	pid, err := strconv.Atoi(strings.TrimSpace(out))
	if err != nil {
		a.t.Fatalf("PID file %s: %q", a.pidfile, out)
	}
	return pid
}

func (a *sdApp) get(path string) (int, string, error) {
	return (&service{t: a.t, addr: a.addr}).get(path)
}

// wantServes fails the test unless GET / is answered 200.
func (a *sdApp) wantServes() {
	a.t.Helper()
	if code, body, err := a.get("/"); err != nil || code != 200 {
		a.t.Fatalf("GET / = %d %q %v, want 200", code, body, err)
	}
}

var sdLogGen = regexp.MustCompile(`"?generation"?[=:](\d+)`)

// wantJournal: every line a generation logged since the case began is in
// the journal under the unit, and generations 1 to 3 logged that they
// were ready.
func (a *sdApp) wantJournal() {
	t := a.t
	t.Helper()
	out := a.sd.must("journalctl", "--no-pager", "-o", "json", "--after-cursor", a.cursor)
	ready := map[string]bool{}
	lines := 0
	for line := range strings.SplitSeq(out, "\n") {
		var e journalEntry
		if json.Unmarshal([]byte(line), &e) != nil {
			continue
		}
		m := sdLogGen.FindStringSubmatch(e.Message)
		if m == nil || !strings.Contains(e.Message, "pid") || e.Comm == "systemd" {
			continue
		}
		lines++
		if e.Unit != a.unit {
			t.Errorf("journal line of pid %s (%s) attributed to %q, want %s: %s", e.PID, e.Comm, e.Unit, a.unit, e.Message)
		}
		if strings.Contains(e.Message, `"msg":"ready"`) || strings.Contains(e.Message, "msg=ready") {
			ready[m[1]] = true
		}
	}
	for _, g := range []string{"1", "2", "3"} {
		if !ready[g] {
			t.Errorf("no ready line of generation %s in the journal of %s (%d lines of generations)", g, a.unit, lines)
		}
	}
	if !strings.Contains(out, "is not systemd's child") {
		t.Errorf("no generation started by an upgrade logged that only ExecStop= drains it under systemd")
	}
}

// waitUnitNot waits until the unit's property is no longer v.
func (sd *realSystemd) waitUnitNot(unit, prop, v string) {
	sd.t.Helper()
	end := deadline(sd.t)
	for sd.show(unit, prop)[prop] == v {
		if time.Now().After(end) {
			sd.t.Fatalf("unit %s: %s still %s", unit, prop, v)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// wantOnlyTestUnits: nothing but journald and the test's own units was
// started in the namespace (no host service, no timer).
func (sd *realSystemd) wantOnlyTestUnits() {
	sd.t.Helper()
	out := sd.must("systemctl", "list-units", "--no-legend", "--plain", "--state=active", "--type=service,timer,path")
	for line := range strings.SplitSeq(strings.TrimSpace(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		switch f[0] {
		case "systemd-journald.service", "hello.service", "app.service":
		default:
			if !strings.HasPrefix(f[0], "hello@") {
				sd.t.Errorf("unit %s is active in the test's systemd: it started more than the test's units", f[0])
			}
		}
	}
}
