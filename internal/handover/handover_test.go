//go:build linux

package handover

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cloudflare/tableflip"
)

// TestUpgradeErrorsTyped runs tableflip itself (one Upgrader per process,
// so one test) through each way an upgrade fails, and checks that Upgrade
// reports each one typed: tableflip's own messages, of the version go.mod
// names, are what classify reads.
func TestUpgradeErrorsTyped(t *testing.T) {
	h, err := New(tableflip.Options{UpgradeTimeout: 500 * time.Millisecond}, false)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Stop()
	if err := h.Upgrade(); !errors.Is(err, ErrNotReady) {
		t.Fatalf("upgrade before ready: %v, want ErrNotReady", err)
	}
	if err := h.Ready(); err != nil {
		t.Fatal(err)
	}
	args := os.Args
	defer func() { os.Args = args }()

	missing := filepath.Join(t.TempDir(), "gone")
	os.Args = []string{missing}
	var start *StartError
	if err := h.Upgrade(); !errors.As(err, &start) || start.Path != missing || start.Cause == "" {
		t.Errorf("upgrade to a missing executable: %v (%#v), want a *StartError naming %s", err, start, missing)
	}

	for _, tc := range []struct {
		name     string
		args     []string
		timedOut bool
		status   string
	}{
		{"exit 3", []string{"/bin/sh", "-c", "exit 3"}, false, "exit status 3"},
		{"exit 0", []string{"/bin/sh", "-c", "exit 0"}, false, ""},
		{"killed", []string{"/bin/sh", "-c", "kill -9 $$"}, false, "signal: killed"},
		{"never ready", []string{"/bin/sleep", "30"}, true, ""},
	} {
		os.Args = tc.args
		var child *ChildError
		err := h.Upgrade()
		if !errors.As(err, &child) || child.PID <= 0 || child.TimedOut != tc.timedOut || child.Status != tc.status {
			t.Errorf("%s: %v (%#v), want a *ChildError with timed out %v, status %q", tc.name, err, child, tc.timedOut, tc.status)
		}
	}

	h.Stop()
	if err := h.Upgrade(); !errors.Is(err, ErrStopping) {
		t.Errorf("upgrade once stopped: %v, want ErrStopping", err)
	}
}

// TestClassify: the messages a live tableflip cannot be made to give in
// one process (another upgrade running, one done), and an unknown one,
// which stays as it is.
func TestClassify(t *testing.T) {
	if err := classify(errors.New("upgrade in progress"), "x"); err != ErrInProgress {
		t.Errorf("upgrade in progress: %v", err)
	}
	if err := classify(errors.New("already upgraded"), "x"); err != ErrUpgraded {
		t.Errorf("already upgraded: %v", err)
	}
	odd := errors.New("can't start child: pipe failed: too many open files")
	if err := classify(odd, "x"); err != odd {
		t.Errorf("an unknown error: %v, want it unchanged", err)
	}
	start := classify(errors.New(`can't start child: can't start process /x: exec: "/x": permission denied`), "/x")
	if se, ok := start.(*StartError); !ok || se.Cause != "permission denied" {
		t.Errorf("start error: %#v", start)
	}
	for _, e := range []*ChildError{{PID: 7, Status: "exit status 1"}, {PID: 7}, {PID: 7, TimedOut: true}} {
		if got := classify(errors.New(e.Error()), "x"); got.(*ChildError).PID != 7 || got.(*ChildError).Status != e.Status || got.(*ChildError).TimedOut != e.TimedOut {
			t.Errorf("%q read back as %#v", e.Error(), got)
		}
	}
}
