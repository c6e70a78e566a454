//go:build integration

package integration

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gohandoff/handoff/internal/load"
)

// waitCount waits until c reaches n, bounded by the test's deadline.
func waitCount(t *testing.T, c *atomic.Int64, n int64) {
	t.Helper()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	end := deadline(t)
	for c.Load() < n {
		if time.Now().After(end) {
			t.Fatalf("load stalled at %d requests, want %d", c.Load(), n)
		}
		<-tick.C
	}
}

// startLoad runs a load on s until done is closed and at least requests
// were sent; the result arrives on the returned channel.
func startLoad(t *testing.T, s *service, keepAlive bool, requests int64, done <-chan struct{}, completed *atomic.Int64) <-chan load.Result {
	t.Helper()
	return startLoadConfig(t, load.Config{Addr: s.addr, Concurrency: 200, Requests: requests, Until: done,
		KeepAlive: keepAlive, PostEvery: 2, Completed: completed})
}

// startLoadConfig runs cfg, bounded by the test's deadline; the result arrives
// on the returned channel.
func startLoadConfig(t *testing.T, cfg load.Config) <-chan load.Result {
	t.Helper()
	cfg.MaxDuration = time.Until(deadline(t))
	out := make(chan load.Result, 1)
	go func() { out <- load.Run(context.Background(), cfg) }()
	return out
}

func checkLoad(t *testing.T, res load.Result) {
	t.Helper()
	t.Logf("load: %s", res)
	if res.Failed != 0 || res.OK != res.Requests {
		t.Errorf("failed requests: %d of %d (ok %d), by kind %v; first errors: %q", res.Failed, res.Requests, res.OK, res.ByKind, res.Errors)
	}
}

// TestUpgradesUnderLoadLoseNothing replaces the binary and upgrades five
// times, alternating handoff reload and kill -HUP, under 200 concurrent
// clients, with a connection per request and with keep-alive.
func TestUpgradesUnderLoadLoseNothing(t *testing.T) {
	for _, keepAlive := range []bool{false, true} {
		name := "connection-per-request"
		if keepAlive {
			name = "keep-alive"
		}
		t.Run(name, func(t *testing.T) {
			s := startHello(t, helloV1)
			var completed atomic.Int64
			done := make(chan struct{})
			results := startLoad(t, s, keepAlive, 20000, done, &completed)
			waitCount(t, &completed, 1000)
			for i := range 5 {
				gen := i + 2
				bin, version := helloV2, "v2"
				if i%2 == 1 {
					bin, version = helloV1, "v1"
				}
				install(t, bin, s.exe)
				from := s.log.len()
				if i%2 == 0 {
					code, out, errOut := s.handoff("reload")
					if code != 0 {
						t.Fatalf("handoff reload #%d: exit %d\n%s%s", i+1, code, out, errOut)
					}
					if want := fmt.Sprintf("generation %d, version %s", gen, version); !strings.Contains(out, want) {
						t.Errorf("handoff reload #%d printed %q, want it to contain %q", i+1, out, want)
					}
				} else {
					if err := syscall.Kill(s.pid(), syscall.SIGHUP); err != nil {
						t.Fatal(err)
					}
					s.log.waitFor(t, from, "msg=ready", fmt.Sprintf("generation=%d", gen))
				}
				waitCount(t, &completed, completed.Load()+2000)
			}
			close(done)
			checkLoad(t, <-results)
			s.log.waitFor(t, 0, "previous generation exited", "generation=6")
			code, body, err := s.get("/version")
			if err != nil || code != 200 || body != "v2" {
				t.Errorf("GET /version = %d %q %v, want 200 v2", code, body, err)
			}
			if pids := s.pids(); len(pids) != 1 || pids[0] != s.pid() {
				t.Errorf("processes left: %v, want only the pid file's %d", pids, s.pid())
			}
		})
	}
}

// TestRequestInFlightFinishesOnOldGeneration: a slow request accepted by
// the old generation completes with 200 after the upgrade.
func TestRequestInFlightFinishesOnOldGeneration(t *testing.T) {
	s := startHello(t, helloV1)
	oldPID := s.pid()
	type answer struct {
		code int
		body string
		err  error
	}
	answers := make(chan answer, 1)
	go func() {
		code, body, err := s.get("/sleep?d=2s")
		answers <- answer{code, body, err}
	}()
	s.log.waitFor(t, 0, "sleep request in flight")
	install(t, helloV2, s.exe)
	if code, out, errOut := s.handoff("reload"); code != 0 {
		t.Fatalf("handoff reload: exit %d\n%s%s", code, out, errOut)
	}
	if newPID := s.pid(); newPID == oldPID {
		t.Fatalf("pid file still holds %d after the reload", oldPID)
	}
	a := <-answers
	if a.err != nil || a.code != 200 || !strings.Contains(a.body, fmt.Sprintf("pid %d", oldPID)) {
		t.Fatalf("in-flight request: %d %q %v, want 200 from old pid %d", a.code, a.body, a.err, oldPID)
	}
	s.log.waitFor(t, 0, "previous generation exited", "generation=2")
}

// TestFailedUpgradeKeepsServing: a new binary that exits 1 at start makes
// handoff reload fail with the exit status while the old generation goes
// on serving under load without a failed request.
func TestFailedUpgradeKeepsServing(t *testing.T) {
	s := startHello(t, helloV1)
	oldPID := s.pid()
	var completed atomic.Int64
	done := make(chan struct{})
	results := startLoad(t, s, false, 20000, done, &completed)
	waitCount(t, &completed, 1000)

	bad := []byte("#!/bin/sh\necho 'bad build: config missing' >&2\nexit 1\n")
	installBytes(t, bad, s.exe)
	code, out, errOut := s.handoff("reload")
	if code == 0 {
		t.Fatalf("handoff reload succeeded with a binary that exits 1:\n%s", out)
	}
	if !strings.Contains(errOut, "exit status 1") {
		t.Errorf("handoff reload stderr %q does not name the exit status", errOut)
	}
	from := s.log.len()
	if err := syscall.Kill(oldPID, syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	s.log.waitFor(t, from, "upgrade failed", "exit status 1")
	waitCount(t, &completed, completed.Load()+2000)
	close(done)
	checkLoad(t, <-results)
	if got := s.pid(); got != oldPID {
		t.Errorf("pid file holds %d, want the serving %d", got, oldPID)
	}
	if code, body, err := s.get("/version"); err != nil || code != 200 || body != "v1" {
		t.Errorf("GET /version = %d %q %v, want 200 v1", code, body, err)
	}
	if pids := s.pids(); len(pids) != 1 || pids[0] != oldPID {
		t.Errorf("processes: %v, want only %d", pids, oldPID)
	}
}

// TestKeepAliveConnsCrossUpgrades: 1000 keep-alive clients through five
// upgrades open 1000 connections in all, with no failure, in both worker
// modes: every connection moves to the new generation at a request
// boundary (in process mode from the old workers to the new ones), which
// answers its next request, and no client sees a close.
func TestKeepAliveConnsCrossUpgrades(t *testing.T) {
	const clients = 1000
	forEachMode(t, func(t *testing.T, m workerMode) {
		s := startHello(t, helloV1, m.args...)
		var completed atomic.Int64
		done := make(chan struct{})
		results := startLoadConfig(t, load.Config{Addr: s.addr, Concurrency: clients, Requests: 20000, Until: done,
			KeepAlive: true, PostEvery: 2, Completed: &completed})
		waitCount(t, &completed, 2000)
		for i := range 5 {
			gen := i + 2
			from := s.log.len()
			if err := syscall.Kill(s.pid(), syscall.SIGHUP); err != nil {
				t.Fatal(err)
			}
			s.log.waitFor(t, from, "msg=ready", fmt.Sprintf("generation=%d", gen))
			s.log.waitFor(t, from, "previous generation exited")
			waitCount(t, &completed, completed.Load()+2000)
		}
		close(done)
		res := <-results
		checkLoad(t, res)
		if res.Dials != clients {
			t.Errorf("clients dialled %d times through 5 upgrades, want %d: one connection each", res.Dials, clients)
		}
		if n := strings.Count(s.log.String(), "connections handed over to the new generation"); n == 0 {
			t.Error("no generation logged connections handed over")
		}
	})
}

// TestIdleRaceThroughUpgrades is the keep-alive race: clients that think
// from 0 to 1.5 s between POSTs (past the drain's idle grace of 1 s) keep
// their connections through ten upgrades with no failure, in both worker
// modes, as no idle connection is closed under a request: each moves to
// the new generation.
func TestIdleRaceThroughUpgrades(t *testing.T) {
	forEachMode(t, func(t *testing.T, m workerMode) {
		s := startHello(t, helloV1, m.args...)
		var completed atomic.Int64
		done := make(chan struct{})
		results := startLoadConfig(t, load.Config{Addr: s.addr, Concurrency: 100, Requests: 1, Until: done,
			KeepAlive: true, PostEvery: 1, Think: 1500 * time.Millisecond, Completed: &completed})
		waitCount(t, &completed, 100)
		for i := range 10 {
			from := s.log.len()
			if err := syscall.Kill(s.pid(), syscall.SIGHUP); err != nil {
				t.Fatal(err)
			}
			s.log.waitFor(t, from, "msg=ready", fmt.Sprintf("generation=%d", i+2))
			waitCount(t, &completed, completed.Load()+30)
		}
		close(done)
		res := <-results
		checkLoad(t, res)
		if res.Dials != 100 {
			t.Errorf("clients dialled %d times through 10 upgrades, want 100", res.Dials)
		}
	})
}
