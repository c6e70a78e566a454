package verify

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestMarks(t *testing.T) {
	t.Parallel()
	if got, want := Marks(3), []float64{0.25, 0.5, 0.75}; !slices.Equal(got, want) {
		t.Errorf("Marks(3) = %v, want %v", got, want)
	}
	if got := Marks(0); len(got) != 0 {
		t.Errorf("Marks(0) = %v, want none", got)
	}
}

// TestDrive: each upgrade starts once progress passes its mark, one at a
// time; the ones whose mark the load never reached are reported not run.
func TestDrive(t *testing.T) {
	t.Parallel()
	var done atomic.Int64 // progress in percent
	loadDone := make(chan struct{})
	var seen []int64
	trigger := func(ctx context.Context) (Upgrade, error) {
		seen = append(seen, done.Load())
		if len(seen) == 2 {
			// The load ends during the second upgrade, at 60%.
			done.Store(60)
			close(loadDone)
			return Upgrade{Ready: time.Millisecond}, errors.New("boom")
		}
		done.Add(30)
		return Upgrade{Ready: time.Millisecond, Generation: len(seen) + 1}, nil
	}
	go func() {
		// Progress from the "load": 0% → 10% → 20% → 25%.
		for _, p := range []int64{10, 20, 25} {
			done.Store(p)
		}
	}()
	ups := Drive(t.Context(), time.Now(), 3, func() float64 { return float64(done.Load()) / 100 }, trigger, loadDone)
	if len(ups) != 3 {
		t.Fatalf("got %d upgrades, want 3: %+v", len(ups), ups)
	}
	if seen[0] < 25 || seen[1] < 50 {
		t.Errorf("upgrades triggered at %v%%, want at or after 25%% and 50%%", seen)
	}
	if ups[0].Err != "" || ups[0].Generation != 2 || ups[0].At <= 0 {
		t.Errorf("first upgrade %+v, want a success with a time", ups[0])
	}
	if ups[1].Err != "boom" {
		t.Errorf("second upgrade error %q, want boom", ups[1].Err)
	}
	if !ups[2].NotRun || !strings.HasPrefix(ups[2].Err, "not run") {
		t.Errorf("third upgrade error %q, want not run", ups[2].Err)
	}
	rep := Report{Upgrades: ups[:1]}
	if rep.Failed() {
		t.Errorf("report with one good upgrade and no requests failed: %+v", rep)
	}
	rep.Upgrades = ups
	if !rep.Failed() {
		t.Errorf("report with failed upgrades passed")
	}
}

func TestDriveStopsWithContext(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	ups := Drive(ctx, time.Now(), 2, func() float64 { return 0 }, func(context.Context) (Upgrade, error) {
		t.Error("trigger called without progress")
		return Upgrade{}, nil
	}, make(chan struct{}))
	if len(ups) != 2 || ups[0].Err == "" || ups[1].Err == "" {
		t.Errorf("got %+v, want two upgrades not run", ups)
	}
}
