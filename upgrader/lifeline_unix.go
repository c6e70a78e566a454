//go:build !windows

package upgrader

import (
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// takeLifeline moves the worker's stdin, the lifeline pipe from its
// master, to a private close-on-exec descriptor that can be read with a
// deadline, and puts /dev/null in its place, so that nothing the worker
// starts holds the lifeline.
func takeLifeline() (*os.File, error) {
	fd, err := unix.FcntlInt(0, unix.F_DUPFD_CLOEXEC, 3)
	if err != nil {
		return nil, fmt.Errorf("lifeline: %w", err)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("lifeline: %w", err)
	}
	null, err := os.Open(os.DevNull)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("lifeline: %w", err)
	}
	defer null.Close()
	if err := unix.Dup2(int(null.Fd()), 0); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("lifeline: %w", err)
	}
	return os.NewFile(uintptr(fd), "lifeline"), nil
}

// markCloseOnExec sets close-on-exec on every descriptor above stderr, so
// that a worker inherits only what its master passes it on purpose: not a
// descriptor the master itself inherited without the flag (from its own
// parent, or tableflip's handshake pipe with the previous generation).
func markCloseOnExec() {
	ents, err := os.ReadDir("/dev/fd")
	if err != nil {
		return
	}
	for _, e := range ents {
		if fd, err := strconv.Atoi(e.Name()); err == nil && fd > 2 {
			unix.CloseOnExec(fd)
		}
	}
}
