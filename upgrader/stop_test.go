//go:build unix

package upgrader

import (
	"syscall"
	"testing"
	"testing/synctest"
	"time"
)

// The stop races the README names, each driven through its interleaving
// on an Upgrader built in the test: no tableflip, no process.

func closedChan() chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}

func isClosedChan(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// TestStopDuringUpgradeWaitsForItsEnd: a stop asked between the start of
// an upgrade and its outcome (the new generation may be ready and serving
// already) does not stop anything at once; it is reported, once, by the
// phase the upgrade's outcome sets, so that both generations then stop.
func TestStopDuringUpgradeWaitsForItsEnd(t *testing.T) {
	for _, outcome := range []phase{phaseDraining, phaseReady} {
		t.Run(outcome.String(), func(t *testing.T) {
			u := &Upgrader{log: discardLogger(), ppid: 1, abort: make(chan struct{})}
			u.phase.set(phaseUpgrading)
			if u.requestStop("signal", "terminated") {
				t.Fatal("a stop during an upgrade stopped at once")
			}
			if isClosedChan(u.abort) {
				t.Fatal("a stop during an upgrade stopped this generation at once")
			}
			if !u.endUpgradePhase(outcome) {
				t.Fatalf("the upgrade ended (%v) without the stop asked meanwhile", outcome)
			}
			if u.phase.get() != outcome {
				t.Fatalf("phase %v after the upgrade ended %v", u.phase.get(), outcome)
			}
			u.phase.set(phaseUpgrading)
			if u.endUpgradePhase(outcome) {
				t.Error("the stop asked during the upgrade was reported twice")
			}
		})
	}
}

// TestSecondStopDuringUpgradeAbandonsIt: a second stop during the same
// upgrade does not wait for it. (ppid and an unready generation make Stop
// abort without tableflip: the path of a new generation stopped before it
// is ready.)
func TestSecondStopDuringUpgradeAbandonsIt(t *testing.T) {
	u := &Upgrader{log: discardLogger(), ppid: 1, abort: make(chan struct{})}
	u.phase.set(phaseUpgrading)
	if u.requestStop("signal", "terminated") {
		t.Fatal("the first stop during an upgrade stopped at once")
	}
	if !u.requestStop("signal", "terminated") {
		t.Fatal("the second stop during an upgrade waited for it")
	}
	if !isClosedChan(u.abort) {
		t.Fatal("the second stop during an upgrade did not stop")
	}
}

// TestStopOutsideUpgradeStopsAtOnce: outside an upgrade a stop is not
// put off.
func TestStopOutsideUpgradeStopsAtOnce(t *testing.T) {
	u := &Upgrader{log: discardLogger(), ppid: 1, abort: make(chan struct{})}
	u.phase.set(phaseStarting)
	if !u.requestStop("signal", "terminated") || !isClosedChan(u.abort) {
		t.Fatal("a stop outside an upgrade was put off")
	}
	u.phase.set(phaseUpgrading)
	if u.endUpgradePhase(phaseReady) {
		t.Error("a stop outside an upgrade was also kept for its end")
	}
}

// TestStopSignalWhileDrainingAfterUpgrade: systemd (KillMode=control-group)
// and a terminal's Ctrl-C signal every generation at once, so a generation
// draining after an upgrade takes its first stop signal as the stop it is
// already doing, and one more within StopSignalGrace as the same; only a
// signal at or after StopSignalGrace cuts the drain short.
func TestStopSignalWhileDrainingAfterUpgrade(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		u := &Upgrader{log: discardLogger(), exit: closedChan(), force: make(chan struct{})}
		u.phase.set(phaseDraining)
		u.onSignal(syscall.SIGTERM)
		if isClosedChan(u.force) {
			t.Fatal("the first stop signal while draining after an upgrade cut the drain short")
		}
		time.Sleep(StopSignalGrace - time.Nanosecond)
		u.onSignal(syscall.SIGINT)
		if isClosedChan(u.force) {
			t.Fatal("a second signal within StopSignalGrace of the first cut the drain short")
		}
		time.Sleep(time.Nanosecond)
		u.onSignal(syscall.SIGTERM)
		if !isClosedChan(u.force) {
			t.Fatal("a stop signal StopSignalGrace after the first did not cut the drain short")
		}
		u.onSignal(syscall.SIGTERM) // once cut, again is harmless
	})
}

// TestSecondStopSignalCutsFinalDrain: on a final stop, the stop signal's
// own repeats within StopSignalGrace (every process of the service got
// it) are the same stop; a later one cuts the drain short.
func TestSecondStopSignalCutsFinalDrain(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		u := &Upgrader{log: discardLogger(), exit: closedChan(), force: make(chan struct{})}
		u.phase.set(phaseStopping)
		u.stopSignals.Store(1) // the signal that started the stop
		u.stopSignalAt.Store(time.Now().UnixNano())
		time.Sleep(StopSignalGrace / 2)
		u.onSignal(syscall.SIGTERM)
		if isClosedChan(u.force) {
			t.Fatal("a repeat of the stop signal within StopSignalGrace cut the drain short")
		}
		time.Sleep(StopSignalGrace)
		u.onSignal(syscall.SIGTERM)
		if !isClosedChan(u.force) {
			t.Fatal("a second stop signal after StopSignalGrace did not cut the drain short")
		}
	})
}
