//go:build integration

package integration

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// soakUpgrades is the number of upgrades of TestSoak: HANDOFF_SOAK, or 10
// (make soak runs 100).
func soakUpgrades(t *testing.T) int {
	v := os.Getenv("HANDOFF_SOAK")
	if v == "" {
		return 10
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		t.Fatalf("HANDOFF_SOAK=%q: want a number of upgrades", v)
	}
	return n
}

// openFDs counts the open descriptors of pid.
func openFDs(t *testing.T, pid int) int {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// rssKB returns the resident set size of pid in kB.
func rssKB(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range bytes.Split(b, []byte("\n")) {
		if v, ok := bytes.CutPrefix(line, []byte("VmRSS:")); ok {
			kb, err := strconv.Atoi(string(bytes.TrimSpace(bytes.TrimSuffix(bytes.TrimSpace(v), []byte("kB")))))
			if err != nil {
				t.Fatalf("VmRSS of %d: %q", pid, v)
			}
			return kb
		}
	}
	t.Fatalf("no VmRSS for pid %d", pid)
	return 0
}

// generation lists the processes of the generation whose master is pid:
// the master and its worker processes, if any.
func (s *service) generation(pid int) []int {
	return append([]int{pid}, s.workersOf(pid)...)
}

// sumOf adds up f over pids.
func sumOf(t *testing.T, pids []int, f func(*testing.T, int) int) int {
	n := 0
	for _, pid := range pids {
		n += f(t, pid)
	}
	return n
}

// fdsAtRest waits until pids, with no load on them, have at most want
// open descriptors in all (their last connections close as their clients
// go), bounded by 10 seconds, and returns the count it saw last.
func fdsAtRest(t *testing.T, pids []int, want int) int {
	t.Helper()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	end := time.Now().Add(10 * time.Second)
	for {
		n := sumOf(t, pids, openFDs)
		if n <= want || time.Now().After(end) {
			return n
		}
		<-tick.C
	}
}

func within10(first, last int) bool {
	return float64(last) <= float64(first)*1.1 && float64(last) >= float64(first)*0.9
}

// Row 13: consecutive upgrades under load, alternating handoff reload and
// SIGHUP: no failed request, no leftover process, and the newest
// generation's open descriptors and resident memory within 10% of the
// first one's (descriptors at rest, memory after the same load), counted
// over its master and its worker processes.
func TestSoak(t *testing.T) {
	n := soakUpgrades(t)
	forEachMode(t, func(t *testing.T, m workerMode) {
		s := startHello(t, helloV1, m.args...)
		first := s.generation(s.pid())
		fdFirst := sumOf(t, first, openFDs)
		l := runLoad(t, s, false)
		l.advance(2000)
		rssFirst := sumOf(t, first, rssKB)
		start := time.Now()
		for i := range n {
			gen := i + 2
			bin := helloV2
			if i%2 == 1 {
				bin = helloV1
			}
			install(t, bin, s.exe)
			if i%2 == 0 {
				s.reload()
			} else {
				from := s.log.len()
				if err := syscall.Kill(s.pid(), syscall.SIGHUP); err != nil {
					t.Fatal(err)
				}
				s.log.waitFor(t, from, "msg=ready", fmt.Sprintf("generation=%d", gen))
			}
			l.advance(500)
		}
		upgrading := time.Since(start)
		last := s.generation(s.pid())
		l.advance(2000)
		rssLast := sumOf(t, last, rssKB)
		res := l.finish()
		s.log.waitFor(t, 0, "previous generation exited", fmt.Sprintf("generation=%d", n+1))
		fdLast := fdsAtRest(t, last, fdFirst)
		t.Logf("soak: upgrades=%d in %s, requests=%d ok=%d failed=%d, processes a generation=%d, open fds first=%d last=%d, rss first=%d kB last=%d kB",
			n, upgrading.Round(time.Millisecond), res.Requests, res.OK, res.Failed, len(last), fdFirst, fdLast, rssFirst, rssLast)
		if !within10(fdFirst, fdLast) {
			t.Errorf("open fds: first generation %d, generation %d %d: not within 10%%", fdFirst, n+1, fdLast)
		}
		if !within10(rssFirst, rssLast) {
			t.Errorf("rss: first generation %d kB, generation %d %d kB: not within 10%%", rssFirst, n+1, rssLast)
		}
		s.onlyProcess(last[0])
	})
}
