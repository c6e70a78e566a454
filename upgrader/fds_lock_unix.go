//go:build !windows

package upgrader

import (
	"os"

	"golang.org/x/sys/unix"
)

// recordLock takes a POSIX record lock of all of f and returns its
// release, or a no-op if the lock failed.
func recordLock(f *os.File, exclusive bool) (unlock func()) {
	if !fcntlLock(f, exclusive, unix.F_SETLKW) {
		return func() {}
	}
	return func() {
		un := unix.Flock_t{Type: unix.F_UNLCK}
		unix.FcntlFlock(f.Fd(), unix.F_SETLK, &un)
	}
}

// fcntlLock takes a lock of all of f with cmd, retrying on EINTR.
func fcntlLock(f *os.File, exclusive bool, cmd int) bool {
	typ := int16(unix.F_RDLCK)
	if exclusive {
		typ = unix.F_WRLCK
	}
	for {
		lk := unix.Flock_t{Type: typ}
		err := unix.FcntlFlock(f.Fd(), cmd, &lk)
		if err != unix.EINTR {
			return err == nil
		}
	}
}
