//go:build !windows

package proc

import (
	"errors"
	"syscall"
)

// Alive reports whether pid runs. A zombie does not: it has exited and
// only waits for its parent (or, once the previous generation that started
// it is gone, init) to reap it.
func Alive(pid int) bool {
	if !signalable(pid) {
		return false
	}
	// A zombie is gone. One reaped between the two looks has no /proc
	// entry left, which zombie cannot tell from a live process: the
	// second signal sees it gone.
	return !zombie(pid) && signalable(pid)
}

// signalable reports whether signal 0 reaches pid (or is refused for
// permission only).
func signalable(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}
