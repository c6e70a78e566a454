package upgrader

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// tableflipLinkFD is the descriptor on which a process started by
// tableflip watches its parent: the read end of a pipe whose write end
// the parent keeps until it exits (tableflip's parent.go).
const tableflipLinkFD = 4

// endParentLink ends this process's end of tableflip's parent link with
// its child pid: the write end of the pipe the child reads on its fd 4,
// found by the pipe's inode in /proc. It puts /dev/null in its place
// rather than closing it: tableflip keeps an *os.File on that descriptor
// number for the life of the process, which must never name another file
// (see overlap.go).
func endParentLink(child int) error {
	target, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%d", child, tableflipLinkFD))
	if err != nil {
		return fmt.Errorf("find the link: %w", err)
	}
	if !strings.HasPrefix(target, "pipe:") {
		return fmt.Errorf("find the link: the new generation's fd %d is %s, not tableflip's pipe", tableflipLinkFD, target)
	}
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return fmt.Errorf("find the link: %w", err)
	}
	null, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("end the link: %w", err)
	}
	defer null.Close()
	n := 0
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil || fd == int(null.Fd()) {
			continue
		}
		if l, err := os.Readlink("/proc/self/fd/" + e.Name()); err != nil || l != target {
			continue
		}
		fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
		if err != nil || fl&unix.O_ACCMODE != unix.O_WRONLY {
			continue
		}
		if err := unix.Dup3(int(null.Fd()), fd, unix.O_CLOEXEC); err != nil {
			return fmt.Errorf("end the link: %w", err)
		}
		n++
	}
	if n == 0 {
		return fmt.Errorf("find the link: no write end of %s in this process", target)
	}
	return nil
}
