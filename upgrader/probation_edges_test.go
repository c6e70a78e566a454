//go:build linux

package upgrader

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Two edges found by the mutation work on probation and the state file,
// pinned so that a change to either is a decision, not an accident.

// TestStandByStoppedAsAskedHandsNoMainPID: a successor that stopped as
// asked is dead; standBy restores nothing and tells systemd no MAINPID
// (systemd refuses a MAINPID= that names a dead process): this generation
// stays the main process, and its own exit ends the stop. standBy's doc
// comment says it hands MAINPID on "whatever happens"; this path is the
// exception.
func TestStandByStoppedAsAskedHandsNoMainPID(t *testing.T) {
	notify := standInNotify(t)
	u, logs := probationUpgrader(t, time.Hour)
	succ, kill := successorProcess(t)
	if err := u.state.write(genState{PID: succ, Stopping: true}); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		u.standBy(&keptSockets{}, succ, time.Now())
	}()
	kill()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("still standing by after the successor exited")
	}
	if !strings.Contains(logs.String(), "stopped as asked: not restoring") {
		t.Fatalf("logs:\n%s", logs)
	}
	// standBy has returned: whatever it sent is queued in the socket
	// already, so a read that does not wait tells.
	raw, err := notify.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 4096)
	var n int
	var rerr error
	raw.Control(func(fd uintptr) { n, _, rerr = unix.Recvfrom(int(fd), b, unix.MSG_DONTWAIT) })
	if rerr == nil {
		t.Errorf("systemd told %q after the successor stopped as asked, want nothing", b[:n])
	} else if !errors.Is(rerr, unix.EAGAIN) {
		t.Fatal(rerr)
	}
}

// TestStateLockDroppedByClosingAnotherDescriptor: the state file's lock is
// a POSIX record lock, which the kernel drops when the process closes any
// descriptor of the file, not only the one it locked through. tableflip
// holds a dup of the state file (AddFile, File) and closes it when an
// upgrade completes (closeUsed) or at the stop (closeAndRemoveUsed): a lock
// held by another goroutine at that moment is silently gone. This test
// pins the kernel's rule the state file depends on; if it ever fails, the
// state file's lock may hold across such a close (see docs/testing.md).
func TestStateLockDroppedByClosingAnotherDescriptor(t *testing.T) {
	t.Setenv("TMPDIR", t.TempDir())
	sf, err := newStateFile()
	if err != nil {
		t.Fatal(err)
	}
	defer sf.f.Close()
	// Another open file description of the same (unlinked) file, to ask
	// the kernel with an OFD lock probe, which sees this process's
	// record locks as conflicting.
	probe, err := os.OpenFile(fmt.Sprintf("/proc/self/fd/%d", sf.f.Fd()), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer probe.Close()
	held := func() bool {
		lk := unix.Flock_t{Type: unix.F_RDLCK}
		if err := unix.FcntlFlock(probe.Fd(), unix.F_OFD_GETLK, &lk); err != nil {
			t.Fatal(err)
		}
		return lk.Type == unix.F_WRLCK
	}

	unlock := lockFile(sf.f, true)
	defer unlock()
	if !held() {
		t.Fatal("exclusive lock not seen")
	}
	dup, err := unix.Dup(int(sf.f.Fd())) // as tableflip's AddFile does
	if err != nil {
		t.Fatal(err)
	}
	unix.Close(dup)
	if held() {
		t.Fatal("the lock survived the close of another descriptor of the file: the kernel's rule changed, or the lock is no POSIX record lock any more")
	}
}
