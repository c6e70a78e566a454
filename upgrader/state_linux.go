package upgrader

import (
	"fmt"
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

// id names the service the state file belongs to: every generation holds
// the same file, so its device and inode.
func (s *stateFile) id() string {
	var st unix.Stat_t
	if err := unix.Fstat(int(s.f.Fd()), &st); err != nil {
		return ""
	}
	return fmt.Sprintf("%x-%x", st.Dev, st.Ino)
}
