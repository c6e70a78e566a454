package upgrader

import (
	"os"

	"golang.org/x/sys/unix"
)

// createStateFile makes the state file a memfd: memory only, so that the
// writes and truncations on the way to an upgrade and to ready cost no
// file system journal (on ext4 each truncation of a temporary file took
// about 100 µs, four of them on an upgrade's critical path). Without
// memfd (before Linux 3.17, or refused by a seccomp filter), an unlinked
// temporary file.
func createStateFile() (*os.File, error) {
	fd, err := unix.MemfdCreate("handoff-state", unix.MFD_CLOEXEC)
	if err != nil {
		return tempStateFile()
	}
	return os.NewFile(uintptr(fd), "handoff-state"), nil
}
