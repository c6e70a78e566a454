//go:build integration

package integration

import (
	"strconv"
	"strings"
	"testing"
)

// Break 1: a new generation that is not ready yet answers no control
// request. Every status asked while it starts comes from the serving
// generation, and a stop sent meanwhile stops the whole service: the
// upgrade ends, then both generations exit.
func TestHostileControlOnlyServingGeneration(t *testing.T) {
	s := startHello(t, helloV1, "--workers", "1", "--worker-mode", "process", "--ready", "delay:3s")
	pid := s.pid()
	from := s.log.len()
	reload := s.reloadAsync()
	// The new generation has started its worker, so it serves its control
	// actor too: it would accept from here on without the rule.
	s.log.waitFor(t, from, "msg=\"worker started\"", "generation=2")
	asked := 0
	for range 12 {
		st := s.statusJSON()
		asked++
		if st.PID != pid {
			t.Errorf("status during the upgrade answered by pid %d (state %s, generation %d), want the serving pid %d",
				st.PID, st.State, st.Generation, pid)
		}
	}
	code, out, errOut := s.handoff("stop")
	if code != 0 {
		t.Fatalf("handoff stop during the upgrade: exit %d\n%s%s", code, out, errOut)
	}
	r := <-reload
	t.Logf("%d statuses during the upgrade; reload: exit %d %s%s; stop: %s", asked, r.code, r.out, r.errOut, out)
	if r.code != 0 {
		t.Errorf("reload with a stop during it: exit %d, want 0 (the upgrade ends, then both stop)\n%s", r.code, r.errOut)
	}
	newPID := 0
	if i := strings.Index(r.out, "→ "); i >= 0 {
		newPID, _ = strconv.Atoi(strings.Fields(r.out[i+len("→ "):])[0])
	}
	waitExit(t, pid)
	if newPID > 0 {
		waitExit(t, newPID)
	}
	if left := s.pids(); len(left) > 0 {
		t.Errorf("processes left after a stop sent during the upgrade: %v", left)
	}
}
