package upgrader

import (
	"context"
	"errors"
	"sync"
	"testing"
)

// set puts the phase where a test's scene needs it, past the moves.
func (s *phaseState) set(p phase) { s.v.Store(int32(p)) }

var allPhases = []phase{phaseStarting, phaseReady, phaseUpgrading, phaseDraining, phaseStopping}

// TestPhaseMoves: every move of the diagram in phase.go is allowed and
// made, every other one is refused and leaves the phase as it was.
func TestPhaseMoves(t *testing.T) {
	allowed := map[[2]phase]bool{
		{phaseStarting, phaseReady}:     true,
		{phaseStarting, phaseStopping}:  true,
		{phaseReady, phaseUpgrading}:    true,
		{phaseReady, phaseStopping}:     true,
		{phaseUpgrading, phaseReady}:    true,
		{phaseUpgrading, phaseDraining}: true,
	}
	for _, from := range allPhases {
		for _, next := range append(allPhases, phase(-1), phase(len(phaseNames))) {
			var s phaseState
			s.set(from)
			got, moved := s.to(next)
			want := allowed[[2]phase{from, next}]
			if got != from || moved != want {
				t.Errorf("%v → %v: found %v, moved %v; want found %v, moved %v", from, next, got, moved, from, want)
			}
			if now := s.get(); moved && now != next || !moved && now != from {
				t.Errorf("%v → %v (moved %v): phase now %v", from, next, moved, now)
			}
		}
	}
	if (phase(-1)).may(phaseReady) || phase(len(phaseMoves)).may(phaseReady) {
		t.Error("a phase out of range may move")
	}
}

// TestPhaseZeroIsStarting: a new generation starts in phaseStarting
// without a store.
func TestPhaseZeroIsStarting(t *testing.T) {
	var s phaseState
	if s.get() != phaseStarting {
		t.Fatalf("zero phase %v", s.get())
	}
}

// TestPhaseNames: status and metrics name each phase as they always
// have; an unknown one is named by its number.
func TestPhaseNames(t *testing.T) {
	want := []string{"starting", "ready", "upgrading", "draining", "stopping"}
	for i, p := range allPhases {
		if p.String() != want[i] {
			t.Errorf("phase %d is %q, want %q", int(p), p.String(), want[i])
		}
	}
	if s := phase(7).String(); s != "phase(7)" {
		t.Errorf("phase 7 is %q", s)
	}
	if s := phase(-1).String(); s != "phase(-1)" {
		t.Errorf("phase -1 is %q", s)
	}
}

// TestPhaseRacingMoves: a generation's ready and its stop race (a first
// generation's Stop does not abort markReady); whichever comes first, a
// stopping generation is never taken back to ready, and of two racing
// moves out of starting to the same phase exactly one moves.
func TestPhaseRacingMoves(t *testing.T) {
	for range 200 {
		var s phaseState
		var wg sync.WaitGroup
		moved := make([]bool, 4)
		for i, next := range []phase{phaseReady, phaseStopping, phaseReady, phaseStopping} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, moved[i] = s.to(next)
			}()
		}
		wg.Wait()
		if s.get() != phaseStopping {
			t.Fatalf("phase %v after ready and stop raced, want stopping", s.get())
		}
		if moved[0] && moved[2] {
			t.Fatal("two moves out of starting to ready both moved")
		}
		if moved[1] && moved[3] {
			t.Fatal("two moves to stopping both moved")
		}
	}
}

// TestReadyAfterStopKeepsStopping: a first generation's Stop does not
// abort markReady, so the drain may have moved the phase to stopping
// before markReady runs; markReady leaves it there (the status, the drain
// report to systemd and absorbDrains read it), where a plain store took
// the stopping generation back to ready.
func TestReadyAfterStopKeepsStopping(t *testing.T) {
	u := mustNew(t, Options{}, newFakeHandover(t))
	u.phase.set(phaseStopping) // as drain, after the Stop
	if err := u.markReady(); err != nil {
		t.Fatal(err)
	}
	if u.phase.get() != phaseStopping {
		t.Fatalf("phase %v after markReady on a stopping generation, want stopping", u.phase.get())
	}
}

// TestUpgradeRefusedOnceStopping: a stop that comes after the upgrade's
// checks and before it moves to upgrading (the drain took the phase to
// stopping) refuses the upgrade: no new generation is started from a
// generation that stops, and the phase stays stopping.
func TestUpgradeRefusedOnceStopping(t *testing.T) {
	h := newFakeHandover(t)
	u := mustNew(t, Options{}, h)
	if err := u.markReady(); err != nil {
		t.Fatal(err)
	}
	u.phase.set(phaseStopping) // as drain, with the exit not seen yet
	if _, err := u.Upgrade(context.Background()); !errors.Is(err, ErrStopping) {
		t.Fatalf("upgrade of a stopping generation: %v, want ErrStopping", err)
	}
	if _, _, upgrades := h.counts(); upgrades != 0 {
		t.Errorf("%d new generations started from a stopping one", upgrades)
	}
	if u.phase.get() != phaseStopping {
		t.Errorf("phase %v after the refused upgrade, want stopping", u.phase.get())
	}
}
