//go:build !windows && !linux

package upgrader

import "os"

// lockFile takes a POSIX record lock of all of f (see fds_lock_linux.go
// for why Linux takes another kind).
func lockFile(f *os.File, exclusive bool) (unlock func()) { return recordLock(f, exclusive) }
