//go:build linux

package upgrader

import (
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestGenerationDrain: the generation's drain tells a drain after an
// upgrade from a final stop by the phase the upgrade left. After an
// upgrade it leaves its drain record for the next generation's metrics,
// keeps the PID file (the new generation's now) and, with a probation,
// stands by. A final stop tells systemd it stops, removes the PID file
// that names it, and never stands by.
func TestGenerationDrain(t *testing.T) {
	for _, tc := range []struct {
		name      string
		phase     phase
		probation time.Duration
		final     bool
		standing  bool
	}{
		{name: "after an upgrade", phase: phaseDraining},
		{name: "after an upgrade, on probation", phase: phaseDraining, probation: time.Minute, standing: true},
		{name: "final stop", phase: phaseReady, final: true},
		{name: "final stop with a probation set", phase: phaseReady, probation: time.Minute, final: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			notify := standInNotify(t)
			u, _ := probationUpgrader(t, tc.probation)
			u.opts.PIDFile = filepath.Join(t.TempDir(), "app.pid")
			u.opts.DrainTimeout = 10 * time.Second
			u.drainSt = newDrainState()
			u.force = make(chan struct{})
			u.phase.set(tc.phase)
			if err := writePIDFile(u.opts.PIDFile, os.Getpid()); err != nil {
				t.Fatal(err)
			}
			if err := u.state.write(genState{PID: os.Getpid() + 1}); err != nil {
				t.Fatal(err)
			}
			p := newPool(1, serveUntilClosed, []net.Listener{newFakeListener()}, nil, discardLogger(), nil)
			p.start()
			<-p.ready()

			if err := u.drain(p, nil); err != nil {
				t.Fatal(err)
			}
			if !isClosedChan(u.drainSt.done) {
				t.Error("drain state not done after the drain")
			}
			st, err := u.state.read()
			if err != nil {
				t.Fatal(err)
			}
			recorded := slices.ContainsFunc(st.Drains, func(r drainRecord) bool { return r.PID == os.Getpid() })
			if recorded == tc.final {
				t.Errorf("drain records %+v; want one only after an upgrade", st.Drains)
			}
			_, err = os.Stat(u.opts.PIDFile)
			if kept := err == nil; kept == tc.final {
				t.Errorf("PID file kept %v, want kept only after an upgrade (stat: %v)", kept, err)
			}
			if got := u.phase.get() == phaseStopping; got != tc.final {
				t.Errorf("phase %v, want stopping only on a final stop", u.phase.get())
			}
			if got := u.standing.Load(); got != tc.standing {
				t.Errorf("standing by %v, want %v", got, tc.standing)
			}
			if tc.final {
				if msg := nextNotification(t, notify); !strings.HasPrefix(msg, "STOPPING=1") {
					t.Errorf("told systemd %q, want STOPPING=1", msg)
				}
			} else {
				notify.SetReadDeadline(time.Now())
				if _, err := notify.Read(make([]byte, 64)); err == nil {
					t.Error("a drain after an upgrade told systemd something")
				}
			}
		})
	}
}
