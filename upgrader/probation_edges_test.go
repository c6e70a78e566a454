//go:build linux

package upgrader

import (
	"errors"
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
	standByThroughDeath(t, u, genState{Stopping: true})
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
