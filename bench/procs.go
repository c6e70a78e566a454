//go:build unix

package main

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// procStat is what the benchmark reads of a process in /proc.
type procStat struct {
	pid, ppid, pgid int
}

// parseStat reads /proc/PID/stat's line; the command name may hold spaces
// and parentheses, so fields are counted after its last ')'.
func parseStat(b []byte) (procStat, bool) {
	open := bytes.IndexByte(b, '(')
	end := bytes.LastIndexByte(b, ')')
	if open < 0 || end < open {
		return procStat{}, false
	}
	pid, err := strconv.Atoi(string(bytes.TrimSpace(b[:open])))
	if err != nil {
		return procStat{}, false
	}
	f := bytes.Fields(b[end+1:])
	// state ppid pgrp ...
	if len(f) < 3 || string(f[0]) == "Z" {
		return procStat{}, false
	}
	ppid, err1 := strconv.Atoi(string(f[1]))
	pgid, err2 := strconv.Atoi(string(f[2]))
	if err1 != nil || err2 != nil {
		return procStat{}, false
	}
	return procStat{pid: pid, ppid: ppid, pgid: pgid}, true
}

func allProcs() []procStat {
	ents, _ := os.ReadDir("/proc")
	var out []procStat
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		if st, ok := parseStat(b); ok {
			out = append(out, st)
		}
	}
	return out
}

// groupOf returns the live processes of process group pg and their
// descendants, in case a contender moves a child to a group of its own.
func groupOf(procs []procStat, pg int) []int {
	var in []int
	for _, p := range procs {
		if p.pgid == pg {
			in = append(in, p.pid)
		}
	}
	for grown := true; grown; {
		grown = false
		for _, p := range procs {
			if slices.Contains(in, p.ppid) && !slices.Contains(in, p.pid) {
				in = append(in, p.pid)
				grown = true
			}
		}
	}
	return in
}

func groupPIDs(pg int) []int { return groupOf(allProcs(), pg) }

func childrenOf(pid int) []int {
	var out []int
	for _, p := range allProcs() {
		if p.ppid == pid {
			out = append(out, p.pid)
		}
	}
	return out
}

// rssKB is the resident memory of pid in KiB, 0 if it is gone.
func rssKB(pid int) int64 {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "status"))
	if err != nil {
		return 0
	}
	return parseVmRSS(b)
}

func parseVmRSS(status []byte) int64 {
	for line := range bytes.Lines(status) {
		if v, ok := bytes.CutPrefix(line, []byte("VmRSS:")); ok {
			f := bytes.Fields(v)
			if len(f) > 0 {
				n, _ := strconv.ParseInt(string(f[0]), 10, 64)
				return n
			}
		}
	}
	return 0
}

// rssSampler records the peak of the summed RSS of a process group.
type rssSampler struct {
	peak atomic.Int64
	stop chan struct{}
	wg   sync.WaitGroup
}

// sampleRSS samples pg's memory every 100 ms until end is called, which
// returns the peak in KiB.
func sampleRSS(pg int) (end func() int64) {
	s := &rssSampler{stop: make(chan struct{})}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			var sum int64
			for _, pid := range groupPIDs(pg) {
				sum += rssKB(pid)
			}
			if sum > s.peak.Load() {
				s.peak.Store(sum)
			}
			select {
			case <-s.stop:
				return
			case <-tick.C:
			}
		}
	}()
	return func() int64 {
		close(s.stop)
		s.wg.Wait()
		return s.peak.Load()
	}
}
