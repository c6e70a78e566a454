package upgrader

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/gohandoff/handoff/control"
	"github.com/gohandoff/handoff/internal/supervise"
	"github.com/oklog/run"
)

// WorkerMode says where the workers of a generation run.
type WorkerMode string

// Worker modes.
const (
	// GoroutineWorkers run the WorkerFunc in goroutines of the serving
	// process. It is the default.
	GoroutineWorkers WorkerMode = "goroutine"
	// ProcessWorkers run each worker in a process of its own that
	// inherits the listeners by the socket-activation convention: this
	// executable re-run in the worker role, or Options.WorkerCommand.
	ProcessWorkers WorkerMode = "process"
)

// Crash loop: a worker slot whose processes died CrashLoopDeaths times
// within CrashLoopWindow is reported as a crash loop in the logs and in the
// status until a worker of the slot has stayed up for StableAfter.
const (
	CrashLoopDeaths = supervise.CrashLoopDeaths
	CrashLoopWindow = supervise.CrashLoopWindow
)

// workerCutGrace is how long after the drain timeout a worker process has
// to cut its connections itself, log how many, and exit, before its
// master kills it.
const workerCutGrace = time.Second

// errPoolDraining: the pool starts no process any more.
var errPoolDraining = errors.New("upgrader: worker pool is draining")

// workers is what a generation needs of its pool, of goroutines or of
// processes.
type workers interface {
	start() error
	ready() <-chan struct{}
	drain(ctx context.Context) error
	// stopAccepting stops the accept loops of this process before an
	// upgrade is answered; drain does the rest.
	stopAccepting()
	status() []control.WorkerStatus
	// progress tells how much a drain has left; cutCount how many
	// connections or workers it cut at the drain timeout.
	progress() progress
	cutCount() int64
	// passedCount is how many connections the drain handed to the next
	// generation (httppass.go).
	passedCount() int64

	// openGate lets worker processes accept once the generation is
	// ready; goroutines wait on the Upgrader's accept gate instead.
	openGate()
	// setPublish turns the workers PID file (and kernel steering) on or
	// off; a pool of goroutines has neither.
	setPublish(on bool)
	// roll replaces the workers one at a time and says how many it
	// replaced.
	roll(ctx context.Context, progress func(string)) (int, error)
	// startFailure returns a channel closed if the pool gives up before
	// all its workers are ready, and then why (see
	// addStartFailureActor); nil, nil for a pool that never gives up.
	startFailure() (failed <-chan struct{}, why func() error)
	// rolledBack says why the workers were rolled back to the previous
	// build, or "" if they were not.
	rolledBack() string
}

// errGoroutineRoll: a rolling restart needs worker processes.
var errGoroutineRoll = errors.New("upgrader: no worker processes to restart: worker mode is goroutine")

// workersPIDFile derives the workers PID file from the PID file:
// run/hello.pid becomes run/hello.workers.pid.
func workersPIDFile(pidFile string) string {
	return strings.TrimSuffix(pidFile, ".pid") + ".workers.pid"
}

// newWorkersLocked returns the pool of this generation's workers, of
// goroutines or of processes. It expects u.mu held.
func (u *Upgrader) newWorkersLocked(fn WorkerFunc) (workers, error) {
	switch u.opts.WorkerMode {
	case GoroutineWorkers:
		if fn == nil {
			return nil, errors.New("upgrader: Serve needs a WorkerFunc in goroutine mode")
		}
		p := newPool(u.opts.Workers, fn, u.lns, u.pcs, u.log, u.acceptGate())
		p.pass = &connPassing{publish: u.publishConns, successor: u.successorConns}
		return p, nil
	case ProcessWorkers:
		spec, err := newProcSpecLocked(u)
		if err != nil {
			return nil, err
		}
		return newProcPool(u, spec), nil
	default:
		return nil, fmt.Errorf("upgrader: unknown worker mode %q", u.opts.WorkerMode)
	}
}

// openWorkers lets the worker processes of a ready generation accept.
func (u *Upgrader) openWorkers() {
	if p := u.workers(); p != nil {
		p.openGate()
	}
}

// publishWorkers turns the workers PID file of a process pool on or off.
func (u *Upgrader) publishWorkers(on bool) {
	if p := u.workers(); p != nil {
		p.setPublish(on)
	}
}

// workers returns this generation's pool, nil before Serve made it.
func (u *Upgrader) workers() workers {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.pool
}

// roll is a rolling restart of the worker processes (SIGUSR2 or the
// control socket). It excludes upgrades and returns how many workers were
// replaced.
func (u *Upgrader) roll(ctx context.Context, progress func(string)) (n int, err error) {
	defer func() {
		if err != nil {
			u.log.Error("rolling restart failed", "replaced", n, "err", err)
		}
	}()
	if u.opts.WorkerMode != ProcessWorkers {
		return 0, errGoroutineRoll
	}
	select {
	case <-u.ready:
	default:
		return 0, ErrNotReady
	}
	pp := u.workers()
	if !u.upgrading.CompareAndSwap(false, true) {
		if u.rolling.Load() {
			return 0, ErrRollInProgress
		}
		return 0, ErrUpgradeInProgress
	}
	u.rolling.Store(true)
	defer func() {
		u.rolling.Store(false)
		u.upgrading.Store(false)
	}()
	select {
	case <-u.tf.Exit():
		return 0, ErrStopping
	default:
	}
	start := time.Now()
	u.log.Info("rolling restart of the workers", "workers", u.opts.Workers)
	n, err = pp.roll(ctx, progress)
	if err != nil {
		return n, err
	}
	u.log.Info("rolling restart done", "replaced", n, "duration", time.Since(start).Round(time.Millisecond))
	return n, nil
}

// addStartFailureActor makes a generation started by an upgrade fail, so
// that the upgrade fails at once and the previous generation goes on
// serving, when one of its worker slots falls into a crash loop before all
// its workers are ready. The first generation keeps retrying instead.
func addStartFailureActor(g *run.Group, p workers) {
	failed, why := p.startFailure()
	if failed == nil {
		return
	}
	done := make(chan struct{})
	g.Add(func() error {
		select {
		case <-failed:
			return why()
		case <-p.ready():
		case <-done:
		}
		<-done
		return nil
	}, func(error) { close(done) })
}
