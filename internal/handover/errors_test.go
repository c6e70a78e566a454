package handover

import (
	"errors"
	"fmt"
	"testing"
)

// TestErrorsRead: a typed error reads as tableflip's words when it came
// from tableflip, and says the same built by hand (a fake handover); it
// is found through wrapping, and unwraps to tableflip's.
func TestErrorsRead(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{&ChildError{PID: 7, Status: "exit status 3"}, "child pid=7 exited: exit status 3"},
		{&ChildError{PID: 7}, "child pid=7 exited"},
		{&ChildError{PID: 7, TimedOut: true}, "child pid=7 timed out"},
		{&StartError{Path: "/x", Cause: "permission denied"}, "can't start process /x: permission denied"},
	} {
		if got := tc.err.Error(); got != tc.want {
			t.Errorf("%#v reads %q, want %q", tc.err, got, tc.want)
		}
	}
	orig := errors.New("new child pid=9 timed out")
	wrapped := fmt.Errorf("upgrade: %w", classify(orig, "x"))
	var child *ChildError
	if !errors.As(wrapped, &child) || child.PID != 9 || !child.TimedOut || child.Error() != orig.Error() || !errors.Is(wrapped, orig) {
		t.Errorf("wrapped %v: as %#v, is tableflip's %v", wrapped, child, errors.Is(wrapped, orig))
	}
	orig = errors.New(`can't start child: can't start process /y: fork/exec /y: exec format error`)
	var start *StartError
	if err := classify(orig, "/y"); !errors.As(err, &start) || start.Cause != "fork/exec /y: exec format error" || !errors.Is(err, orig) {
		t.Errorf("start error %#v", err)
	}
}

// TestHasParentEnv: a process started by an upgrade is known by
// tableflip's marker alone.
func TestHasParentEnv(t *testing.T) {
	t.Setenv(ParentEnv, "")
	if HasParentEnv() {
		t.Error("no marker: taken for a new generation")
	}
	t.Setenv(ParentEnv, "1")
	if !HasParentEnv() {
		t.Error("marker set: not taken for a new generation")
	}
}
