package supervise

import (
	"bytes"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"
)

var errExit = errors.New("exit status 3 \n")

// TestDiedBackoff: at once after the first death and after a stable run
// (StableAfter, not 1 ns less), doubling from MinBackoff to MaxBackoff
// otherwise.
func TestDiedBackoff(t *testing.T) {
	var s Slot
	now := time.Unix(1000, 0)
	var delays []time.Duration
	for range 9 {
		delays = append(delays, s.Died(now, now, errExit).Delay)
	}
	want := []time.Duration{0, 100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond, 800 * time.Millisecond,
		1600 * time.Millisecond, 3200 * time.Millisecond, 6400 * time.Millisecond, MaxBackoff}
	if !slices.Equal(delays, want) {
		t.Errorf("delays %v, want %v", delays, want)
	}
	if d := s.Died(now.Add(-StableAfter+1), now, errExit); d.Delay != MaxBackoff {
		t.Errorf("after a run of StableAfter - 1ns: delay %s, want %s", d.Delay, MaxBackoff)
	}
	if d := s.Died(now.Add(-StableAfter), now, errExit); d.Delay != 0 {
		t.Errorf("after a run of StableAfter: delay %s, want at once", d.Delay)
	}
	if d := s.Died(now, now, errExit); d.Delay != MinBackoff {
		t.Errorf("the death after a stable run: delay %s, want %s", d.Delay, MinBackoff)
	}
	if s.LastErr != "exit status 3" {
		t.Errorf("last error %q, want the death's, trimmed", s.LastErr)
	}
	if s.Died(now, now, nil); s.LastErr != "exited with status 0" {
		t.Errorf("a clean exit reads %q", s.LastErr)
	}
}

// TestDiedCrashLoop: CrashLoopDeaths deaths within CrashLoopWindow (a
// death exactly CrashLoopWindow ago counts, 1 ns more does not) begin a
// crash loop, with one alarm; it lasts, even once the deaths thin out,
// until a run of StableAfter.
func TestDiedCrashLoop(t *testing.T) {
	var s Slot
	now := time.Unix(1000, 0)
	s.Deaths = []time.Time{now.Add(-CrashLoopWindow - 1), now.Add(-CrashLoopWindow), now.Add(-time.Second), now.Add(-time.Second)}
	if d := s.Died(now, now, errExit); d.Looping || d.Alarm || d.Deaths != 4 {
		t.Fatalf("4 deaths in the window: %+v", d)
	}
	if d := s.Died(now, now, errExit); !d.Looping || !d.Alarm || d.Deaths != 5 {
		t.Fatalf("the 5th death in the window: %+v, want the alarm", d)
	}
	if d := s.Died(now, now, errExit); !d.Looping || d.Alarm {
		t.Fatalf("a death in the crash loop: %+v, want no second alarm", d)
	}
	later := now.Add(time.Minute) // the window holds one death
	if d := s.Died(later, later, errExit); !d.Looping || d.Alarm || d.Deaths != 1 {
		t.Fatalf("a quick death after the deaths thinned out: %+v, want still looping", d)
	}
	later = later.Add(StableAfter)
	if d := s.Died(later.Add(-StableAfter), later, errExit); d.Looping {
		t.Fatalf("a death after a stable run: %+v, want the crash loop over", d)
	}
}

// TestUpAndForget: a crash loop ends when the slot's worker is ready and
// up StableAfter (not 1 ns less, not starting); Forget clears the history.
func TestUpAndForget(t *testing.T) {
	now := time.Unix(1000, 0)
	s := Slot{Looping: true}
	if !s.Up(now.Add(-time.Hour), false, now) || !s.Up(now.Add(-StableAfter+1), true, now) {
		t.Fatal("crash loop over for a starting worker, or one up StableAfter - 1ns")
	}
	if s.Up(now.Add(-StableAfter), true, now) || s.Looping {
		t.Fatal("crash loop not over after a ready worker up StableAfter")
	}
	s = Slot{Looping: true, Backoff: time.Second, Deaths: []time.Time{now}, Restarts: 3, LastErr: "x"}
	s.Forget()
	if s.Looping || s.Backoff != 0 || s.Deaths != nil || s.Restarts != 3 || s.LastErr != "x" {
		t.Errorf("after Forget: %+v, want the crash history gone and the rest kept", s)
	}
}

// TestCount: the pool is ready when every slot has been ready once; a slot
// ready twice counts once.
func TestCount(t *testing.T) {
	now := time.Unix(1000, 0)
	slots := make([]Slot, 2)
	c := NewCount(2)
	closed := func() bool {
		select {
		case <-c.Done():
			return true
		default:
			return false
		}
	}
	if c.Ready(&slots[0], now) || c.Ready(&slots[0], now) || c.N() != 1 || c.All() || closed() || !c.At.IsZero() {
		t.Fatalf("one slot ready twice: %d ready, all %v, done %v", c.N(), c.All(), closed())
	}
	if !c.Ready(&slots[1], now) || c.N() != 2 || !c.All() || !closed() || !c.At.Equal(now) {
		t.Fatalf("every slot ready: %d ready, all %v, done %v, at %v", c.N(), c.All(), closed(), c.At)
	}
	if c.Ready(&slots[1], now.Add(time.Second)) || !c.At.Equal(now) {
		t.Error("a slot ready again moved the pool's ready time")
	}
}

// TestDeathLog: the alarm, a death in a crash loop, and a plain death each
// have their line.
func TestDeathLog(t *testing.T) {
	var b bytes.Buffer
	log := slog.New(slog.NewTextHandler(&b, nil))
	for _, tc := range []struct {
		d    Death
		want string
	}{
		{Death{Alarm: true, Looping: true, Deaths: 5}, `msg="WORKER CRASH LOOP: backing off" deaths=5 window=10s err="exit status 3 \n" backoff=0s`},
		{Death{Looping: true, Delay: time.Second}, `msg="worker in crash loop died again" err="exit status 3 \n" backoff=1s`},
		{Death{Delay: MinBackoff}, `msg="worker died" err="exit status 3 \n" backoff=100ms`},
	} {
		b.Reset()
		tc.d.Log(log, "worker died", errExit)
		if !strings.Contains(b.String(), tc.want) {
			t.Errorf("%+v logged %q, want %q", tc.d, b.String(), tc.want)
		}
	}
}

// TestStatus: a slot's line carries its id, the state given, its restarts
// and last error.
func TestStatus(t *testing.T) {
	s := Slot{Restarts: 2, LastErr: "exit status 1"}
	if st := s.Status(3, CrashLoop); st.ID != 3 || st.State != "crash-loop" || st.Restarts != 2 || st.LastErr != "exit status 1" {
		t.Errorf("status %+v", st)
	}
}
