package upgrader

import (
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestReleaseParentLink: after its handover a generation ends tableflip's
// parent link to its successor (the successor reads EOF on its fd 4), so
// the successor may upgrade while this one drains; with no successor it
// does nothing and warns of nothing.
func TestReleaseParentLink(t *testing.T) {
	logs := &syncBuffer{}
	u := &Upgrader{log: slog.New(slog.NewTextHandler(logs, nil))}
	u.releaseParentLink()
	if strings.Contains(logs.String(), "level=WARN") {
		t.Fatalf("with no successor: %s", logs)
	}

	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	null, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer null.Close()
	// The successor: its fd 4 is the link's read end, read until EOF.
	succ := exec.Command("sh", "-c", "cat <&4 >/dev/null")
	succ.ExtraFiles = []*os.File{null, r}
	if err := succ.Start(); err != nil {
		t.Fatal(err)
	}
	r.Close()
	exited := make(chan error, 1)
	go func() { exited <- succ.Wait() }()
	defer succ.Process.Kill()

	u.mu.Lock()
	u.successor = succ.Process.Pid
	u.mu.Unlock()
	u.releaseParentLink()
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("successor: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("the successor never read EOF on its parent link: %s", logs)
	}
	if strings.Contains(logs.String(), "level=WARN") {
		t.Errorf("warned: %s", logs)
	}
}

// TestEndedAtCapSignal: a draining generation that a newer one marked to
// end over --max-draining cuts its drain at the first SIGTERM; a
// generation in its final stop whose pid an old, ended entry still names
// (the pid reused) takes the signal as an ordinary stop's repeat.
func TestEndedAtCapSignal(t *testing.T) {
	mark := func(t *testing.T, u *Upgrader) {
		t.Helper()
		if err := u.state.write(genState{Generation: 2, PID: os.Getpid()}); err != nil {
			t.Fatal(err)
		}
		if err := u.state.update(func(st *genState) {
			st.Draining = []drainingGen{{PID: os.Getpid(), Generation: 1, State: "draining", Ended: true}}
		}); err != nil {
			t.Fatal(err)
		}
	}
	t.Run("draining", func(t *testing.T) {
		u, _ := probationUpgrader(t, 0)
		u.exit, u.force = closedChan(), make(chan struct{})
		u.phase.set(phaseDraining)
		mark(t, u)
		u.onSignal(syscall.SIGTERM)
		if !isClosedChan(u.force) {
			t.Fatal("a generation ended over the cap did not cut its drain at the first SIGTERM")
		}
		if !u.endedAt.Load() {
			t.Error("the end over the cap was not recorded")
		}
	})
	t.Run("final stop, stale entry", func(t *testing.T) {
		u, _ := probationUpgrader(t, 0)
		u.exit, u.force = closedChan(), make(chan struct{})
		u.phase.set(phaseStopping)
		u.stopSignals.Store(1) // the signal that started the stop
		u.stopSignalAt.Store(time.Now().UnixNano())
		mark(t, u)
		u.onSignal(syscall.SIGTERM)
		if isClosedChan(u.force) {
			t.Fatal("a final stop's repeated signal cut the drain because a stale entry with this pid was marked ended")
		}
	})
}
