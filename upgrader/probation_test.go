//go:build linux

package upgrader

import (
	"context"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gohandoff/handoff/internal/proc"
)

// Probation's decisions, each driven on an Upgrader built in the test,
// with a real process as the successor and a stand-in NOTIFY_SOCKET that
// records what systemd would be told.

// standInNotify listens where NOTIFY_SOCKET points for the test.
func standInNotify(t *testing.T) *net.UnixConn {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	t.Setenv("NOTIFY_SOCKET", path)
	return c
}

// nextNotification is the next message on c, bounded by a deadline.
func nextNotification(t *testing.T, c *net.UnixConn) string {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	b := make([]byte, 4096)
	n, err := c.Read(b)
	if err != nil {
		t.Fatalf("no notification: %v", err)
	}
	return string(b[:n])
}

// successorProcess starts a process that stands for the new generation;
// it is killed and reaped at the end of the test, or by kill.
func successorProcess(t *testing.T) (pid int, kill func()) {
	t.Helper()
	cmd := exec.Command("sleep", "600")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waited := make(chan struct{})
	go func() { cmd.Wait(); close(waited) }()
	kill = func() {
		cmd.Process.Kill()
		<-waited
	}
	t.Cleanup(kill)
	return cmd.Process.Pid, kill
}

// probationUpgrader is a generation after an upgrade, standing by for its
// successor, with a state file and a stand-in systemd.
func probationUpgrader(t *testing.T, probation time.Duration) (*Upgrader, *syncBuffer) {
	t.Helper()
	t.Setenv("TMPDIR", t.TempDir()) // the state file's folder
	st, err := newStateFile()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.f.Close() })
	logs := &syncBuffer{}
	u := &Upgrader{
		opts:       Options{Probation: probation, UpgradeTimeout: time.Second},
		log:        slog.New(slog.NewTextHandler(logs, nil)),
		state:      st,
		sd:         &systemd{notify: true},
		parent:     make(chan struct{}),
		standbyEnd: make(chan struct{}),
	}
	// A restore would start this test binary again: make it run nothing.
	args := os.Args
	os.Args = []string{os.Args[0], "-test.list=^$"}
	t.Cleanup(func() { os.Args = args })
	return u, logs
}

// TestMarkStopping: a generation that stops as asked marks it in the state
// file for a previous generation standing by, only with a probation, only
// if one may stand by (its parent has not exited), and only under its own
// pid.
func TestMarkStopping(t *testing.T) {
	for _, tc := range []struct {
		name       string
		probation  time.Duration
		parentGone bool
		pid        int
		want       bool
	}{
		{name: "on probation", probation: time.Minute, pid: os.Getpid(), want: true},
		{name: "no probation", pid: os.Getpid()},
		{name: "parent gone", probation: time.Minute, parentGone: true, pid: os.Getpid()},
		{name: "state names another generation", probation: time.Minute, pid: os.Getpid() + 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u, _ := probationUpgrader(t, tc.probation)
			if tc.parentGone {
				close(u.parent)
			}
			if err := u.state.write(genState{PID: tc.pid}); err != nil {
				t.Fatal(err)
			}
			u.markStopping()
			st, err := u.state.read()
			if err != nil {
				t.Fatal(err)
			}
			if st.Stopping != tc.want {
				t.Errorf("stopping mark %v, want %v", st.Stopping, tc.want)
			}
		})
	}
	t.Run("no state file", func(t *testing.T) {
		u, _ := probationUpgrader(t, time.Minute)
		u.state = nil
		u.markStopping() // must not touch a state it does not have
	})
}

// TestStandByKeepsSuccessorAtProbationEnd: a successor alive at the end of
// its probation stays, and becomes systemd's main process.
func TestStandByKeepsSuccessorAtProbationEnd(t *testing.T) {
	notify := standInNotify(t)
	u, logs := probationUpgrader(t, 50*time.Millisecond)
	succ, _ := successorProcess(t)
	u.standBy(&keptSockets{}, succ, time.Now())
	if got, want := nextNotification(t, notify), "MAINPID="+strconv.Itoa(succ); got != want {
		t.Errorf("told systemd %q, want %q", got, want)
	}
	if strings.Contains(logs.String(), "RESTOR") {
		t.Errorf("restored a live successor:\n%s", logs)
	}
}

// TestStandByWithoutSocketsHandsOverAtOnce: with no copies of the sockets
// (they could not be kept) there is nothing to restore with: the
// successor becomes the main process at once, probation or not.
func TestStandByWithoutSocketsHandsOverAtOnce(t *testing.T) {
	notify := standInNotify(t)
	u, _ := probationUpgrader(t, time.Hour)
	succ, _ := successorProcess(t)
	done := make(chan struct{})
	go func() {
		defer close(done)
		u.standBy(nil, succ, time.Now())
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("standing by for an hour with nothing to restore with")
	}
	if got, want := nextNotification(t, notify), "MAINPID="+strconv.Itoa(succ); got != want {
		t.Errorf("told systemd %q, want %q", got, want)
	}
}

// TestStandByEndsAtStopSignal: a stop signal while standing by ends the
// probation at once; the successor stays and becomes the main process.
func TestStandByEndsAtStopSignal(t *testing.T) {
	notify := standInNotify(t)
	u, _ := probationUpgrader(t, time.Hour)
	succ, _ := successorProcess(t)
	u.standing.Store(true)
	done := make(chan struct{})
	go func() {
		defer close(done)
		u.standBy(&keptSockets{}, succ, time.Now())
	}()
	if !u.endStandBy(syscall.SIGTERM) {
		t.Fatal("a stop signal while standing by was not taken as its end")
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("still standing by after the stop signal")
	}
	if got, want := nextNotification(t, notify), "MAINPID="+strconv.Itoa(succ); got != want {
		t.Errorf("told systemd %q, want %q", got, want)
	}
	if u.endStandBy(syscall.SIGTERM) {
		t.Error("a second stop signal was taken as the end of a probation already over")
	}
}

// standByThroughDeath stands u by for a successor process whose state is
// st (with st.PID 0, the successor's pid), kills the successor and waits
// until standBy returns. It returns the successor's pid.
func standByThroughDeath(t *testing.T, u *Upgrader, st genState) (succ int) {
	t.Helper()
	succ, kill := successorProcess(t)
	if st.PID == 0 {
		st.PID = succ
	}
	if err := u.state.write(st); err != nil {
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
	return succ
}

// TestStandByDoesNotRestoreSuccessorStoppedAsAsked: a successor that dies
// after marking that it stops as asked (handoff stop, systemctl stop) is
// not a crash: nothing is restored.
func TestStandByDoesNotRestoreSuccessorStoppedAsAsked(t *testing.T) {
	standInNotify(t)
	u, logs := probationUpgrader(t, time.Hour)
	standByThroughDeath(t, u, genState{Stopping: true})
	if !strings.Contains(logs.String(), "stopped as asked: not restoring") || strings.Contains(logs.String(), "RESTORING") {
		t.Errorf("successor stopped as asked, logs:\n%s\nwant no restore", logs)
	}
}

// TestStandByRestoresSuccessorThatDied: a successor that dies on
// probation without having been asked to stop is replaced by this build.
// (The restored process is this test binary, told to list no test.)
func TestStandByRestoresSuccessorThatDied(t *testing.T) {
	for _, tc := range []struct {
		name  string
		state genState
	}{
		{"no stop mark", genState{}},
		{"stop mark of another process", genState{PID: 1, Stopping: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			notify := standInNotify(t)
			u, logs := probationUpgrader(t, time.Hour)
			succ := standByThroughDeath(t, u, tc.state)
			if !strings.Contains(logs.String(), "NEW GENERATION DIED ON PROBATION") {
				t.Errorf("successor died on probation, logs:\n%s\nwant a restore", logs)
			}
			msg := nextNotification(t, notify)
			pid, ok := strings.CutPrefix(strings.Split(msg, "\n")[0], "MAINPID=")
			if !ok || pid == strconv.Itoa(succ) {
				t.Fatalf("told systemd %q, want MAINPID= of the restored process", msg)
			}
			reapRestored(t, pid)
		})
	}
}

// reapRestored waits for the restored process (this test binary running
// no test) to exit; restore's own goroutine reaps it.
func reapRestored(t *testing.T, pid string) {
	t.Helper()
	n, err := strconv.Atoi(pid)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := proc.WaitGone(ctx, n); err != nil {
		syscall.Kill(n, syscall.SIGKILL)
		t.Fatalf("restored process %d still running: %v", n, err)
	}
}
