//go:build !windows

package main

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"time"
)

// procStat is what the benchmark reads of a process in /proc.
type procStat struct {
	pid, ppid, pgid int
	cpuTicks        int64 // user + system time, in clock ticks
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
	// state ppid pgrp session tty tpgid flags minflt cminflt majflt
	// cmajflt utime stime ...
	if len(f) < 13 || string(f[0]) == "Z" {
		return procStat{}, false
	}
	ppid, err1 := strconv.Atoi(string(f[1]))
	pgid, err2 := strconv.Atoi(string(f[2]))
	utime, err3 := strconv.ParseInt(string(f[11]), 10, 64)
	stime, err4 := strconv.ParseInt(string(f[12]), 10, 64)
	if err1 != nil || err2 != nil || err3 != nil || err4 != nil {
		return procStat{}, false
	}
	return procStat{pid: pid, ppid: ppid, pgid: pgid, cpuTicks: utime + stime}, true
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

// clockTicks is the kernel's USER_HZ, the unit of CPU times in /proc.
const clockTicks = 100

// usage is what a process group used while a load ran.
type usage struct {
	PeakRSSKB int64
	// CPU is the user and system time of every process of the group
	// during the load, as last seen by the sampler: a process that exits
	// loses at most its last sampling period.
	CPU time.Duration
}

// sampleUsage samples pg's processes every 200 ms (a scan of /proc costs
// about 2 ms) until the returned function is called, which returns the
// peak of their summed RSS and the CPU time they used since the call.
func sampleUsage(pg int) (end func() usage) {
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var u usage
	first := map[int]int64{} // CPU ticks when first seen
	last := map[int]int64{}
	sample := func(initial bool) {
		var rss int64
		procs := allProcs()
		byPID := map[int]procStat{}
		for _, p := range procs {
			byPID[p.pid] = p
		}
		for _, pid := range groupOf(procs, pg) {
			rss += rssKB(pid)
			t := byPID[pid].cpuTicks
			if _, ok := first[pid]; !ok {
				first[pid] = 0 // started during the load: all its time counts
				if initial {
					first[pid] = t
				}
			}
			last[pid] = t
		}
		u.PeakRSSKB = max(u.PeakRSSKB, rss)
	}
	sample(true)
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				sample(false)
				return
			case <-tick.C:
				sample(false)
			}
		}
	}()
	return func() usage {
		close(stop)
		wg.Wait()
		var ticks int64
		for pid, t := range last {
			ticks += t - first[pid]
		}
		u.CPU = time.Duration(ticks) * time.Second / clockTicks
		return u
	}
}
