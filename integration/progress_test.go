//go:build integration

package integration

import (
	"fmt"
	"strings"
	"testing"
)

// TestReloadFollowsTheDrain: handoff reload --follow (the default on a
// terminal) prints the result once the new generation is ready, then the
// old generation's drain (a request in flight is a connection left) until
// it is over; --no-follow returns at ready.
func TestReloadFollowsTheDrain(t *testing.T) {
	s := startHello(t, helloV1)
	oldPID := s.pid()
	answered := make(chan error, 1)
	go func() {
		code, _, err := s.get("/sleep?d=1s")
		if err == nil && code != 200 {
			err = fmt.Errorf("status %d", code)
		}
		answered <- err
	}()
	s.log.waitFor(t, 0, "sleep request in flight")
	install(t, helloV2, s.exe)
	code, out, errOut := s.handoff("reload", "--follow")
	if code != 0 {
		t.Fatalf("handoff reload --follow: exit %d\n%s%s", code, out, errOut)
	}
	if !strings.HasPrefix(out, "reloaded: pid ") {
		t.Errorf("stdout %q, want the result line", out)
	}
	for _, want := range []string{
		"starting new generation",
		"ready in",
		fmt.Sprintf("draining old generation pid %d: 1 connection left", oldPID),
		fmt.Sprintf("old generation pid %d drained in", oldPID),
		"done",
	} {
		if !strings.Contains(errOut, want) {
			t.Errorf("handoff reload stderr lacks %q:\n%s", want, errOut)
		}
	}
	// The drain was over when reload returned: the request was answered.
	select {
	case err := <-answered:
		if err != nil {
			t.Errorf("in-flight request: %v", err)
		}
	default:
		t.Errorf("handoff reload returned before the old generation's drain ended")
	}

	s.log.waitFor(t, 0, "previous generation exited", "generation=2")
	install(t, helloV1, s.exe)
	code, out, errOut = s.handoff("reload", "--no-follow")
	if code != 0 || !strings.Contains(out, "generation 3") || strings.Contains(errOut, "drain") {
		t.Errorf("handoff reload --no-follow: exit %d, stdout %q, stderr %q; want the result and no drain", code, out, errOut)
	}
}
