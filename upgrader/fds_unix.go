//go:build !windows

package upgrader

import (
	"os"

	"golang.org/x/sys/unix"
)

// Descriptor operations, the OS seam of stderr.go and New.

// dupOnto makes fd a copy of f's descriptor, closing what fd was.
func dupOnto(f *os.File, fd int) error {
	raw, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var derr error
	if err := raw.Control(func(src uintptr) { derr = unix.Dup2(int(src), fd) }); err != nil {
		return err
	}
	return derr
}

// closeOnExec marks fd close-on-exec.
func closeOnExec(fd int) { unix.CloseOnExec(fd) }
