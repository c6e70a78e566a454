//go:build !windows

package upgrader

import (
	"fmt"
	"os"
	"syscall"

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

// socketFile returns a copy of the socket c to pass to a worker process.
// It is not the File method's copy: os/exec takes the descriptor of each
// file it passes with Fd, which for a File method's copy clears O_NONBLOCK
// on the socket, and that flag belongs to the socket's one open file
// description, shared by every process and generation that holds the
// socket. An event loop that accepts until EAGAIN (Node.js, nginx) then
// blocks in accept, and stops serving its open connections until the next
// connection arrives. The copy made here keeps the socket as it is.
func socketFile(c syscall.Conn, name string) (*os.File, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	var fd int
	var dupErr error
	if err := raw.Control(func(s uintptr) {
		fd, dupErr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		return nil, err
	}
	if dupErr != nil {
		return nil, fmt.Errorf("dup: %w", dupErr)
	}
	return os.NewFile(uintptr(fd), name), nil
}

// clearSocketMode sets the mode of the unbound socket fd to 0: on Linux
// the file bind creates gets it (less the umask), so nobody but root can
// connect before the mode is set.
func clearSocketMode(fd uintptr) { unix.Fchmod(int(fd), 0) }
