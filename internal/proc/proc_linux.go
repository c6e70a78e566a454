package proc

import (
	"bytes"
	"context"
	"errors"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// waitPidfd waits for pid's exit with a pidfd. It reports false when
// pidfds are not available, and the caller polls instead.
func waitPidfd(ctx context.Context, pid int) (bool, error) {
	fd, err := unix.PidfdOpen(pid, 0)
	switch {
	case errors.Is(err, unix.ESRCH):
		return true, nil // already gone
	case err != nil:
		return false, nil
	}
	defer unix.Close(fd)
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	for {
		// Short poll slices so ctx is honoured without another goroutine.
		n, err := unix.Poll(fds, 50)
		if err != nil && !errors.Is(err, unix.EINTR) {
			return false, nil
		}
		if n > 0 {
			return true, nil
		}
		if ctx.Err() != nil {
			return true, ctx.Err()
		}
	}
}

// zombie reports whether pid has exited and waits to be reaped.
func zombie(pid int) bool {
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(stat, ')')
	return i > 0 && len(stat) > i+2 && stat[i+2] == 'Z'
}
