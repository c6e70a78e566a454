//go:build linux

package upgrader

import (
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// TestSocketFileIsTheSocket: the copy kept for a probation and passed to a
// new process is the listening socket itself, closed on exec unless
// passed.
func TestSocketFileIsTheSocket(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	f, err := socketFile(ln.(syscall.Conn), "tcp-test")
	if err != nil || f == nil {
		t.Fatalf("socketFile: %v, %v", f, err)
	}
	defer f.Close()
	sa, err := unix.Getsockname(int(f.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	in, ok := sa.(*unix.SockaddrInet4)
	if want := ln.Addr().(*net.TCPAddr); !ok || in.Port != want.Port {
		t.Errorf("copy bound to %+v, want the listener's %s", sa, want)
	}
	flags, err := unix.FcntlInt(f.Fd(), unix.F_GETFD, 0)
	if err != nil || flags&unix.FD_CLOEXEC == 0 {
		t.Errorf("copy's fd flags %#x (%v), want close-on-exec", flags, err)
	}
}

// lockHeld asks the kernel, through g, another open file description of
// the locked file, which lock another owner holds on it: F_UNLCK if none
// would conflict with a lock of type typ. (g stays open for the whole
// test: closing any descriptor of a file drops the process's record locks
// on it.)
func lockHeld(t *testing.T, g *os.File, typ int16) int16 {
	t.Helper()
	lk := unix.Flock_t{Type: typ}
	if err := unix.FcntlFlock(g.Fd(), unix.F_OFD_GETLK, &lk); err != nil {
		t.Fatal(err)
	}
	return lk.Type
}

// TestLockFile: the state file's lock is a record lock on the whole file,
// exclusive or shared as asked, and its release lets it go.
func TestLockFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	f.WriteString("{}")
	g, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()

	unlock := lockFile(f, true)
	if got := lockHeld(t, g, unix.F_RDLCK); got != unix.F_WRLCK {
		t.Errorf("exclusive lock: a reader sees %d, want F_WRLCK (%d)", got, unix.F_WRLCK)
	}
	unlock()
	if got := lockHeld(t, g, unix.F_WRLCK); got != unix.F_UNLCK {
		t.Errorf("after unlock: a writer sees %d, want F_UNLCK", got)
	}

	unlock = lockFile(f, false)
	if got := lockHeld(t, g, unix.F_RDLCK); got != unix.F_UNLCK {
		t.Errorf("shared lock: a reader sees %d, want no conflict", got)
	}
	if got := lockHeld(t, g, unix.F_WRLCK); got != unix.F_RDLCK {
		t.Errorf("shared lock: a writer sees %d, want F_RDLCK (%d)", got, unix.F_RDLCK)
	}
	unlock()
	if got := lockHeld(t, g, unix.F_WRLCK); got != unix.F_UNLCK {
		t.Errorf("after unlock: a writer sees %d, want F_UNLCK", got)
	}
}

// TestLockFileExcludesSharersOfTheDescription: every generation holds the
// state file through one inherited open file description, and the lock
// taken by one of them is seen through that description by the others;
// closing another descriptor of the file, as tableflip does with its copy
// at an upgrade's end, does not drop it.
func TestLockFileExcludesSharersOfTheDescription(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// shared: another descriptor of f's open file description, as another
	// generation holds it.
	fd, err := unix.Dup(int(f.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	shared := os.NewFile(uintptr(fd), "shared")
	defer shared.Close()

	unlock := lockFile(f, true)
	defer unlock()
	if got := lockHeld(t, shared, unix.F_RDLCK); got != unix.F_WRLCK {
		t.Fatalf("a sharer of the description sees %d, want F_WRLCK (%d)", got, unix.F_WRLCK)
	}
	fd2, err := unix.Dup(int(f.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	unix.Close(fd2) // tableflip closing its copy
	if got := lockHeld(t, shared, unix.F_RDLCK); got != unix.F_WRLCK {
		t.Errorf("after another descriptor's close the sharer sees %d, want the lock still held (F_WRLCK)", got)
	}
	unlock()
	if got := lockHeld(t, shared, unix.F_WRLCK); got != unix.F_UNLCK {
		t.Errorf("after unlock the sharer sees %d, want F_UNLCK", got)
	}
}
