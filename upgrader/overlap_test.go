package upgrader

import (
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// drainingStandIns starts n processes that stand for draining generations
// 1 to n (their pids alive) and registers them in u's state file.
func drainingStandIns(t *testing.T, u *Upgrader, n int, ended ...int) []drainingGen {
	t.Helper()
	var gens []drainingGen
	for i := range n {
		cmd := exec.Command("sleep", "60")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		g := drainingGen{PID: cmd.Process.Pid, Generation: i + 1, State: "draining", Deadline: time.Now().Add(time.Duration(i+1) * time.Minute)}
		for _, e := range ended {
			g.Ended = g.Ended || e == i+1
		}
		gens = append(gens, g)
	}
	// A dead one is dropped.
	gens = append(gens, drainingGen{PID: deadPIDForTest(t), Generation: 0, State: "draining"})
	if err := u.state.write(genState{Generation: 10, PID: os.Getpid() + 1}); err != nil {
		t.Fatal(err)
	}
	if err := u.state.update(func(st *genState) { st.Draining = gens }); err != nil {
		t.Fatal(err)
	}
	return gens[:n]
}

func deadPIDForTest(t *testing.T) int {
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	return cmd.Process.Pid
}

// TestRegisterDrainingCap: past MaxDraining, kill-oldest marks the oldest
// draining generations, counting those already ending as gone; refuse
// marks none. Dead entries are dropped, and the new one is added.
func TestRegisterDrainingCap(t *testing.T) {
	for _, tc := range []struct {
		name      string
		max       int
		policy    string
		others    int
		ended     []int // already ending
		wantEnded []int // generations marked now
	}{
		{name: "under the cap", max: 3, policy: DrainingKillOldest, others: 2},
		{name: "one over", max: 2, policy: DrainingKillOldest, others: 2, wantEnded: []int{1}},
		{name: "two over", max: 1, policy: DrainingKillOldest, others: 2, wantEnded: []int{1, 2}},
		{name: "one over, the oldest already ending", max: 2, policy: DrainingKillOldest, others: 3, ended: []int{1}, wantEnded: []int{2}},
		{name: "refuse marks none", max: 1, policy: DrainingRefuse, others: 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u, _ := probationUpgrader(t, 0)
			u.opts.MaxDraining, u.opts.MaxDrainingPolicy = tc.max, tc.policy
			u.gen = 9
			drainingStandIns(t, u, tc.others, tc.ended...)
			got := u.registerDraining(time.Now().Add(time.Minute), progress{Left: 3, Unit: "connections"})
			var gens []int
			for _, g := range got {
				gens = append(gens, g.Generation)
			}
			if !slices.Equal(gens, tc.wantEnded) {
				t.Errorf("ended generations %v, want %v", gens, tc.wantEnded)
			}
			st, err := u.state.read()
			if err != nil {
				t.Fatal(err)
			}
			if n := len(st.Draining); n != tc.others+1 {
				t.Errorf("%d entries %+v, want the %d live others and this one", n, st.Draining, tc.others)
			}
			self := st.Draining[len(st.Draining)-1]
			if self.PID != os.Getpid() || self.Generation != 9 || self.Left != 3 || self.Ended {
				t.Errorf("own entry %+v", self)
			}
			for _, g := range st.Draining[:len(st.Draining)-1] {
				want := false
				for _, e := range append(append([]int(nil), tc.ended...), tc.wantEnded...) {
					want = want || e == g.Generation
				}
				if g.Ended != want {
					t.Errorf("generation %d ended %v, want %v", g.Generation, g.Ended, want)
				}
			}
			u.unregisterDraining()
			if st, _ := u.state.read(); len(st.Draining) != tc.others {
				t.Errorf("after unregistering: %+v", st.Draining)
			}
		})
	}
}

// TestCheckDrainingCapRefuses: under refuse, an upgrade that would leave
// more than MaxDraining draining is refused, naming them; under
// kill-oldest it is not.
func TestCheckDrainingCapRefuses(t *testing.T) {
	u, _ := probationUpgrader(t, 0)
	gens := drainingStandIns(t, u, 2)
	u.opts.MaxDraining, u.opts.MaxDrainingPolicy = 2, DrainingRefuse
	err := u.checkDrainingCap()
	if err == nil || !strings.Contains(err.Error(), "2 generations still draining") ||
		!strings.Contains(err.Error(), "--max-draining 2 with policy refuse") {
		t.Fatalf("checkDrainingCap = %v, want a refusal", err)
	}
	for _, g := range gens {
		if !strings.Contains(err.Error(), strconv.Itoa(g.PID)) {
			t.Errorf("refusal %q does not name pid %d", err, g.PID)
		}
	}
	u.opts.MaxDraining = 3
	if err := u.checkDrainingCap(); err != nil {
		t.Errorf("under the cap: %v", err)
	}
	u.opts.MaxDraining, u.opts.MaxDrainingPolicy = 1, DrainingKillOldest
	if err := u.checkDrainingCap(); err != nil {
		t.Errorf("kill-oldest: %v, want no refusal", err)
	}
}

// TestLiveDrainingOldestFirst: the draining generations come back oldest
// first, whatever their order in the state file, so that the status lists
// them in order and the cap ends the oldest.
func TestLiveDrainingOldestFirst(t *testing.T) {
	u, _ := probationUpgrader(t, 0)
	gens := drainingStandIns(t, u, 3)
	if err := u.state.update(func(st *genState) {
		st.Draining = []drainingGen{gens[2], gens[0], gens[1]}
	}); err != nil {
		t.Fatal(err)
	}
	var got []int
	for _, g := range u.liveDraining() {
		got = append(got, g.Generation)
	}
	if !slices.Equal(got, []int{1, 2, 3}) {
		t.Errorf("live draining generations %v, want [1 2 3], oldest first", got)
	}
}

// TestAbsorbDrains: the serving generation counts the drains the old ones
// recorded in the state file and clears them there, once; a generation
// that drains itself leaves them for the one that serves.
func TestAbsorbDrains(t *testing.T) {
	u, _ := probationUpgrader(t, 0)
	u.phase.set(phaseReady)
	if err := u.state.write(genState{Generation: 2, PID: os.Getpid()}); err != nil {
		t.Fatal(err)
	}
	recs := []drainRecord{{PID: 1, Duration: 2 * time.Second, Cut: 3, Passed: 7, Ended: true}, {PID: 2, Duration: time.Second}}
	if err := u.state.update(func(st *genState) { st.Drains = recs }); err != nil {
		t.Fatal(err)
	}
	u.absorbDrains()
	u.absorbDrains() // cleared: not counted twice
	if u.stats.DrainSeconds.Count != 2 || u.stats.ConnsCut != 3 || u.stats.ConnsPassed != 7 || u.stats.DrainingEnded != 1 {
		t.Errorf("after absorbing: %d drains, %d cut, %d passed, %d ended; want 2, 3, 7, 1",
			u.stats.DrainSeconds.Count, u.stats.ConnsCut, u.stats.ConnsPassed, u.stats.DrainingEnded)
	}
	if st, err := u.state.read(); err != nil || len(st.Drains) != 0 {
		t.Errorf("state file drains %+v (%v), want none left", st.Drains, err)
	}

	u.phase.set(phaseDraining)
	if err := u.state.update(func(st *genState) { st.Drains = recs[:1] }); err != nil {
		t.Fatal(err)
	}
	u.absorbDrains()
	if u.stats.DrainSeconds.Count != 2 {
		t.Errorf("a draining generation absorbed a drain record: %d drains counted", u.stats.DrainSeconds.Count)
	}
	if st, _ := u.state.read(); len(st.Drains) != 1 {
		t.Errorf("a draining generation took the records from the state file: %+v", st.Drains)
	}
}
