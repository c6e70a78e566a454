//go:build integration

package integration

import (
	"fmt"
	"strings"
	"testing"
)

// testsvcBuilds returns testsvc stamped v1, crash-after-ready (its
// workers exit 300ms after they start) and v2.
func testsvcBuilds(t *testing.T) (v1, crashy, v2 string) {
	return buildBin(t, "integration/testdata/testsvc", "v1"),
		buildBin(t, "integration/testdata/testsvc", "crash-after-ready"),
		buildBin(t, "integration/testdata/testsvc", "v2")
}

// TestProbationRestoresPreviousBuild: goroutine workers, --probation. An
// upgrade to a build that reports ready, then crashes, succeeds; the
// previous generation, standing by while it still drains a request, starts
// its own build again on the sockets at once, which serves the load
// without a failure; it then upgrades as usual. Requests the crashing
// generation had in flight are reported.
func TestProbationRestoresPreviousBuild(t *testing.T) {
	v1, crashy, v2 := testsvcBuilds(t)
	s := newService(t, v1, "svc")
	s.start("--workers", "2", "--probation", "30s")
	s.waitReady()
	first := s.pid()
	l := runLoad(t, s, false)
	// A request held on the first generation keeps it draining: the
	// restore must not wait for the drain to end.
	held := holdRequest(t, s)

	install(t, crashy, s.exe)
	s.reload()
	i := s.log.waitFor(t, 0, "NEW GENERATION DIED ON PROBATION", fmt.Sprintf("pid=%d", first))
	i = s.log.waitFor(t, i, "restored: this build serves again", fmt.Sprintf("pid=%d", first))
	held.wantFinished()
	restored := s.pid()
	if restored == first || !alive(restored) {
		t.Fatalf("pid file names %d after the restore (first generation %d)", restored, first)
	}
	res := l.stop()
	t.Logf("load through the crash and the restore: %s", res)
	if code, body, err := s.get("/healthz"); err != nil || code != 200 || !strings.Contains(body, "generation=3 version=v1") {
		t.Errorf("GET /healthz after the restore = %d %q %v, want generation 3 running v1", code, body, err)
	}
	after := runLoad(t, s, false)
	after.advance(2000)
	after.finish()
	waitExit(t, first)
	s.onlyProcess(restored)

	install(t, v2, s.exe)
	s.reload()
	if code, body, err := s.get("/healthz"); err != nil || code != 200 || !strings.Contains(body, "generation=4 version=v2") {
		t.Errorf("GET /healthz after the next upgrade = %d %q %v, want generation 4 running v2", code, body, err)
	}
}

// TestProbationEnds: after a good upgrade, the previous generation stands
// by for the probation, then exits; if the new generation is stopped as
// asked meanwhile, the previous one does not restore its build, and both
// are gone.
func TestProbationEnds(t *testing.T) {
	v1, _, v2 := testsvcBuilds(t)
	t.Run("probation over", func(t *testing.T) {
		s, first := upgradeOnProbation(t, v1, v2, "1s")
		// Standing by, unless the drain outlasted the probation.
		s.log.waitFor(t, 0, "probation over: the new generation stays", fmt.Sprintf("pid=%d", first))
		s.log.waitFor(t, 0, "previous generation exited", "generation=2")
		s.onlyProcess(s.pid())
	})
	t.Run("stopped during probation", func(t *testing.T) {
		s, first := upgradeOnProbation(t, v1, v2, "60s")
		s.log.waitFor(t, 0, "standing by while the new generation is on probation", fmt.Sprintf("pid=%d", first))
		second := s.pid()
		if code, out, errOut := s.handoff("stop"); code != 0 {
			t.Fatalf("handoff stop: exit %d\n%s%s", code, out, errOut)
		}
		s.log.waitFor(t, 0, "the new generation stopped as asked: not restoring", fmt.Sprintf("pid=%d", first))
		waitExit(t, second)
		<-s.exited
		if strings.Contains(s.log.String(), "NEW GENERATION DIED") {
			t.Errorf("a stop as asked was taken for a death:\n%s", s.log)
		}
		wantNothingLeft(t, s)
	})
}

// TestProbationRestoresSocketActivated: a service that took its socket
// from systemd by name (--listen systemd:http) is restored on it too: the
// restored process finds it under the same name.
func TestProbationRestoresSocketActivated(t *testing.T) {
	v1, crashy, _ := testsvcBuilds(t)
	s := newService(t, v1, "svc")
	s.adjust = withActivation(t)
	s.startArgs("--listen", "systemd:http", "--pidfile", s.pidfile, "--workers", "2", "--probation", "30s")
	s.waitReady()
	first := s.pid()
	install(t, crashy, s.exe)
	s.reload()
	s.log.waitFor(t, 0, "restored: this build serves again", fmt.Sprintf("pid=%d", first))
	if code, body, err := s.get("/healthz"); err != nil || code != 200 || !strings.Contains(body, "version=v1") {
		t.Errorf("GET /healthz after the restore = %d %q %v, want v1", code, body, err)
	}
}

// upgradeOnProbation starts from with --probation probation, upgrades it
// to to, and returns the service and the first generation's pid.
func upgradeOnProbation(t *testing.T, from, to, probation string) (*service, int) {
	t.Helper()
	s := newService(t, from, "svc")
	s.start("--workers", "2", "--probation", probation)
	s.waitReady()
	first := s.pid()
	install(t, to, s.exe)
	s.reload()
	return s, first
}
