package upgrader

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/gohandoff/handoff/internal/handover"
)

// UpgradeError is returned by Upgrade when the new generation could not
// be started, exited or was killed before it was ready. The generation
// that tried goes on serving.
type UpgradeError struct {
	// Err says why in one line: the new generation's exit status, the
	// upgrade timeout, or why it could not be started.
	Err error
	// Stderr holds the new generation's last lines of stderr, at most
	// StderrTailLines.
	Stderr []string
}

func (e *UpgradeError) Error() string { return e.Err.Error() }

func (e *UpgradeError) Unwrap() error { return e.Err }

// UpgradeResult describes an upgrade: the pids of the old and the new
// generation, the new one's generation and version, and how long it took
// to be ready. Its fields are those of control.UpgradeResult, the wire
// form the control socket sends.
type UpgradeResult struct {
	OldPID     int
	NewPID     int
	Generation int
	Version    string
	Duration   time.Duration
}

// Upgrade starts the next generation from the executable at this
// process's path, which may have been replaced, and waits until it is
// ready or has failed. Once it succeeds, this generation drains and Serve
// returns. On failure this generation goes on serving and the error is an
// *UpgradeError, with the new generation's last lines of stderr.
//
// Only one upgrade runs at a time: a call during another one returns
// ErrUpgradeInProgress. An upgrade never waits for older generations to
// finish draining: they drain on, each to its own deadline, up to
// Options.MaxDraining of them (overlap.go). With a probation, a call made
// while the previous generation stands by waits, bounded by ctx, until the
// probation is over.
func (u *Upgrader) Upgrade(ctx context.Context) (UpgradeResult, error) { return u.as().upgrade(ctx) }

func (u *Upgrader) upgrade(ctx context.Context, progress func(step, msg string)) (UpgradeResult, error) {
	res := UpgradeResult{OldPID: os.Getpid()}
	if !u.upgrading.CompareAndSwap(false, true) {
		if u.rolling.Load() {
			return res, ErrRollInProgress
		}
		return res, ErrUpgradeInProgress
	}
	defer u.upgrading.Store(false)
	if err := u.mayUpgrade(ctx, progress); err != nil {
		return res, err
	}
	start := time.Now()
	if err := u.writeState(start); err != nil {
		return res, err
	}
	exe := os.Args[0]
	progress("start", "starting new generation from "+exe)
	u.log.Info("upgrade starting", "exe", exe)
	out, err := u.handOver(start)
	if err != nil {
		return res, u.upgradeFailed(err, out)
	}
	return u.upgraded(res, out, progress), nil
}

// mayUpgrade refuses an upgrade of a generation that handed over, stops,
// is not ready yet or has --max-draining generations draining, and waits
// for the previous generation to let go of this one.
func (u *Upgrader) mayUpgrade(ctx context.Context, progress func(step, msg string)) error {
	// The end first: a generation that handed over or stops is ready
	// too, and a select would pick either at random.
	select {
	case <-u.exit:
		if u.phase.get() == phaseDraining {
			return ErrUpgraded
		}
		return ErrStopping
	default:
	}
	select {
	case <-u.ready:
	default:
		return ErrNotReady
	}
	if err := u.waitLink(ctx, progress); err != nil {
		return err
	}
	if err := u.checkDrainingCap(); err != nil {
		u.log.Warn("upgrade refused", "err", err)
		return err
	}
	return nil
}

// handoverOutcome is what handOver found: whether it started a new
// generation, how long that took, its last lines of stderr, once ready
// the state it wrote, and whether a stop was asked meanwhile.
type handoverOutcome struct {
	started   bool
	took      time.Duration
	tail      []string
	st        genState
	stateErr  error
	stopAfter bool
}

// handOver starts the new generation with tableflip and waits until it is
// ready or has failed; on failure it kills what the new generation
// started. It leaves the phase draining or, on failure, ready.
func (u *Upgrader) handOver(start time.Time) (out handoverOutcome, err error) {
	// Exit() is closed as soon as tf.Upgrade returns: hold phaseMu until
	// the phase says whether this generation drains after an upgrade or
	// stops, which drain reads.
	u.phaseMu.Lock()
	defer u.phaseMu.Unlock()
	if !u.startUpgradePhase() {
		// A stop came between mayUpgrade and here.
		return out, ErrStopping
	}
	out.started = true
	u.sdReloading()
	u.publishWorkers(false)
	relay := u.captureStderr()
	mark, unmark := markTree()
	err = u.tf.Upgrade()
	unmark()
	if err != nil {
		u.killTree(mark, err)
	}
	out.tail = relay.finish(err != nil)
	out.took = time.Since(start)
	next := phaseDraining
	if err != nil {
		next = phaseReady
		u.publishWorkers(true)
	} else {
		// Before the phase lock is let go: the drain, which waits for
		// it, must find the successor (probation.go).
		out.st, out.stateErr = u.state.read()
		u.mu.Lock()
		u.successor, u.successorAt = out.st.PID, time.Now()
		u.mu.Unlock()
	}
	out.stopAfter = u.endUpgradePhase(next)
	return out, err
}

// upgradeFailed reports a failed upgrade (log, metrics, systemd, the PID
// file taken back) and returns the error for the caller; a stop asked
// during the upgrade is carried out now.
func (u *Upgrader) upgradeFailed(err error, out handoverOutcome) error {
	if !out.started {
		return err
	}
	result, err := u.explain(err, out.took, out.tail)
	if errors.Is(err, ErrStopping) {
		u.log.Info("upgrade abandoned: stopping", "duration", out.took.Round(time.Millisecond))
		return err
	}
	if result != "" {
		u.countFailedUpgrade(result)
	}
	var ue *UpgradeError
	if errors.As(err, &ue) {
		u.reclaimPIDFile()
	}
	u.mu.Lock()
	u.lastError = err.Error()
	u.mu.Unlock()
	u.log.Error("upgrade failed, this generation goes on serving", "err", err, "duration", out.took.Round(time.Millisecond))
	u.sdUpgradeFailed(err)
	if out.stopAfter {
		u.Stop()
	}
	return err
}

// upgraded reports an upgrade whose new generation is ready, stops
// accepting, and passes on to the new generation a stop asked meanwhile.
func (u *Upgrader) upgraded(res UpgradeResult, out handoverOutcome, progress func(step, msg string)) UpgradeResult {
	st := out.st
	if out.stateErr != nil {
		u.log.Warn("new generation ready but its state is unreadable", "err", out.stateErr)
	}
	res.NewPID, res.Generation, res.Version, res.Duration = st.PID, st.Generation, st.Version, out.took
	u.stopAccepting()
	u.sdUpgraded(st.PID)
	u.log.Info("upgrade done, draining", "new_pid", st.PID, "new_generation", st.Generation, "duration", out.took.Round(time.Millisecond))
	progress("ready", fmt.Sprintf("new generation pid %d ready in %d ms", st.PID, out.took.Milliseconds()))
	if out.stopAfter && st.PID > 0 {
		u.log.Info("stopping the new generation too, as asked during the upgrade", "new_pid", st.PID)
		if err := terminate(st.PID); err != nil {
			u.log.Error("cannot stop the new generation", "new_pid", st.PID, "err", err)
		}
	}
	return res
}

// startUpgradePhase moves a ready generation to phaseUpgrading, under
// u.mu as requestStop reads it; false if it is no longer ready.
func (u *Upgrader) startUpgradePhase() bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	_, ok := u.phase.to(phaseUpgrading)
	return ok
}

// endUpgradePhase leaves phaseUpgrading for next (phaseReady after a
// failed upgrade, phaseDraining after the handover) and reports (and
// forgets) whether a stop was asked during the upgrade.
func (u *Upgrader) endUpgradePhase(next phase) (stopAfter bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if from, ok := u.phase.to(next); !ok {
		// Cannot happen: phaseMu, held since the upgrade began, keeps
		// the drain from moving the phase.
		u.log.Error("upgrade ended in the wrong phase: phase kept", "phase", from, "want", phaseUpgrading, "next", next)
	}
	stopAfter, u.stopAfter = u.stopAfter, false
	return stopAfter
}

// requestStop stops this generation gracefully, as SIGTERM and the control
// socket ask; by says how, as a log key and value. During an upgrade it
// only notes the request and returns false: the upgrade ends first, so
// that a new generation is never killed once it may serve, and then both
// generations drain and exit. A second request during the upgrade
// abandons it.
func (u *Upgrader) requestStop(by ...any) (now bool) {
	u.mu.Lock()
	if u.phase.get() == phaseUpgrading && !u.stopAfter {
		u.stopAfter = true
		u.mu.Unlock()
		u.log.Info("stop requested during an upgrade: both generations stop once it has ended", by...)
		return false
	}
	succ := 0
	if u.phase.get() == phaseDraining {
		succ = u.successor
	}
	u.mu.Unlock()
	if succ > 0 {
		// Asked of this generation after its handover: the service is the
		// new generation now.
		u.log.Info("stop requested after the handover: passed on to the new generation", append(by, "new_pid", succ)...)
		if err := terminate(succ); err != nil {
			u.log.Error("cannot stop the new generation", "new_pid", succ, "err", err)
		}
		return true
	}
	u.log.Info("stopping", by...)
	u.Stop()
	return true
}

// handedOverTo returns the pid of the new generation once this one has
// handed over to it, 0 before.
func (u *Upgrader) handedOverTo() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.phase.get() != phaseDraining {
		return 0
	}
	return u.successor
}

// reclaimPIDFile writes this process's pid back into the PID file after a
// failed upgrade, in case the new generation wrote its own and then died.
func (u *Upgrader) reclaimPIDFile() {
	if u.opts.PIDFile == "" {
		return
	}
	if pids, err := readPIDFile(u.opts.PIDFile); err == nil && len(pids) == 1 && pids[0] == os.Getpid() {
		return
	}
	if err := writePIDFile(u.opts.PIDFile, os.Getpid()); err != nil {
		u.log.Error("pid file does not name the serving generation and cannot be rewritten", "err", err)
		return
	}
	u.log.Warn("pid file rewritten with the serving generation's pid", "path", u.opts.PIDFile)
}

// explain turns the handover's errors into an operator's message: a
// one-line *UpgradeError when the new generation failed, with its last
// lines of stderr, and the result label of handoff_upgrades_total; or one
// of the sentinel errors and no label.
func (u *Upgrader) explain(err error, took time.Duration, tail []string) (result string, _ error) {
	for from, to := range map[error]error{
		handover.ErrStopping:   ErrStopping,
		handover.ErrInProgress: ErrUpgradeInProgress,
		handover.ErrUpgraded:   ErrUpgraded,
		handover.ErrNotReady:   ErrNotReady,
	} {
		if errors.Is(err, from) {
			return "", to
		}
	}
	took = took.Round(time.Millisecond)
	var why error
	result = resultError
	var child *handover.ChildError
	var start *handover.StartError
	switch {
	case errors.As(err, &child):
		result = resultExited
		switch status := child.Status; {
		case child.TimedOut:
			result = resultTimeout
			why = fmt.Errorf("upgrader: upgrade failed: new generation pid %d timed out: not ready within the upgrade timeout of %s, killed", child.PID, u.opts.UpgradeTimeout)
		case status == "":
			why = fmt.Errorf("upgrader: upgrade failed: new generation pid %d exited with exit status 0 before it was ready, after %s", child.PID, took)
		case strings.HasPrefix(status, "signal: "):
			why = fmt.Errorf("upgrader: upgrade failed: new generation pid %d was killed by %s before it was ready, after %s", child.PID, status, took)
		default:
			why = fmt.Errorf("upgrader: upgrade failed: new generation pid %d exited with %s before it was ready, after %s", child.PID, status, took)
		}
	case errors.As(err, &start):
		why = fmt.Errorf("upgrader: upgrade failed: cannot start the new generation from %s: %s%s", start.Path, start.Cause, execHint(start.Cause))
	default:
		why = fmt.Errorf("upgrader: upgrade failed: %w", err)
	}
	return result, &UpgradeError{Err: why, Stderr: tail}
}

// execHint says in words what an exec error usually means.
func execHint(cause string) string {
	switch {
	case strings.HasSuffix(cause, "exec format error"):
		return " (not an executable for this machine: built for another architecture, truncated or corrupt)"
	case strings.HasSuffix(cause, "permission denied"):
		return " (the file is not executable)"
	}
	return ""
}
