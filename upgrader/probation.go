package upgrader

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/gohandoff/handoff/internal/handover"
	"github.com/gohandoff/handoff/internal/proc"
)

// Probation: after an upgrade, the previous generation, once drained,
// stands by for Options.Probation, holding copies of the sockets and
// accepting nothing. If the new generation dies meanwhile without having
// been asked to stop (a build that reports ready, then crashes), the
// previous generation starts a fresh process of its own build on the
// sockets, passed by the socket-activation convention, and exits once that
// process is ready: the service is back on the build that served before.
// Connections that arrived meanwhile wait in the kernel's accept queue.
// Under systemd, the previous generation stays the main process until the
// probation is over, then sends MAINPID= for the new one (or for the
// restored process).

// restoreEnv marks a process started by a previous generation standing by,
// whose successor died; its value is the generation number to take.
const restoreEnv = "HANDOFF_RESTORE_R4Y8"

// keptSockets are the copies of the sockets a generation keeps while it
// stands by.
type keptSockets struct {
	files []*os.File
	names []string
}

func (k *keptSockets) close() {
	if k == nil {
		return
	}
	for _, f := range k.files {
		f.Close()
	}
}

// stopAccepting is the first step of this generation's drain, taken as
// soon as its upgrade succeeds and before the upgrade is answered: the
// accept loops end, so that whoever connects once `handoff reload` has
// returned reaches the new generation, never this one. The sockets a
// probation's stand-by needs are kept first, while they are still open.
func (u *Upgrader) stopAccepting() {
	u.mu.Lock()
	p := u.pool
	u.mu.Unlock()
	if p == nil {
		return
	}
	if u.as().standsBy() {
		u.keptSockets()
	}
	p.stopAccepting()
}

// keptSockets returns the sockets kept for the stand-by, copying them on
// the first call. The drain, which runs beside the end of the upgrade,
// may come first: either way they are copied once, while still open.
func (u *Upgrader) keptSockets() *keptSockets {
	u.keepOnce.Do(func() { u.kept = u.keepSockets() })
	return u.kept
}

// keepSockets copies the service's sockets for a restore, before the
// drain closes them.
func (u *Upgrader) keepSockets() *keptSockets {
	if ownImage(os.Args[0]) == os.Args[0] {
		// Without /proc/self/exe, a restore would start whatever build is
		// at the path now: most likely the one that just died.
		u.log.Warn("probation needs Linux: no restore if the new generation dies")
		return nil
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	k := &keptSockets{}
	for _, s := range u.socks {
		f, err := socketFile(s.conn, s.name)
		if err != nil {
			u.log.Warn("cannot keep the sockets for probation: no restore if the new generation dies", "socket", s.name, "err", err)
			k.close()
			return nil
		}
		k.files, k.names = append(k.files, f), append(k.names, s.activationName())
	}
	return k
}

// standBy waits, after this generation's drain, until the probation of
// its successor, pid succ, ready at readyAt, is over. It restores this
// build if the successor dies before without having been asked to stop.
//
// Before it returns it hands systemd's MAINPID on (see sdUpgraded): to
// the successor, or to the restored process. The one exception is a
// successor that stopped as asked: the service is stopping, and there is
// no process left to name.
func (u *Upgrader) standBy(k *keptSockets, succ int, readyAt time.Time) {
	defer k.close()
	if succ <= 0 {
		return
	}
	left := u.opts.Probation - time.Since(readyAt)
	if k == nil || left <= 0 {
		// The drain outlasted the probation, or there is nothing to
		// restore with: the successor stays, if it is alive.
		if k != nil && !proc.Alive(succ) && !u.stoppedAsAsked(succ) {
			u.restore(k, succ, time.Since(readyAt))
			return
		}
		u.log.Info("probation over: the new generation stays", "new_pid", succ)
		u.sdNotify("MAINPID=" + strconv.Itoa(succ))
		return
	}
	u.log.Info("standing by while the new generation is on probation", "new_pid", succ, "left", left.Round(time.Millisecond))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	gone := make(chan struct{})
	go func() {
		if proc.WaitGone(ctx, succ) == nil {
			close(gone)
		}
	}()
	timer := time.NewTimer(left)
	defer timer.Stop()
	select {
	case <-timer.C:
		u.log.Info("probation over: the new generation stays", "new_pid", succ)
		u.sdNotify("MAINPID=" + strconv.Itoa(succ))
		return
	case <-u.standbyEnd:
		u.log.Info("stop signal while standing by: exiting, the new generation stays", "new_pid", succ)
		u.sdNotify("MAINPID=" + strconv.Itoa(succ))
		return
	case <-gone:
	}
	if u.stoppedAsAsked(succ) {
		u.log.Info("the new generation stopped as asked: not restoring", "new_pid", succ)
		return
	}
	u.restore(k, succ, time.Since(readyAt))
}

// stoppedAsAsked reports whether the successor succ said, in the state
// file, that it stops as asked.
func (u *Upgrader) stoppedAsAsked(succ int) bool {
	st, err := u.state.read()
	return err == nil && st.PID == succ && st.Stopping
}

// restore starts a fresh process of this build on the kept sockets and
// waits until it has written the PID file, or exited.
func (u *Upgrader) restore(k *keptSockets, succ int, after time.Duration) {
	u.log.Error("NEW GENERATION DIED ON PROBATION: restoring this build", "new_pid", succ, "after_ready", after.Round(time.Millisecond))
	cmd := &exec.Cmd{
		Path:       ownImage(os.Args[0]),
		Args:       os.Args,
		Env:        restoredEnv(k.names, u.gen+2),
		ExtraFiles: k.files,
		Stdout:     os.Stdout,
		Stderr:     u.serviceStderr(),
	}
	if err := cmd.Start(); err != nil {
		u.log.Error("cannot restore this build: the service is down", "err", err)
		return
	}
	pid := cmd.Process.Pid
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	u.sdNotify("MAINPID="+strconv.Itoa(pid), "STATUS=restoring the previous build after the new generation died")
	if u.opts.PIDFile == "" {
		u.log.Info("restored build started", "restored_pid", pid)
		return
	}
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(u.opts.UpgradeTimeout)
	for {
		if pids, err := readPIDFile(u.opts.PIDFile); err == nil && len(pids) == 1 && pids[0] == pid {
			u.log.Info("restored: this build serves again", "restored_pid", pid)
			return
		}
		select {
		case err := <-exited:
			u.log.Error("the restored process exited before it was ready: the service is down", "restored_pid", pid, "err", err)
			return
		case <-deadline:
			u.log.Error("the restored process was not ready within the upgrade timeout; leaving it running", "restored_pid", pid, "timeout", u.opts.UpgradeTimeout)
			return
		case <-tick.C:
		}
	}
}

// restoredEnv is this process's environment for a restored process: no
// tableflip parent, the kept sockets by the socket-activation convention
// (the process sets LISTEN_PID itself, seeing the marker), and the
// generation it takes.
func restoredEnv(names []string, gen int) []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case handover.ParentEnv, restoreEnv, "LISTEN_FDS", "LISTEN_FDNAMES", "LISTEN_PID":
			continue
		}
		env = append(env, kv)
	}
	return append(env, "LISTEN_FDS="+strconv.Itoa(len(names)), "LISTEN_FDNAMES="+strings.Join(names, ":"),
		fmt.Sprintf("%s=%d", restoreEnv, gen))
}

// takeRestoreRole reports whether this process was started by a
// generation restoring its build, and the generation it takes; it sets
// LISTEN_PID for the sockets it passed and removes the marker.
func takeRestoreRole() (int, bool, error) {
	v, ok := os.LookupEnv(restoreEnv)
	if !ok {
		return 0, false, nil
	}
	os.Unsetenv(restoreEnv)
	gen, err := strconv.Atoi(v)
	if err != nil || gen < 1 {
		return 0, false, fmt.Errorf("upgrader: restore marker %s=%q is not a generation", restoreEnv, v)
	}
	os.Setenv("LISTEN_PID", strconv.Itoa(os.Getpid()))
	return gen, true, nil
}

// markStopping tells a previous generation standing by that this one
// stops as asked, so that it does not restore its build.
func (u *Upgrader) markStopping() {
	if u.opts.Probation <= 0 || u.state == nil {
		return
	}
	select {
	case <-u.parent:
		return // nobody stands by
	default:
	}
	// An update, not a write: the previous generation may be leaving its
	// drain record at this very moment.
	err := u.state.update(func(st *genState) {
		if st.PID == os.Getpid() {
			st.Stopping = true
		}
	})
	if err != nil && !errors.Is(err, os.ErrClosed) {
		u.log.Warn("cannot tell the previous generation this one stops: it may restore its build", "err", err)
	}
}

// upgradeWait bounds how long an asked upgrade may take: the previous
// generation's drain or probation, whichever is longer, then the upgrade.
func (u *Upgrader) upgradeWait() time.Duration {
	return max(u.opts.DrainTimeout, u.opts.Probation) + u.opts.UpgradeTimeout
}

// endStandBy ends the probation at a signal to this generation while it
// stands by, and reports whether it did. Under systemd this generation is
// still the main process, so the signal was meant for the service: it is
// passed on to the new generation.
func (u *Upgrader) endStandBy(sig os.Signal) bool {
	if !u.standing.CompareAndSwap(true, false) {
		return false
	}
	u.standbyOnce.Do(func() { close(u.standbyEnd) })
	u.passOn(sig)
	return true
}

// passOn sends sig, received while this generation stands by, to the new
// generation if this one is still systemd's main process (then the signal
// was meant for the service), and reports whether it did.
func (u *Upgrader) passOn(sig os.Signal) bool {
	u.mu.Lock()
	succ := u.successor
	u.mu.Unlock()
	if !u.sd.notify || succ <= 0 {
		return false
	}
	u.log.Info("signal while standing by: passed on to the new generation", "signal", sig.String(), "new_pid", succ)
	signalPID(succ, sig)
	return true
}

// signalPID sends sig to process pid, if it can.
func signalPID(pid int, sig os.Signal) {
	if p, err := os.FindProcess(pid); err == nil {
		p.Signal(sig)
	}
}

// activationName is the LISTEN_FDNAMES name under which a restored process
// finds this socket: the systemd name for an address "systemd:NAME", which
// it looks up by name; otherwise any, as it matches by address.
func (s sockRef) activationName() string {
	if name, ok := strings.CutPrefix(s.addr, SystemdPrefix); ok {
		return name
	}
	return s.name
}
