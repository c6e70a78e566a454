//go:build linux

package upgrader

import (
	"errors"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/gohandoff/handoff/internal/supervise"
)

// The process pool's decisions (procpool.go, rollback.go), each rule on its
// edge under a fake clock (testing/synctest): no process is started here;
// procpool_proc_test.go runs the same pool with real worker processes.

// logLines records what a logger writes, one line a record, and says when
// a line arrives, so that a test waits for what the code logs.
type logLines struct {
	mu      sync.Mutex
	lines   []string
	changed chan struct{}
}

func newLogLines() *logLines { return &logLines{changed: make(chan struct{}, 1)} }

func (l *logLines) Write(p []byte) (int, error) {
	l.mu.Lock()
	l.lines = append(l.lines, strings.Split(strings.TrimSpace(string(p)), "\n")...)
	l.mu.Unlock()
	select {
	case l.changed <- struct{}{}:
	default:
	}
	return len(p), nil
}

// count is how many lines hold every one of subs.
func (l *logLines) count(subs ...string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
next:
	for _, line := range l.lines {
		for _, s := range subs {
			if !strings.Contains(line, s) {
				continue next
			}
		}
		n++
	}
	return n
}

func (l *logLines) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n")
}

// waitFor waits until n lines hold every one of subs, bounded by a
// deadline.
func (l *logLines) waitFor(t *testing.T, n int, subs ...string) {
	t.Helper()
	deadline := time.NewTimer(20 * time.Second)
	defer deadline.Stop()
	for l.count(subs...) < n {
		select {
		case <-l.changed:
		case <-deadline.C:
			t.Fatalf("no %d log lines with %q; the log:\n%s", n, subs, l)
		}
	}
}

func (l *logLines) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// testProcPool is a pool of n worker slots as newProcPool makes it for a
// generation started by an upgrade (not open, fail fast), its processes
// never started unless the test does.
func testProcPool(t *testing.T, n int) (*procPool, *logLines) {
	t.Helper()
	logs := newLogLines()
	pp := &procPool{
		n:            n,
		spec:         &procSpec{dir: t.TempDir(), stderr: os.Stderr},
		log:          logs.logger(),
		drainTimeout: 5 * time.Second,
		readyTimeout: 10 * time.Second,
		nready:       supervise.NewCount(n),
		failed:       make(chan struct{}),
		draining:     make(chan struct{}),
		slots:        make([]procSlot, n),
		procs:        make(map[*workerProc]struct{}),
	}
	for i := range pp.slots {
		pp.slots[i].keep = -1
	}
	return pp, logs
}

// died records a death of slot id's process, started at started, as
// wait does, and returns the delay its replacement was scheduled with
// (-1: none scheduled). The replacement never starts: the scheduled
// respawn is stopped.
func died(pp *procPool, id int, started time.Time) time.Duration {
	pp.mu.Lock()
	defer pp.mu.Unlock()
	s := &pp.slots[id]
	s.respawn = nil
	pp.diedLocked(id, started, errors.New("exit status 3"))
	if s.cur == nil {
		// A respawn due at once may have fired already: it finds the
		// slot taken and starts nothing.
		s.cur = testProc(supervise.Starting)
	}
	if s.respawn == nil {
		return -1
	}
	s.respawn.Stop()
	return s.respawnAt.Sub(time.Now())
}

// TestProcPoolBackoff: a dying worker's replacement starts at once, then
// after a backoff doubling from MinRestartBackoff up to MaxRestartBackoff;
// a worker that stayed up StableAfter (not 1 ns less) resets it.
func TestProcPoolBackoff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		pp, _ := testProcPool(t, 1)
		now := time.Now()
		var got []time.Duration
		for range 9 {
			got = append(got, died(pp, 0, now))
			pp.slots[0].Deaths = nil // no crash loop: the backoff alone
		}
		want := []time.Duration{0, 100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond, 800 * time.Millisecond,
			1600 * time.Millisecond, 3200 * time.Millisecond, 6400 * time.Millisecond, 10 * time.Second}
		for i := range want {
			if got[i] != want[i] {
				t.Fatalf("restart delays %v, want %v", got, want)
			}
		}
		if d := died(pp, 0, now.Add(-StableAfter+1)); d != MaxRestartBackoff {
			t.Errorf("after a worker up StableAfter - 1ns: delay %v, want the capped backoff %v", d, MaxRestartBackoff)
		}
		pp.slots[0].Deaths = nil
		if d := died(pp, 0, now.Add(-StableAfter)); d != 0 {
			t.Errorf("after a worker up StableAfter: delay %v, want 0 (backoff reset)", d)
		}
		if d := died(pp, 0, now); d != MinRestartBackoff {
			t.Errorf("the death after a reset: delay %v, want %v", d, MinRestartBackoff)
		}
		if pp.slots[0].LastErr != "exit status 3" {
			t.Errorf("last error %q, want the death's", pp.slots[0].LastErr)
		}
	})
}

// TestProcPoolNoRespawnBesideAReplacement: a slot whose roll has started a
// replacement schedules no respawn when its current process dies: the
// replacement takes the slot.
func TestProcPoolNoRespawnBesideAReplacement(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		pp, _ := testProcPool(t, 1)
		pp.slots[0].next = testProc(supervise.Starting)
		if d := died(pp, 0, time.Now()); d != -1 {
			t.Errorf("respawn scheduled in %v beside a replacement, want none", d)
		}
	})
}

// TestProcPoolCrashLoop: CrashLoopDeaths deaths within CrashLoopWindow
// (a death exactly CrashLoopWindow ago counts, 1 ns more does not) make a
// crash loop, logged once as such; before the generation is ready, with
// fail fast, it fails the generation, and only then.
func TestProcPoolCrashLoop(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		now := time.Now()
		old := []time.Time{now.Add(-CrashLoopWindow - 1), now.Add(-CrashLoopWindow), now.Add(-time.Second), now.Add(-time.Second)}

		pp, logs := testProcPool(t, 2)
		pp.failFast = true
		pp.slots[0].Deaths = append([]time.Time(nil), old[:4]...) // 3 in the window, and this one
		died(pp, 0, now)
		if pp.slots[0].Looping || logs.count("CRASH LOOP") > 0 {
			t.Fatalf("4 deaths in the window taken for a crash loop; the log:\n%s", logs)
		}
		if len(pp.slots[0].Deaths) != 4 {
			t.Errorf("%d deaths kept, want 4 (the one older than the window dropped)", len(pp.slots[0].Deaths))
		}
		select {
		case <-pp.failed:
			t.Fatal("generation failed without a crash loop")
		default:
		}
		died(pp, 0, now) // the 5th within the window
		if !pp.slots[0].Looping || logs.count("WORKER CRASH LOOP", "worker=0") != 1 {
			t.Fatalf("5 deaths in the window: looping %v; the log:\n%s", pp.slots[0].Looping, logs)
		}
		select {
		case <-pp.failed:
		default:
			t.Fatal("a crash loop before ready, with fail fast, did not fail the generation")
		}
		if !strings.Contains(pp.failErr.Error(), "worker 0 in a crash loop before this generation was ready: exit status 3") {
			t.Errorf("failure %q", pp.failErr)
		}
		died(pp, 0, now)
		if logs.count("WORKER CRASH LOOP") != 1 || logs.count("worker in crash loop died again") != 1 {
			t.Errorf("a death in a crash loop not logged as such; the log:\n%s", logs)
		}

		// Every worker ready, or no fail fast: a crash loop backs off but
		// does not fail the generation.
		for _, tc := range []struct {
			failFast bool
			nready   int
		}{{true, 2}, {false, 0}} {
			pp, _ := testProcPool(t, 2)
			pp.failFast = tc.failFast
			for i := range tc.nready {
				pp.nready.Ready(&pp.slots[i].Slot, now)
			}
			pp.slots[0].Deaths = append(append([]time.Time(nil), old[1:]...), now) // and this one: 5
			died(pp, 0, now)
			if !pp.slots[0].Looping {
				t.Errorf("fail fast %v, %d ready: no crash loop", tc.failFast, tc.nready)
			}
			select {
			case <-pp.failed:
				t.Errorf("fail fast %v, %d of 2 ready: the generation failed", tc.failFast, tc.nready)
			default:
			}
		}
	})
}

// rollbackPool is a pool of 2 slots that can roll back to a previous
// build, ready since readyAgo.
func rollbackPool(t *testing.T, readyAgo time.Duration) (*procPool, chan struct{}) {
	t.Helper()
	pp, _ := testProcPool(t, 2)
	prev, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { prev.Close() })
	pp.spec.prev = prev
	pp.nready.At = time.Now().Add(-readyAgo)
	called := make(chan struct{}, 1)
	pp.onRollback = func() { called <- struct{}{} }
	for i := range pp.slots {
		pp.slots[i].Backoff, pp.slots[i].Looping = time.Second, true
		pp.slots[i].Deaths = []time.Time{time.Now()}
	}
	pp.slots[1].LastErr = "exit status 3"
	return pp, called
}

// TestProcPoolRollback: a crash loop within RollbackWindow of ready (not
// 1 ns later) rolls the workers back to the previous build once: every
// later start runs it, the crash history starts again, the roll of the
// workers still on this build is started, and the status says why. Without
// a previous build, before ready, once rolled back, or while draining, no
// rollback.
func TestProcPoolRollback(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		pp, called := rollbackPool(t, RollbackWindow)
		pp.mu.Lock()
		ok := pp.rollbackLocked(1)
		pp.mu.Unlock()
		if !ok {
			t.Fatal("crash loop RollbackWindow after ready: no rollback")
		}
		if p := pp.spec.rolled.Load(); p == nil || *p != imagePath(pp.spec.prev) {
			t.Errorf("later starts run %v, want the previous image %s", p, imagePath(pp.spec.prev))
		}
		for i, s := range pp.slots {
			if s.Deaths != nil || s.Looping || s.Backoff != 0 {
				t.Errorf("slot %d after the rollback: deaths %v, looping %v, backoff %v; want a fresh start", i, s.Deaths, s.Looping, s.Backoff)
			}
		}
		synctest.Wait()
		select {
		case <-called:
		default:
			t.Error("the roll of the workers on this build not started")
		}
		if got := pp.rolledBack(); !strings.Contains(got, "worker 1 in a crash loop 1m0s after this generation was ready: exit status 3") {
			t.Errorf("rolledBack = %q", got)
		}
		if (&pool{}).rolledBack() != "" {
			t.Error("a goroutine pool's rolledBack is not empty")
		}

		for _, tc := range []struct {
			name  string
			setup func(pp *procPool)
		}{
			{"1ns after the window", func(pp *procPool) { pp.nready.At = pp.nready.At.Add(-1) }},
			{"no previous build", func(pp *procPool) { pp.spec.prev = nil }},
			{"rolled back already", func(pp *procPool) { img := "/x"; pp.spec.rolled.Store(&img) }},
			{"not ready", func(pp *procPool) { pp.nready.At = time.Time{} }},
			{"draining", func(pp *procPool) { close(pp.draining) }},
		} {
			pp, called := rollbackPool(t, RollbackWindow)
			tc.setup(pp)
			rolled := pp.spec.rolled.Load()
			pp.mu.Lock()
			ok := pp.rollbackLocked(0)
			pp.mu.Unlock()
			synctest.Wait()
			if ok || pp.spec.rolled.Load() != rolled || pp.rollback != "" || len(called) > 0 || !pp.slots[0].Looping {
				t.Errorf("%s: rolled back (%v, %q)", tc.name, ok, pp.rollback)
			}
		}

		// Without a roll to start (no Upgrader), the rollback still holds.
		pp, _ = rollbackPool(t, 0)
		pp.onRollback = nil
		pp.mu.Lock()
		ok = pp.rollbackLocked(0)
		pp.mu.Unlock()
		if !ok {
			t.Error("no rollback without onRollback")
		}
	})
}

// TestProcPoolCrashLoopRollsBack: a crash loop that rolls back replaces
// the dead worker at once, with the previous build, and is no crash loop.
func TestProcPoolCrashLoopRollsBack(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		pp, _ := rollbackPool(t, time.Second)
		now := time.Now()
		pp.slots[0].Backoff, pp.slots[0].Looping = 5*time.Second, false
		pp.slots[0].Deaths = []time.Time{now, now, now, now}
		d := died(pp, 0, now)
		if d != 0 || pp.slots[0].Looping || !pp.spec.rolledBack() {
			t.Errorf("crash loop with a rollback: delay %v (want 0), looping %v, rolled back %v", d, pp.slots[0].Looping, pp.spec.rolledBack())
		}
		synctest.Wait()
	})
}

// TestProcPoolReadyCounting: the pool is ready when each slot's current
// process has been ready once: not a replacement's ready, not a second
// ready of a slot, not a process that is no longer starting.
func TestProcPoolReadyCounting(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		pp, _ := testProcPool(t, 2)
		a, b, r := testProc(supervise.Starting), testProc(supervise.Starting), testProc(supervise.Starting)
		for i, p := range []*workerProc{a, b, r} {
			p.readyC, p.id = make(chan struct{}), min(i, 1)
		}
		r.id = 0
		pp.slots[0].cur, pp.slots[0].next, pp.slots[1].cur = a, r, b
		isReady := func() bool {
			select {
			case <-pp.ready():
				return true
			default:
				return false
			}
		}
		pp.setReady(r)
		if pp.nready.N() != 0 || r.state != supervise.Ready {
			t.Fatalf("a replacement's ready: %d ready (want 0), its state %q", pp.nready.N(), r.state)
		}
		pp.setReady(a)
		pp.setReady(a)
		if pp.nready.N() != 1 || isReady() {
			t.Fatalf("slot 0 ready twice: %d ready, pool ready %v; want 1, false", pp.nready.N(), isReady())
		}
		// Slot 0's process replaced after a death: its ready counts no more.
		a2 := testProc(supervise.Starting)
		a2.readyC = make(chan struct{})
		pp.slots[0].cur = a2
		pp.setReady(a2)
		if pp.nready.N() != 1 || isReady() {
			t.Fatalf("slot 0's second process ready: %d ready, want 1", pp.nready.N())
		}
		d := testProc(supervise.Draining)
		d.readyC, d.id = make(chan struct{}), 1
		pp.slots[1].cur = d
		pp.setReady(d)
		if d.state != supervise.Draining || pp.nready.N() != 1 {
			t.Fatalf("a draining process taken for ready: state %q, %d ready", d.state, pp.nready.N())
		}
		select {
		case <-d.readyC:
			t.Fatal("a draining process marked ready")
		default:
		}
		pp.slots[1].cur = b
		pp.setReady(b)
		if pp.nready.N() != 2 || !isReady() || !pp.nready.At.Equal(time.Now()) {
			t.Fatalf("every slot ready: %d ready, pool ready %v, readyAt %v", pp.nready.N(), isReady(), pp.nready.At)
		}
	})
}

// TestProcPoolKept: the socket sets kept for a replacement are those of
// the slots with no current process, set 0 included.
func TestProcPoolKept(t *testing.T) {
	pp, _ := testProcPool(t, 4)
	pp.slots[1].keep, pp.slots[2].keep, pp.slots[3].keep = 0, 1, 2
	pp.slots[2].cur = testProc(supervise.Ready)
	got := pp.keptLocked()
	if len(got) != 2 || got[0] != 0 || got[1] != 2 {
		t.Errorf("kept %v, want [0 2]", got)
	}
}

// TestProcPoolStatus: the status lists each slot's current process or
// its backoff, its replacement, and the processes still draining; a crash
// loop shows until the slot's process is ready and up StableAfter (not
// 1 ns less).
func TestProcPoolStatus(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		pp, _ := testProcPool(t, 3)
		now := time.Now()
		cur := testProc(supervise.Ready)
		cur.pid, cur.started = 11, now.Add(-StableAfter+1)
		pp.slots[0].cur, pp.slots[0].Looping, pp.slots[0].Restarts, pp.slots[0].LastErr = cur, true, 4, "exit status 3"
		next := testProc(supervise.Starting)
		next.pid, next.started = 12, now.Add(-time.Second)
		pp.slots[0].next = next
		pp.slots[1].Restarts, pp.slots[1].LastErr = 2, "exit status 1"
		pp.slots[1].respawnAt = now.Add(1500 * time.Millisecond)
		pp.slots[1].respawn = time.AfterFunc(time.Hour, func() {})
		defer pp.slots[1].respawn.Stop()
		pp.slots[2].Looping, pp.slots[2].LastErr = true, "exit status 2"
		old := testProc(supervise.Draining)
		old.id, old.pid, old.started = 1, 13, now.Add(-time.Minute)
		pp.procs = map[*workerProc]struct{}{cur: {}, next: {}, old: {}}

		st := pp.status()
		if len(st) != 5 {
			t.Fatalf("status %+v, want 5 entries", st)
		}
		if st[0].PID != 11 || st[0].State != "crash-loop/ready" || st[0].Restarts != 4 || st[0].Uptime != StableAfter || st[0].LastErr != "exit status 3" {
			t.Errorf("slot 0 in a crash loop, up StableAfter - 1ns: %+v", st[0])
		}
		if st[1].ID != 0 || st[1].PID != 12 || st[1].State != string(supervise.Starting) || st[1].Uptime != time.Second {
			t.Errorf("slot 0's replacement: %+v", st[1])
		}
		if st[2].ID != 1 || st[2].PID != 0 || st[2].State != string(supervise.Backoff) || st[2].Restarts != 2 || st[2].LastErr != "next start in 1.5s: exit status 1" {
			t.Errorf("slot 1 waiting for its restart: %+v", st[2])
		}
		if st[3].ID != 2 || st[3].State != string(supervise.CrashLoop) || st[3].LastErr != "exit status 2" {
			t.Errorf("slot 2 in a crash loop, no restart scheduled: %+v", st[3])
		}
		if st[4].ID != 1 || st[4].PID != 13 || st[4].State != string(supervise.Draining) || st[4].Uptime != time.Minute {
			t.Errorf("a process still draining: %+v", st[4])
		}

		// A starting process up long enough leaves the crash loop shown.
		cur.state = supervise.Starting
		cur.started = now.Add(-time.Hour)
		if st := pp.status(); st[0].State != "crash-loop/starting" {
			t.Errorf("a starting process in a crash loop: state %q", st[0].State)
		}
		cur.state = supervise.Ready
		cur.started = now.Add(-StableAfter)
		if st := pp.status(); st[0].State != string(supervise.Ready) || pp.slots[0].Looping {
			t.Errorf("ready and up StableAfter: state %q, looping %v; want the crash loop over", st[0].State, pp.slots[0].Looping)
		}
		pp.slots[0].Looping = true
		pp.slots[0].cur = nil
		pp.slots[0].next = nil
		if st := pp.status(); st[0].State != string(supervise.CrashLoop) {
			t.Errorf("no process in a crash loop: state %q", st[0].State)
		}
	})
}
