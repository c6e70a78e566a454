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
	err := syscall.Kill(pid, 0)
	if err != nil && !errors.Is(err, syscall.EPERM) {
		return false
	}
	return !zombie(pid)
}
