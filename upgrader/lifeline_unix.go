//go:build !windows

package upgrader

import (
	"fmt"
	"os"

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
