// Package handover is the one door to tableflip: the sockets and files one
// generation passes to the next, and the parent/child handshake (Upgrade,
// Ready, WaitForParent).
//
// New wraps tableflip's Upgrader so that what it reports comes back typed:
// a refused upgrade is one of the sentinel errors, a new process that
// failed a *ChildError, one that could not start a *StartError. No caller
// matches tableflip's strings; this package does, in one place, against
// the messages of the tableflip version go.mod names (handover_test.go).
package handover

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cloudflare/tableflip"
)

// ParentEnv is tableflip's marker of a process started by an upgrade: set
// in the environment of the new process, for as long as tableflip reads
// it. A caller that starts processes of its own takes it out of theirs.
const ParentEnv = "TABLEFLIP_HAS_PARENT_7DIU3"

// HasParentEnv reports whether this process was started by an upgrade,
// before New has run.
func HasParentEnv() bool { return os.Getenv(ParentEnv) != "" }

// Handover is what a generation uses of tableflip. New returns the one
// implementation a service runs; unit tests give the upgrader a fake.
type Handover interface {
	Listen(network, addr string) (net.Listener, error)
	ListenPacket(network, addr string) (net.PacketConn, error)
	Listener(network, addr string) (net.Listener, error)
	PacketConn(network, addr string) (net.PacketConn, error)
	AddListener(network, addr string, ln tableflip.Listener) error
	AddPacketConn(network, addr string, pc tableflip.PacketConn) error
	File(name string) (*os.File, error)
	AddFile(name string, f *os.File) error

	HasParent() bool
	Ready() error
	// Upgrade starts the new process and waits until it is ready. Its
	// errors are typed: see the sentinels, *ChildError and *StartError.
	Upgrade() error
	WaitForParent(ctx context.Context) error
	// Stop ends the handover: Exit is closed, and an upgrade is refused.
	// It closes and unlinks the unix sockets it holds.
	Stop()
	Exit() <-chan struct{}
}

// An Upgrade refused before any new process started.
var (
	ErrStopping   = errors.New("handover: stopping")
	ErrInProgress = errors.New("handover: an upgrade is in progress")
	ErrUpgraded   = errors.New("handover: already upgraded")
	ErrNotReady   = errors.New("handover: not ready yet")
)

// A ChildError is a new process that failed before it was ready.
type ChildError struct {
	PID int
	// TimedOut: it was not ready within the upgrade timeout, and was
	// killed.
	TimedOut bool
	// Status is how it exited ("exit status 3", "signal: killed"), ""
	// for a clean exit or a time-out.
	Status string
	err    error // tableflip's
}

func (e *ChildError) Error() string {
	switch {
	case e.err != nil:
		return e.err.Error()
	case e.TimedOut:
		return fmt.Sprintf("child pid=%d timed out", e.PID)
	case e.Status == "":
		return fmt.Sprintf("child pid=%d exited", e.PID)
	}
	return fmt.Sprintf("child pid=%d exited: %s", e.PID, e.Status)
}
func (e *ChildError) Unwrap() error { return e.err }

// A StartError is a new process that could not be started from Path.
type StartError struct {
	Path string
	// Cause is the system's word for it, as "permission denied" or
	// "exec format error".
	Cause string
	err   error // tableflip's
}

func (e *StartError) Error() string {
	if e.err != nil {
		return e.err.Error()
	}
	return fmt.Sprintf("can't start process %s: %s", e.Path, e.Cause)
}
func (e *StartError) Unwrap() error { return e.err }

// New starts tableflip's handover. With hasParent, tableflip's pipes to
// the parent (fds 3 and 4, the second open until the parent has exited)
// are kept out of processes this one starts.
func New(opts tableflip.Options, hasParent bool) (Handover, error) {
	tf, err := tableflip.New(opts)
	if err != nil {
		return nil, err
	}
	if hasParent {
		closeOnExec(3)
		closeOnExec(4)
	}
	return flip{tf}, nil
}

// flip is tableflip's Upgrader with typed errors.
type flip struct{ *tableflip.Upgrader }

// parentRetry is how long Upgrade retries tableflip's "parent hasn't
// exited": the caller's link to the parent can end a moment before
// tableflip's own loop has seen it.
const parentRetry = time.Second

func (f flip) Upgrade() error {
	deadline := time.Now().Add(parentRetry)
	for {
		err := f.Upgrader.Upgrade()
		if err == nil {
			return nil
		}
		if err.Error() != "parent hasn't exited" || time.Now().After(deadline) {
			return classify(err, os.Args[0])
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// childRe matches tableflip's errors about the new process; compiled on
// first use, not at every start.
var childRe = sync.OnceValue(func() *regexp.Regexp {
	return regexp.MustCompile(`^(?:new )?child pid=(\d+) (exited|timed out)(?:: (.*))?$`)
})

// classify turns an error of tableflip's Upgrade into a typed one; exe is
// the executable tableflip starts (os.Args[0]).
func classify(err error, exe string) error {
	msg := err.Error()
	switch msg {
	case "terminating":
		return ErrStopping
	case "upgrade in progress":
		return ErrInProgress
	case "already upgraded":
		return ErrUpgraded
	case "process is not ready yet":
		return ErrNotReady
	}
	if m := childRe().FindStringSubmatch(msg); m != nil {
		pid, _ := strconv.Atoi(m[1])
		return &ChildError{PID: pid, TimedOut: m[2] == "timed out", Status: m[3], err: err}
	}
	if cause, ok := strings.CutPrefix(msg, "can't start child: can't start process "+exe+": "); ok {
		cause = strings.TrimPrefix(cause, "exec: "+strconv.Quote(exe)+": ")
		return &StartError{Path: exe, Cause: cause, err: err}
	}
	return err
}
