//go:build integration

package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gohandoff/handoff/internal/load"
)

// The keep-alive hand-over's faults, with real processes: a new generation
// that dies, or stalls, while it takes the previous one's connections over.
// testsvc's fault builds strike at the 100th connection their first
// process takes (see integration/testdata/testsvc).

// handOverFaultClients is how many keep-alive clients the fault tests run:
// more than one receiver's channels carry at once (4 × 64).
const handOverFaultClients = 1000

// startHandOverFault starts testsvc v1 with args under the keep-alive
// load, installs the fault build and upgrades to it without waiting.
func startHandOverFault(t *testing.T, fault string, args ...string) (*service, *atomic.Int64, chan struct{}, <-chan load.Result) {
	t.Helper()
	s := newService(t, buildBin(t, "integration/testdata/testsvc", "v1"), "svc")
	s.start(args...)
	s.waitReady()
	completed := new(atomic.Int64)
	done := make(chan struct{})
	results := startLoadConfig(t, load.Config{Addr: s.addr, Concurrency: handOverFaultClients, Requests: 10000, Until: done,
		KeepAlive: true, PostEvery: 2, Completed: completed})
	t.Cleanup(func() {
		select {
		case <-done:
		default:
			close(done)
			<-results
		}
	})
	waitCount(t, completed, 2*handOverFaultClients)
	// Every client's connection is the first generation's, none left in
	// the listen queue for the new one to accept: the new generation's
	// connections all come from the hand-over.
	_, port, _ := strings.Cut(s.addr, ":")
	for end := deadline(t); ; time.Sleep(5 * time.Millisecond) {
		held := 0
		for _, pid := range s.pids() {
			held += establishedOf(t, pid, port)
		}
		if held == handOverFaultClients {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("the first generation holds %d client connections, want %d", held, handOverFaultClients)
		}
	}
	install(t, buildBin(t, "integration/testdata/testsvc", fault), s.exe)
	if err := syscall.Kill(s.pid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	return s, completed, done, results
}

// TestHandOverNewGenerationKilled: the new generation's process that takes
// the connections over is killed (SIGKILL) at its 100th. Only the
// connections it held fail (at most 100: each one's client sees it
// close); every other connection is served, by the old generation or a
// newer one, and the service serves on. Goroutine mode restores the old
// build from its probation; in process mode the new generation's master
// starts another worker.
func TestHandOverNewGenerationKilled(t *testing.T) {
	for _, m := range []workerMode{
		{name: "goroutines", args: []string{"--workers", "2", "--probation", "30s"}},
		{name: "processes", args: []string{"--workers", "2", "--worker-mode", "process"}},
	} {
		t.Run(m.name, func(t *testing.T) {
			s, completed, done, results := startHandOverFault(t, "die-taking-conns", m.args...)
			from := s.log.len()
			s.log.waitFor(t, 0, "fault: killed after taking 100 connections")
			if m.name == "goroutines" {
				s.log.waitFor(t, from, "restored: this build serves again")
			} else {
				s.log.waitFor(t, from, "previous generation exited")
			}
			waitCount(t, completed, completed.Load()+2*handOverFaultClients)
			close(done)
			res := <-results
			t.Logf("load: %s", res)
			if res.Failed > 100 {
				t.Errorf("%d requests failed, more than the 100 connections the killed process held; by kind %v, first errors %q", res.Failed, res.ByKind, res.Errors)
			}
			if res.OK < 4*handOverFaultClients {
				t.Errorf("only %d requests served", res.OK)
			}
			if code, body, err := s.get("/healthz"); err != nil || code != 200 {
				t.Errorf("GET /healthz after the fault = %d %q %v, want the service serving", code, body, err)
			}
			log := s.log.String()
			if !strings.Contains(log, "a channel to a newer generation ended") {
				t.Error("the old generation never logged a channel that ended with the killed process")
			}
		})
	}
}

// TestHandOverNewGenerationStalls: the new generation stops taking
// connections over at its 100th, as a process stalled by load would. The
// cap holds: it has been handed no more than its channels carry at once
// (4 × 64) on top of those it took, while the old generation keeps the
// rest; its own accept loop serves new connections meanwhile. Once it
// takes connections again, every connection crosses: no request fails and
// no client dials again. Process mode runs one worker, so that one
// receiver takes all the connections.
func TestHandOverNewGenerationStalls(t *testing.T) {
	const capacity = 4 * 64
	for _, m := range []workerMode{
		{name: "goroutines", args: []string{"--workers", "2"}},
		{name: "processes", args: []string{"--workers", "1", "--worker-mode", "process"}},
	} {
		t.Run(m.name, func(t *testing.T) {
			s, completed, done, results := startHandOverFault(t, "stall-taking-conns", m.args...)
			from := s.log.len()
			i := s.log.waitFor(t, 0, "fault: stalls after taking 100 connections")
			pid, err := strconv.Atoi(logValue(s.log.line(i), "pid"))
			if err != nil {
				t.Fatalf("no pid in %q", s.log.line(i))
			}
			_, port, _ := strings.Cut(s.addr, ":")
			held := establishedOf(t, pid, port)
			t.Logf("the stalled receiver (pid %d) holds %d client connections", pid, held)
			if held < 100 || held > 100+capacity {
				t.Errorf("the stalled receiver holds %d client connections, want from 100 to %d: the cap in flight is %d", held, 100+capacity, capacity)
			}
			if code, body, err := s.get("/healthz"); err != nil || code != 200 || !strings.Contains(body, "generation=2") {
				t.Errorf("GET /healthz while the receiver stalls = %d %q %v, want generation 2 to accept and serve it", code, body, err)
			}
			if err := os.WriteFile(filepath.Join(s.dir, "fault-release"), nil, 0o644); err != nil {
				t.Fatal(err)
			}
			j := s.log.waitFor(t, from, "connections handed over to the new generation")
			s.log.waitFor(t, from, "previous generation exited")
			waitCount(t, completed, completed.Load()+2*handOverFaultClients)
			close(done)
			res := <-results
			checkLoad(t, res)
			if res.Dials != handOverFaultClients {
				t.Errorf("clients dialled %d times, want %d: one connection each", res.Dials, handOverFaultClients)
			}
			if n := logValue(s.log.line(j), "passed"); n != strconv.Itoa(handOverFaultClients) {
				t.Errorf("the old generation handed over %s connections, want all %d", n, handOverFaultClients)
			}
		})
	}
}

// TestHandOverChannelsFail: the new generation runs out of descriptors at
// its 100th connection taken over, so that the descriptors in flight to it
// cannot arrive and its channels fail while it lives on. The old
// generation keeps every connection not acknowledged and serves it, drops
// the failed channels, and either dials the new generation again or drains
// the rest; once descriptors are free again nothing has been lost: no
// request fails, and no drain cuts a connection.
func TestHandOverChannelsFail(t *testing.T) {
	for _, m := range []workerMode{
		{name: "goroutines", args: []string{"--workers", "2"}},
		{name: "processes", args: []string{"--workers", "1", "--worker-mode", "process"}},
	} {
		t.Run(m.name, func(t *testing.T) {
			s, completed, done, results := startHandOverFault(t, "nofile-taking-conns", m.args...)
			from := s.log.len()
			s.log.waitFor(t, 0, "fault: out of descriptors after taking 100 connections")
			s.log.waitFor(t, from, "a channel to a newer generation ended")
			if err := os.WriteFile(filepath.Join(s.dir, "fault-release"), nil, 0o644); err != nil {
				t.Fatal(err)
			}
			s.log.waitFor(t, from, "fault: descriptors again")
			s.log.waitFor(t, from, "previous generation exited")
			waitCount(t, completed, completed.Load()+2*handOverFaultClients)
			close(done)
			res := <-results
			checkLoad(t, res)
			if strings.Contains(s.log.String(), "connections cut") {
				t.Errorf("a drain cut connections:\n%s", s.log)
			}
			if code, body, err := s.get("/healthz"); err != nil || code != 200 || !strings.Contains(body, "generation=2") {
				t.Errorf("GET /healthz after the fault = %d %q %v, want generation 2 serving", code, body, err)
			}
		})
	}
}

// establishedOf counts the established TCP connections on local port
// (decimal) that process pid holds a descriptor of.
func establishedOf(t *testing.T, pid int, port string) int {
	t.Helper()
	p, err := strconv.Atoi(port)
	if err != nil {
		t.Fatal(err)
	}
	held := map[string]bool{}
	for _, l := range socketsOf(pid) {
		held[l] = true
	}
	n := 0
	for _, f := range procNetTCP(t) {
		if len(f) > 9 && f[3] == "01" && strings.HasSuffix(f[1], fmt.Sprintf(":%04X", p)) && held["socket:["+f[9]+"]"] {
			n++
		}
	}
	return n
}
