package upgrader

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/gohandoff/handoff/internal/handover"
	"github.com/gohandoff/handoff/internal/proc"
	"golang.org/x/sys/unix"
)

// A new generation that fails takes its whole process tree with it. Its
// processes cannot be put in a process group of their own (tableflip
// starts it, and a new build may be anything, a shell script included),
// so they are found after the failure by two marks:
//
//   - the environment variable treeEnv, with a value unique to the
//     upgrade, which everything the new generation starts inherits
//     unless it clears its environment;
//   - the listening sockets, which the new generation inherited and its
//     children with it: a process holding one of them that this process
//     did not start is a straggler that would keep the port, hanging
//     clients once the service has stopped.
//
// Only processes started after the upgrade began are candidates, and
// never this process, its ancestors (systemd, which may hold the sockets
// of a socket unit) or its descendants (its worker processes and theirs).
// They get SIGKILL.

// treeEnv marks the processes of one upgrade's new generation.
const treeEnv = "HANDOFF_UPGRADE_TREE"

// clockTicks is USER_HZ, the unit of a process's start time in
// /proc/PID/stat: 100 on every Linux architecture Go supports.
const clockTicks = 100

// treeMark names the processes of one upgrade.
type treeMark struct {
	value string
	since uint64 // boot time in clock ticks when the upgrade began
}

// markTree sets treeEnv for the new generation an upgrade is about to
// start; the returned func takes it away again.
func markTree() (treeMark, func()) {
	m := treeMark{value: fmt.Sprintf("%d.%d", os.Getpid(), time.Now().UnixNano()), since: uptimeTicks()}
	os.Setenv(treeEnv, m.value)
	return m, func() { os.Unsetenv(treeEnv) }
}

// uptimeTicks returns the time since boot in clock ticks, rounded down
// and less one tick, so that a process started in this tick counts as
// started after.
func uptimeTicks() uint64 {
	b, err := os.ReadFile("/proc/uptime")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	s, err := strconv.ParseFloat(f[0], 64)
	if err != nil || s < 0.01 {
		return 0
	}
	return uint64(s*clockTicks) - 1
}

// procInfo is what /proc/PID/stat says of a process.
type procInfo struct {
	ppid  int
	start uint64
	comm  string
}

func readProcInfo(pid int) (procInfo, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return procInfo{}, false
	}
	open, end := bytes.IndexByte(b, '('), bytes.LastIndexByte(b, ')')
	if open < 0 || end < open {
		return procInfo{}, false
	}
	f := strings.Fields(string(b[end+1:]))
	if len(f) < 20 || f[0] == "Z" {
		return procInfo{}, false
	}
	ppid, _ := strconv.Atoi(f[1])
	start, _ := strconv.ParseUint(f[19], 10, 64)
	return procInfo{ppid: ppid, start: start, comm: string(b[open+1 : end])}, true
}

// socketInodes returns the inodes of this generation's sockets.
func (u *Upgrader) socketInodes() map[uint64]bool {
	u.mu.Lock()
	conns := make([]syscall.Conn, 0, len(u.socks)+1)
	for _, s := range u.socks {
		conns = append(conns, s.conn)
	}
	if c, ok := u.ctlLn.(syscall.Conn); ok {
		conns = append(conns, c)
	}
	u.mu.Unlock()
	inodes := make(map[uint64]bool)
	for _, c := range conns {
		raw, err := c.SyscallConn()
		if err != nil {
			continue
		}
		raw.Control(func(fd uintptr) {
			var st unix.Stat_t
			if unix.Fstat(int(fd), &st) == nil {
				inodes[st.Ino] = true
			}
		})
	}
	return inodes
}

// holdsSocket reports whether pid has one of inodes open.
func holdsSocket(pid int, inodes map[uint64]bool) bool {
	dir := "/proc/" + strconv.Itoa(pid) + "/fd"
	ents, err := os.ReadDir(dir)
	if err != nil {
		return false
	}
	for _, e := range ents {
		link, err := os.Readlink(filepath.Join(dir, e.Name()))
		if err != nil {
			continue
		}
		if s, ok := strings.CutPrefix(link, "socket:["); ok {
			if ino, err := strconv.ParseUint(strings.TrimSuffix(s, "]"), 10, 64); err == nil && inodes[ino] {
				return true
			}
		}
	}
	return false
}

// hasMark reports whether pid's environment holds the upgrade's mark.
func hasMark(pid int, value string) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/environ")
	if err != nil {
		return false
	}
	for _, kv := range bytes.Split(b, []byte{0}) {
		if string(kv) == treeEnv+"="+value {
			return true
		}
	}
	return false
}

// killTree kills what the failed new generation of the upgrade marked m
// left behind, and waits (a second at most) until it is gone. tableflip
// returns once it has sent SIGKILL to a new generation that timed out:
// its exit comes first, so that its children are its no more.
func (u *Upgrader) killTree(m treeMark, err error) {
	if child := (*handover.ChildError)(nil); errors.As(err, &child) && child.PID > 0 {
		syscall.Kill(child.PID, syscall.SIGKILL)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		proc.WaitGone(ctx, child.PID)
		cancel()
	}
	inodes := u.socketInodes()
	var killed []int
	// A process may fork while it is being looked for: look again until
	// a pass finds nothing new.
	for pass := 0; pass < 5; pass++ {
		found := 0
		for pid, pi := range unrelatedSince(m.since) {
			why := ""
			switch {
			case hasMark(pid, m.value):
				why = "started by the failed new generation"
			case holdsSocket(pid, inodes):
				why = "holds the service's sockets"
			default:
				continue
			}
			if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
				continue
			}
			found++
			killed = append(killed, pid)
			u.log.Warn("killed a process the failed new generation left behind", "left_pid", pid, "comm", pi.comm, "why", why)
		}
		if found == 0 {
			break
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	for _, pid := range killed {
		proc.WaitGone(ctx, pid)
	}
}

// unrelatedSince returns the processes started since since (in clock
// ticks since boot) that are not this process, one of its ancestors or
// descendants, or init.
func unrelatedSince(since uint64) map[int]procInfo {
	infos := make(map[int]procInfo)
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		if pid, err := strconv.Atoi(e.Name()); err == nil {
			if pi, ok := readProcInfo(pid); ok {
				infos[pid] = pi
			}
		}
	}
	self := os.Getpid()
	related := func(pid int) bool {
		for p, n := pid, 0; p > 1 && n < 128; p, n = infos[p].ppid, n+1 {
			if p == self {
				return true
			}
		}
		for p, n := self, 0; p > 0 && n < 128; p, n = infos[p].ppid, n+1 {
			if p == pid {
				return true
			}
		}
		return false
	}
	out := make(map[int]procInfo)
	for pid, pi := range infos {
		if pi.start >= since && pid != 1 && !related(pid) {
			out[pid] = pi
		}
	}
	return out
}
