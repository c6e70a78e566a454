//go:build !windows

package proc

import (
	"errors"
	"syscall"
)

// Alive reports whether pid exists (a zombie counts until it is reaped).
func Alive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}
