//go:build integration

package integration

import (
	"fmt"
	"strings"
	"testing"
)

// TestVerifyPassesThroughUpgrades: handoff verify loads hello, upgrades it
// through the control socket while loaded, and passes with zero failed
// requests, with a connection per request and with keep-alive.
func TestVerifyPassesThroughUpgrades(t *testing.T) {
	for _, keepAlive := range []bool{false, true} {
		name := "connection-per-request"
		if keepAlive {
			name = "keep-alive"
		}
		t.Run(name, func(t *testing.T) {
			s := startHello(t, helloV1)
			args := []string{"verify", "--url", "http://" + s.addr + "/", "--upgrades", "2", "--concurrency", "50", "--duration", "3s"}
			if keepAlive {
				args = append(args, "--keepalive")
			}
			code, out, errOut := s.handoff(args...)
			if code != 0 {
				t.Fatalf("handoff verify: exit %d, want 0\n%s%s", code, out, errOut)
			}
			for _, want := range []string{"upgrade 1 at", "generation 2,", "upgrade 2 at", "generation 3,", "failed 0", "PASS"} {
				if !strings.Contains(out, want) {
					t.Errorf("handoff verify output lacks %q:\n%s", want, out)
				}
			}
			s.log.waitFor(t, 0, "previous generation exited", "generation=3")
			if pids := s.pids(); len(pids) != 1 || pids[0] != s.pid() {
				t.Errorf("processes left: %v, want only the pid file's %d", pids, s.pid())
			}
		})
	}
}

// TestVerifyFailsOnFailedRequests: every answer that is not 200 counts, and
// verify exits 1 naming the count and kind.
func TestVerifyFailsOnFailedRequests(t *testing.T) {
	s := startHello(t, helloV1)
	// /sleep without a duration answers 400.
	code, out, errOut := s.handoff("verify", "--url", "http://"+s.addr+"/sleep", "--upgrades", "1", "--concurrency", "10", "--duration", "1s")
	if code != 1 {
		t.Fatalf("handoff verify on a 400 path: exit %d, want 1\n%s%s", code, out, errOut)
	}
	if !strings.Contains(out, "FAIL") || !strings.Contains(errOut, "requests failed (status ") {
		t.Errorf("handoff verify does not report the failed requests by kind:\nstdout:\n%s\nstderr:\n%s", out, errOut)
	}
}

// TestVerifyFailsOnFailedUpgrade: a new binary that exits at start fails the
// verification, while every request still succeeds on the old generation.
func TestVerifyFailsOnFailedUpgrade(t *testing.T) {
	s := startHello(t, helloV1)
	oldPID := s.pid()
	installBytes(t, []byte("#!/bin/sh\nexit 3\n"), s.exe)
	code, out, errOut := s.handoff("verify", "--url", "http://"+s.addr+"/", "--upgrades", "1", "--concurrency", "20", "--duration", "2s")
	if code != 1 {
		t.Fatalf("handoff verify with a failing upgrade: exit %d, want 1\n%s%s", code, out, errOut)
	}
	for _, want := range []string{"FAILED", "exit status 3", "failed 0"} {
		if !strings.Contains(out, want) {
			t.Errorf("handoff verify output lacks %q:\n%s", want, out)
		}
	}
	if !strings.Contains(errOut, "1 of 1 upgrades failed") {
		t.Errorf("handoff verify stderr %q, want it to name the failed upgrade", errOut)
	}
	if got := s.pid(); got != oldPID {
		t.Errorf("pid file holds %d, want the old generation %d", got, oldPID)
	}
}

// TestVerifyNeedsARunningService: no control socket, a clear error.
func TestVerifyNeedsARunningService(t *testing.T) {
	s := &service{t: t, pidfile: fmt.Sprintf("%s/run/none.pid", t.TempDir())}
	code, _, errOut := s.handoff("verify", "--url", "http://127.0.0.1:9/", "--duration", "1s")
	if code != 1 || !strings.Contains(errOut, "no running service to verify") {
		t.Errorf("handoff verify without a service: exit %d, stderr %q; want 1 and 'no running service to verify'", code, errOut)
	}
}
