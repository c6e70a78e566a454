//go:build integration

package integration

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gohandoff/handoff/control"
)

// echoClient is a long-lived connection to examples/echo that sends a line
// every 100 ms and checks its echo, until the server closes it or stop.
type echoClient struct {
	holder int // pid of the generation that accepted it (connOwner)
	conn   net.Conn
	echoed atomic.Int64
	done   chan struct{}
	// Set when done is closed: the first failure, or closed, the error
	// the server's close gave (EOF or a reset), at closedAt.
	err      error
	closed   error
	closedAt time.Time
	lastEcho time.Time
	maxGap   time.Duration
}

// openEchoClients opens n clients on the echo service s, served by its
// serving generation, and returns once each has echoed its first line.
func openEchoClients(t *testing.T, s *service, n int, stop <-chan struct{}) []*echoClient {
	t.Helper()
	holder := s.pid()
	cs := make([]*echoClient, n)
	for i := range cs {
		conn, err := net.Dial("tcp", s.addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		c := &echoClient{holder: holder, conn: conn, done: make(chan struct{})}
		cs[i] = c
		go c.run(fmt.Sprintf("pid %d client %d", holder, i), stop)
	}
	for _, c := range cs {
		for c.echoed.Load() == 0 {
			select {
			case <-c.done:
				t.Fatalf("echo client on pid %d ended before its first echo: %v %v", holder, c.err, c.closed)
			case <-time.After(10 * time.Millisecond):
			}
			if time.Now().After(deadline(t)) {
				t.Fatal("echo client: no first echo before the test's deadline")
			}
		}
	}
	conns := make([]net.Conn, len(cs))
	for i, c := range cs {
		conns[i] = c.conn
	}
	for i, owner := range connOwners(t, s, conns) {
		cs[i].holder = owner
	}
	return cs
}

func (c *echoClient) run(name string, stop <-chan struct{}) {
	defer close(c.done)
	r := bufio.NewReader(c.conn)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for i := 0; ; i++ {
		line := fmt.Sprintf("%s line %d", name, i)
		c.conn.SetDeadline(time.Now().Add(10 * time.Second))
		err := echoLine(c.conn, r, line)
		now := time.Now()
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) {
				c.closed, c.closedAt = err, now
			} else {
				c.err = err
			}
			return
		}
		if !c.lastEcho.IsZero() {
			c.maxGap = max(c.maxGap, now.Sub(c.lastEcho))
		}
		c.lastEcho = now
		c.echoed.Add(1)
		select {
		case <-stop:
			return
		case <-tick.C:
		}
	}
}

// waitDone waits until every client has ended, bounded by the test's
// deadline.
func waitClientsDone(t *testing.T, cs []*echoClient) {
	t.Helper()
	for _, c := range cs {
		select {
		case <-c.done:
		case <-time.After(time.Until(deadline(t))):
			t.Fatalf("echo client on pid %d still open at the test's deadline", c.holder)
		}
	}
}

// drainingGens returns the generations of a status by pid.
func gensByPID(st control.Status) map[int]control.GenerationStatus {
	m := map[int]control.GenerationStatus{}
	for _, g := range st.Generations {
		m[g.PID] = g
	}
	return m
}

// reloadNoFollow runs handoff reload --no-follow and fails the test unless
// it succeeds.
func (s *service) reloadNoFollow() (string, time.Duration) {
	s.t.Helper()
	start := time.Now()
	code, out, errOut := s.handoff("reload", "--no-follow")
	took := time.Since(start)
	if code != 0 {
		s.t.Fatalf("handoff reload: exit %d\n%s%s", code, out, errOut)
	}
	return out, took
}

// TestOverlapEchoUnderLoad: 100 long-lived echo connections, 20 opened on
// each of 5 generations, sending a line every 100 ms, and ab -c 200 on an
// HTTP service, through 5 upgrades of both 1 s apart. Each reload is
// answered while every older generation still drains (it does not wait
// for a drain); every echo connection echoes every line on its own old
// generation, and is closed only at that generation's drain deadline;
// status lists all 6 generations; HTTP loses no request.
func TestOverlapEchoUnderLoad(t *testing.T) {
	ab := lookTool(t, "ab", "apache2-utils")
	forEachMode(t, func(t *testing.T, m workerMode) {
		echoV1 := buildBin(t, "examples/echo", "v1")
		echoV2 := buildBin(t, "examples/echo", "v2")
		e := newService(t, echoV1, "echo")
		e.start(append(m.args, "--drain-timeout", "20s", "--max-draining", "5")...)
		// The drain timeout must outlast the 5 upgrades (2 s each at a
		// load average of 20 on 2 cores), so that every reload is asked
		// while every older generation still drains.
		e.log.waitFor(t, 0, "msg=ready", "generation=1")
		h := startHello(t, helloV1, m.args...)

		// ab, every failure counted, until interrupted once the upgrades
		// are done (it prints its report then); 60 s at most.
		abCmd := exec.Command(ab, "-c", "200", "-t", "60", "-n", "50000000", "-s", "30", "http://"+h.addr+"/")
		var report bytes.Buffer
		abCmd.Stdout, abCmd.Stderr = &report, &report
		if err := abCmd.Start(); err != nil {
			t.Fatal(err)
		}
		abDone := make(chan error, 1)
		go func() { abDone <- abCmd.Wait() }()
		t.Cleanup(func() {
			abCmd.Process.Kill()
			select {
			case <-abDone:
			case <-time.After(10 * time.Second):
			}
		})

		stop := make(chan struct{})
		defer close(stop)
		var clients []*echoClient
		var holders []int
		var took []time.Duration
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for i := range 5 {
			<-tick.C
			holders = append(holders, e.pid())
			clients = append(clients, openEchoClients(t, e, 20, stop)...)
			bin := echoV2
			if i%2 == 1 {
				bin = echoV1
			}
			install(t, bin, e.exe)
			// The HTTP service is upgraded at the same time.
			hbin := helloV2
			if i%2 == 1 {
				hbin = helloV1
			}
			install(t, hbin, h.exe)
			hDone := make(chan reloadResult, 1)
			go func() {
				code, out, errOut := h.handoff("reload", "--no-follow")
				hDone <- reloadResult{code, out, errOut}
			}()
			out, d := e.reloadNoFollow()
			took = append(took, d)
			if !strings.Contains(out, fmt.Sprintf("generation %d", i+2)) {
				t.Errorf("reload %d: %q, want generation %d", i+1, out, i+2)
			}
			// Answered before any older generation's drain ended: each
			// still runs, with its connections.
			for _, pid := range holders {
				if !alive(pid) {
					t.Errorf("reload %d answered after generation pid %d had exited: it waited for a drain", i+1, pid)
				}
			}
			for _, c := range clients {
				select {
				case <-c.done:
					t.Errorf("echo client on pid %d ended before reload %d returned: %v %v", c.holder, i+1, c.err, c.closed)
				default:
				}
			}
			if r := <-hDone; r.code != 0 {
				t.Fatalf("handoff reload of the HTTP service: exit %d\n%s%s", r.code, r.out, r.errOut)
			}
		}
		select {
		case err := <-abDone:
			t.Fatalf("ab ended before the 5 upgrades were done (%v):\n%s", err, report.String())
		default:
		}

		// Status lists every generation: the serving one and 5 draining,
		// each with its deadline.
		st := e.statusJSON()
		gens := gensByPID(st)
		if len(st.Generations) != 6 || st.Generations[0].PID != e.pid() {
			t.Errorf("status lists %d generations %+v, want the serving pid %d first and the 5 draining", len(st.Generations), st.Generations, e.pid())
		}
		for _, pid := range holders {
			if g, ok := gens[pid]; !ok || g.State != "draining" || g.DrainDeadline.IsZero() {
				t.Errorf("status of pid %d: %+v, want draining with a deadline", pid, g)
			}
		}
		code, text, _ := e.handoff("status")
		for _, pid := range append(holders, e.pid()) {
			if code != 0 || !strings.Contains(text, fmt.Sprint(pid)) {
				t.Errorf("handoff status (exit %d) does not list pid %d:\n%s", code, pid, text)
			}
		}
		marks := make([]int64, len(clients))
		for i, c := range clients {
			marks[i] = c.echoed.Load()
		}

		abCmd.Process.Signal(os.Interrupt)
		if err := <-abDone; err != nil && !strings.Contains(report.String(), "Complete requests:") {
			t.Fatalf("ab: %v\n%s", err, report.String())
		}
		out := report.String()
		complete := countIn(t, out, `Complete requests:\s+(\d+)`)
		failed := countIn(t, out, `Failed requests:\s+(\d+)`)
		non2xx := countIn(t, out, `Non-2xx responses:\s+(\d+)`)
		t.Logf("ab -c 200 through 5 upgrades: complete=%d failed=%d non-2xx=%d", complete, failed, non2xx)
		if complete == 0 || failed != 0 || non2xx != 0 {
			t.Errorf("ab report:\n%s", out)
		}

		waitClientsDone(t, clients)
		var maxGap time.Duration
		for i, c := range clients {
			maxGap = max(maxGap, c.maxGap)
			dl := gens[c.holder].DrainDeadline
			switch {
			case c.err != nil:
				t.Errorf("echo client on pid %d: %v after %d echoes", c.holder, c.err, c.echoed.Load())
			case c.closed == nil:
				t.Errorf("echo client on pid %d ended without the server closing it", c.holder)
			case c.closedAt.Before(dl):
				t.Errorf("echo client on pid %d closed at %s, before its generation's drain deadline %s", c.holder, c.closedAt.Format(time.StampMilli), dl.Format(time.StampMilli))
			case c.echoed.Load() <= marks[i]:
				t.Errorf("echo client on pid %d echoed nothing after the last upgrade", c.holder)
			}
		}
		t.Logf("reloads answered in %v while older generations drained; echo: %d connections, longest gap between echoes %s", took, len(clients), maxGap.Round(time.Millisecond))
		e.log.waitFor(t, 0, "previous generation exited", "generation=6")
		for _, pid := range holders {
			waitExit(t, pid)
		}
		e.onlyProcess(e.pid())
		for _, s := range []*service{e, h} {
			if strings.Contains(s.log.String(), "level=ERROR") {
				t.Errorf("errors logged:\n%s", s.log)
			}
		}
	})
}

// TestOverlapMaxDraining: with --max-draining 2, a third overlapping drain
// ends the oldest draining generation at once: its held request is cut,
// which both generations log and the metrics count, while the two newer
// ones drain on and answer theirs. Then a stop during the overlap drains
// every generation and leaves nothing behind.
func TestOverlapMaxDraining(t *testing.T) {
	forEachMode(t, func(t *testing.T, m workerMode) {
		maddr := freeAddr(t)
		s := startHello(t, helloV1, append(m.args, "--max-draining", "2", "--drain-timeout", "60s", "--metrics", maddr)...)
		var held []*heldRequest
		for i := range 3 {
			held = append(held, holdRequest(t, s))
			from := s.log.len()
			s.upgradeN(i)
			s.log.waitFor(t, from, "msg=draining", fmt.Sprintf("pid=%d", held[i].master))
			if m.name == "processes" {
				// The old workers accept until their own drain starts:
				// the next held request must reach the new generation.
				for w := range 2 {
					s.log.waitFor(t, from, "msg=draining", fmt.Sprintf("generation=%d", i+1), fmt.Sprintf("worker=%d", w))
				}
			}
		}
		oldest := held[0].master
		s.log.waitFor(t, 0, "over --max-draining: ending the oldest draining generation at once", "max_draining=2",
			fmt.Sprintf("ended_pid=%d", oldest), "ended_generation=1")
		s.log.waitFor(t, 0, "ended at once by a newer generation over --max-draining", fmt.Sprintf("pid=%d", oldest))
		waitExit(t, oldest)
		if code, _, err := held[0].answer(); err == nil {
			t.Errorf("held request on the ended generation pid %d answered %d, want it cut", oldest, code)
		}
		for _, h := range held[1:] {
			if !alive(h.master) {
				t.Errorf("generation pid %d ended, want it draining: only the oldest goes past the cap", h.master)
			}
		}
		st := s.statusJSON()
		if len(st.Generations) != 3 {
			t.Errorf("status lists %+v, want the serving generation and the 2 draining", st.Generations)
		}
		ms, err := scrape(maddr)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("metrics: draining=%v ended=%v conns cut=%v", ms["handoff_draining_generations"], ms["handoff_draining_ended_total"], ms["handoff_drain_connections_cut_total"])
		if ms["handoff_draining_generations"] != 2 || ms["handoff_draining_ended_total"] != 1 {
			t.Errorf("handoff_draining_generations %v, handoff_draining_ended_total %v; want 2 and 1", ms["handoff_draining_generations"], ms["handoff_draining_ended_total"])
		}
		if m.name == "goroutines" && ms["handoff_drain_connections_cut_total"] != 1 {
			t.Errorf("handoff_drain_connections_cut_total %v, want the 1 held request cut", ms["handoff_drain_connections_cut_total"])
		}

		// A stop during the overlap: it waits for every generation,
		// whose held requests still complete.
		serving := s.pid()
		stopped := make(chan reloadResult, 1)
		from := s.log.len()
		go func() {
			code, out, errOut := s.handoff("stop")
			stopped <- reloadResult{code, out, errOut}
		}()
		s.log.waitFor(t, from, "msg=stopping", fmt.Sprintf("pid=%d", serving))
		for _, h := range held[1:] {
			h.wantFinished()
		}
		r := <-stopped
		if r.code != 0 || !strings.Contains(r.out, fmt.Sprint(held[1].master)) || !strings.Contains(r.out, fmt.Sprint(held[2].master)) {
			t.Errorf("handoff stop: exit %d %q %q, want it to wait for both draining generations", r.code, r.out, r.errOut)
		}
		if left := s.pids(); len(left) > 0 {
			t.Errorf("processes left after the stop: %v", left)
		}
		for _, p := range []string{s.pidfile, control.SocketPath(s.pidfile)} {
			if _, err := os.Stat(p); err == nil {
				t.Errorf("%s left after the stop", p)
			}
		}
		if strings.Contains(s.log.String(), "level=ERROR") {
			t.Errorf("errors logged:\n%s", s.log)
		}
	})
}

// TestOverlapRefusePolicy: with --max-draining 1 --max-draining-policy
// refuse, an upgrade that would make 2 draining generations is refused,
// naming the one that drains; the serving generation serves on and no
// held request is cut. A connection made once a reload has returned
// reaches the new generation, never the old one.
func TestOverlapRefusePolicy(t *testing.T) {
	s := startHello(t, helloV1, "--max-draining", "1", "--max-draining-policy", "refuse", "--drain-timeout", "60s")
	first := holdRequest(t, s)
	s.upgradeN(0)
	second := holdRequest(t, s)
	if second.pid == first.pid {
		// The old generation stops accepting before the reload is answered.
		t.Errorf("a connection made after the reload returned was accepted by the old generation, pid %d", first.pid)
	}
	pid, pidFile := s.pid(), s.pidFileBytes()
	install(t, helloV1, s.exe)
	code, out, errOut := s.handoff("reload", "--no-follow")
	if code == 0 {
		t.Fatalf("reload past the cap: exit 0 %q, want it refused", out)
	}
	wantContains(t, "refused reload", errOut, "upgrade refused: 1 generation still draining", fmt.Sprintf("pid %d", first.master),
		"--max-draining 1 with policy refuse")
	if got := s.pidFileBytes(); got != pidFile || s.pid() != pid || !alive(first.master) {
		t.Errorf("after the refusal: pid file %q (was %q), generation pid %d alive %v; want the serving one unchanged and the draining one on", got, pidFile, first.master, alive(first.master))
	}
	if st := s.statusJSON(); st.PID != pid || st.State != "ready" || len(st.Generations) != 2 {
		t.Errorf("status after the refusal: pid %d state %s generations %+v, want pid %d ready beside its draining parent", st.PID, st.State, st.Generations, pid)
	}
	first.wantFinished()
	waitExit(t, first.master)
	second.wantFinished()
	s.upgradeN(1)
	if code, body, err := s.get("/healthz"); err != nil || code != 200 || !strings.Contains(body, "generation=3") {
		t.Errorf("GET /healthz = %d %q %v, want generation 3 once the drain is over", code, body, err)
	}
}

// TestOverlapSoak: 50 upgrades 200 ms apart, with long-lived echo
// connections open on every generation (2 drains at most, the oldest
// ended past it): every connection echoes until its generation closes it,
// and the processes, open descriptors and resident memory of the service
// come back to the first generation's.
func TestOverlapSoak(t *testing.T) {
	forEachMode(t, func(t *testing.T, m workerMode) {
		echoV1 := buildBin(t, "examples/echo", "v1")
		s := newService(t, echoV1, "echo")
		s.start(append(m.args, "--drain-timeout", "1s", "--max-draining", "2")...)
		s.log.waitFor(t, 0, "msg=ready", "generation=1")
		base := s.pids()
		fdBase, rssBase := sumOf(t, base, openFDs), sumOf(t, base, rssKB)
		stop := make(chan struct{})
		defer close(stop)
		var clients []*echoClient
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		const n = 50
		peak := 0
		for range n {
			<-tick.C
			clients = append(clients, openEchoClients(t, s, 2, stop)...)
			s.reloadNoFollow()
			peak = max(peak, len(s.pids()))
		}
		s.log.waitFor(t, 0, "previous generation exited", fmt.Sprintf("generation=%d", n+1))
		waitClientsDone(t, clients)
		for _, c := range clients {
			if c.err != nil || c.closed == nil {
				t.Errorf("echo client on pid %d: %v (closed: %v), want echoes until the server closed it", c.holder, c.err, c.closed)
			}
		}
		last := s.generation(s.pid())
		for _, pid := range s.pids() {
			if !slices.Contains(last, pid) {
				waitExit(t, pid)
			}
		}
		last = s.pids()
		fdLast := fdsAtRest(t, last, fdBase)
		rssLast := sumOf(t, last, rssKB)
		t.Logf("overlap soak: %d upgrades 200 ms apart, %d echo connections, processes base=%d peak=%d end=%d, fds base=%d end=%d, rss base=%d kB end=%d kB",
			n, len(clients), len(base), peak, len(last), fdBase, fdLast, rssBase, rssLast)
		if len(last) != len(base) {
			t.Errorf("%d processes at the end, want %d as at the start: %v", len(last), len(base), last)
		}
		if !within10(fdBase, fdLast) {
			t.Errorf("open fds: %d at the start, %d at the end: not within 10%%", fdBase, fdLast)
		}
		if !within10(rssBase, rssLast) {
			t.Errorf("rss: %d kB at the start, %d kB at the end: not within 10%%", rssBase, rssLast)
		}
		if strings.Contains(s.log.String(), "level=ERROR") {
			t.Errorf("errors logged:\n%s", s.log)
		}
	})
}

// childrenOf lists the live child processes of pid.
func childrenOf(pid int) []int {
	var out []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		child, err := strconv.Atoi(e.Name())
		if err == nil && ppid(child) == pid && alive(child) {
			out = append(out, child)
		}
	}
	return out
}

// socketInodes lists the sockets pid has open, by inode.
func socketInodes(pid int) map[string]bool {
	out := map[string]bool{}
	ents, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	for _, e := range ents {
		if l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, e.Name())); err == nil && strings.HasPrefix(l, "socket:") {
			out[l] = true
		}
	}
	return out
}

// TestOverlapRunSteer: handoff run with kernel steering, a request held
// half-sent on a worker of generation 1, and 3 upgrades under ab while
// generation 1 drains: each reload is answered while generation 1 still
// runs, no newer worker is given a socket of generation 1's workers while
// they live (their socket sets pass from generation to generation), ab
// loses nothing, and generation 1 answers the held request at the end.
func TestOverlapRunSteer(t *testing.T) {
	rt := nodeApp(t)
	s, _ := startSteered(t, rt, 2, "--drain-timeout", "60s")
	gen1 := s.pid()
	c, err := net.Dial("tcp", s.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: %s\r\n", s.addr) // the headers not ended
	var ops []func()
	for i := range 3 {
		ops = append(ops, func() {
			if code, out, errOut := s.handoff("reload", "--no-follow"); code != 0 {
				t.Fatalf("handoff reload %d: exit %d\n%s%s", i+1, code, out, errOut)
			}
			if !alive(gen1) {
				t.Errorf("reload %d answered after generation 1 (pid %d) had exited", i+1, gen1)
			}
			// The workers: the children that are not a newer master.
			masters := s.pids()
			old := map[string]bool{}
			for _, w := range childrenOf(gen1) {
				if !slices.Contains(masters, w) {
					maps.Copy(old, socketInodes(w))
				}
			}
			for _, w := range childrenOf(s.pid()) {
				for ino := range socketInodes(w) {
					if old[ino] {
						t.Errorf("after reload %d, worker pid %d of generation %d shares %s with a live worker of generation 1", i+1, w, i+2, ino)
					}
				}
			}
		})
	}
	abThroughN(t, s, max(steerAB(t)/2, 1000), "3 reloads while generation 1 drains", ops...)
	if !slices.ContainsFunc(childrenOf(gen1), func(pid int) bool { return !slices.Contains(s.pids(), pid) }) {
		t.Fatalf("generation 1 (pid %d) has no worker left: the held request is gone", gen1)
	}
	c.SetDeadline(time.Now().Add(30 * time.Second))
	fmt.Fprintf(c, "\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("held request on generation 1: %v %v, want 200", resp, err)
	}
	resp.Body.Close()
	c.Close()
	waitExit(t, gen1)
	s.log.waitFor(t, 0, "previous generation exited", "generation=4")
	if strings.Contains(s.log.String(), "level=ERROR") {
		t.Errorf("errors logged:\n%s", s.log)
	}
}
