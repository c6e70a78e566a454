package upgrader

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// lockFile locks all of f, exclusive or shared, waiting for the lock, and
// returns its release. A failure to lock leaves f unlocked: the state is
// then as safe as before locks.
//
// Every generation holds the state file through one inherited open file
// description, so neither flock nor an OFD lock taken through f would
// exclude another generation. A POSIX record lock would (it belongs to the
// process), but the kernel drops it when the process closes any descriptor
// of the file, and tableflip closes its copy of every passed file at an
// upgrade's end and at the stop. So on Linux the lock is an OFD lock on an
// open file description of the process's own, made by opening
// /proc/self/fd/N, and the release closes it; elsewhere it is the record
// lock.
func lockFile(f *os.File, exclusive bool) (unlock func()) {
	if own, err := os.OpenFile(fmt.Sprintf("/proc/self/fd/%d", f.Fd()), os.O_RDWR, 0); err == nil {
		if fcntlLock(own, exclusive, unix.F_OFD_SETLKW) {
			return func() { own.Close() }
		}
		own.Close()
	}
	return recordLock(f, exclusive)
}
