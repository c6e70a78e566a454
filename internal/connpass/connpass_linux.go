// Package connpass hands established connections from one process to
// another: the sender passes each connection's file descriptor over a unix
// SOCK_SEQPACKET socket with SCM_RIGHTS, and the receiver, once it holds
// the descriptor, acknowledges it, after which the sender closes its copy.
//
// The receiver listens on an abstract unix address (no file to clean up)
// and takes connections only from a peer of its own uid; the sender checks
// that the receiver is the process it expects. One message, of up to
// MaxBatch connections, is in flight at a time on a channel, so that a
// channel holds at most MaxBatch connections between the two processes;
// Send returns once the receiver has its connection. A channel whose
// message goes unacknowledged, or that breaks, is closed, and the
// connections queued behind stay with the sender.
//
// Either the receiver serves a connection or the sender keeps it, never
// both: the receiver acknowledges a connection only once its Accept has
// returned it, and a receiver that closes, or dies, before it
// acknowledged never serves it (its copy is closed with it), so that an
// end of the channel without an acknowledgement leaves the connection to
// the sender. Only an acknowledgement that does not come in time leaves
// it in doubt (ErrUnconfirmed).
//
// The package moves descriptors only. Whether a connection may move (no
// byte of the next request read ahead by the old owner) is the caller's
// concern; see upgrader/httppass.go.
package connpass

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Supported reports whether connections can be passed on this system.
const Supported = true

// AckTimeout bounds the wait for a receiver's acknowledgement of one
// message: a receiver alive but that long stalled leaves its connections
// in doubt, and its channel is closed. A variable for the tests.
var AckTimeout = 10 * time.Second

// PeerCred returns the credentials of the process at the other end of c.
func PeerCred(c *net.UnixConn) (*unix.Ucred, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("peer credentials: %w", err)
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return nil, fmt.Errorf("peer credentials: %w", err)
	}
	if cerr != nil {
		return nil, fmt.Errorf("peer credentials: %w", cerr)
	}
	return cred, nil
}

// checkPeer refuses a peer of another uid, and, if pid is not 0, one that
// is not that process.
func checkPeer(c *net.UnixConn, pid int) error {
	cred, err := PeerCred(c)
	if err != nil {
		return fmt.Errorf("connpass: %w", err)
	}
	if cred.Uid != uint32(os.Getuid()) {
		return fmt.Errorf("connpass: refused a peer of uid %d (pid %d), not this process's uid %d", cred.Uid, cred.Pid, os.Getuid())
	}
	if pid != 0 && int(cred.Pid) != pid {
		return fmt.Errorf("connpass: the receiver is pid %d, not the expected pid %d", cred.Pid, pid)
	}
	return nil
}

// soAcceptCon is __SO_ACCEPTCON, the flag /proc/net/unix shows on a
// listening socket.
const soAcceptCon = 1 << 16

// Lookup returns the abstract addresses of the receivers listening on this
// host (in this network namespace) whose address begins with prefix.
func Lookup(prefix string) ([]string, error) {
	b, err := os.ReadFile("/proc/net/unix")
	if err != nil {
		return nil, fmt.Errorf("connpass: %w", err)
	}
	var addrs []string
	for _, line := range strings.Split(string(b), "\n") {
		// Num RefCount Protocol Flags Type St Inode Path
		f := strings.Fields(line)
		if len(f) < 8 || !strings.HasPrefix(f[7], prefix) {
			continue
		}
		flags, err1 := strconv.ParseUint(f[3], 16, 32)
		typ, err2 := strconv.ParseUint(f[4], 16, 16)
		if err1 != nil || err2 != nil || flags&soAcceptCon == 0 || typ != unix.SOCK_SEQPACKET {
			continue // not a listening receiver (an accepted end shows the name too)
		}
		addrs = append(addrs, f[7])
	}
	return addrs, nil
}
