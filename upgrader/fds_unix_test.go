//go:build !windows

package upgrader

import (
	"net"
	"os"
	"os/exec"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// TestSocketFileKeepsNonblocking: starting a process with a socket passed
// as socketFile's copy leaves the socket non-blocking, for every process
// that shares it. (The File method's copy would clear O_NONBLOCK, and an
// event loop accepting on the shared socket would then block in accept.)
func TestSocketFileKeepsNonblocking(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	nonblocking := func() bool {
		t.Helper()
		raw, err := ln.(syscall.Conn).SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		var flags int
		raw.Control(func(fd uintptr) { flags, err = unix.FcntlInt(fd, unix.F_GETFL, 0) })
		if err != nil {
			t.Fatal(err)
		}
		return flags&unix.O_NONBLOCK != 0
	}
	if !nonblocking() {
		t.Fatal("a new listener is blocking")
	}
	f, err := socketFile(ln.(syscall.Conn), "tcp-test")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd := exec.Command("true")
	cmd.ExtraFiles = []*os.File{f}
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	if !nonblocking() {
		t.Error("the socket became blocking when passed to a process")
	}
}
