package upgrader

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/gohandoff/handoff/control"
	"github.com/gohandoff/handoff/internal/proc"
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
	CrashLoopDeaths = 5
	CrashLoopWindow = 10 * time.Second
)

// Worker process states in the status.
const (
	stateStarting  = "starting"
	stateReady     = "ready"
	stateDraining  = "draining"
	stateBackoff   = "backoff"
	stateCrashLoop = "crash-loop"
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
}

// workerProc is one worker process. Its fields but state are set before
// it is shared; state is guarded by procPool.mu.
type workerProc struct {
	id       int
	pid      int
	cmd      *exec.Cmd
	started  time.Time
	notify   *notifySocket // nil with a ready delay
	lifeline *os.File      // write end of the worker's stdin
	readyC   chan struct{}
	ready1   sync.Once
	exited   chan struct{}
	err      error  // how it exited, set before exited is closed
	failure  string // why the pool killed it, if it did
	state    string
	set      int // its socket set with kernel steering, else -1
}

func (p *workerProc) markReady() bool {
	first := false
	p.ready1.Do(func() { first = true; close(p.readyC) })
	return first
}

// procSlot is the place of one worker: its current process, the
// replacement a roll is starting, and the crash history.
type procSlot struct {
	cur, next *workerProc
	restarts  int
	backoff   time.Duration
	deaths    []time.Time
	looping   bool
	respawn   *time.Timer
	respawnAt time.Time
	lastErr   string
	wasReady  bool
	// keep is the socket set of the slot's last worker, with kernel
	// steering: its replacement takes it, and the connections queued on
	// it (-1: none).
	keep int
}

// procPool is the master's pool of worker processes: it starts them,
// knows when they are ready, replaces those that die, rolls them on
// request and lists them in the workers PID file.
type procPool struct {
	n    int
	spec *procSpec
	// closeSockets closes the master's own sockets when the drain starts.
	closeSockets func()
	// readyAt is when the whole pool was first ready; rollback says why
	// its workers were rolled back to the previous build, if they were,
	// and onRollback replaces those still running this build.
	readyAt      time.Time
	rollback     string
	onRollback   func()
	log          *slog.Logger
	drainTimeout time.Duration
	readyTimeout time.Duration
	readyDelay   time.Duration
	pidFile      string
	// steer, if set, steers new connections in the kernel (steering.go).
	steer *steering

	readyC    chan struct{}
	failed    chan struct{} // closed on a crash loop before ready, with failFast
	failFast  bool
	failOnce  sync.Once
	failErr   error
	draining  chan struct{}
	drainOnce sync.Once
	live      sync.WaitGroup

	mu      sync.Mutex
	slots   []procSlot
	procs   map[*workerProc]struct{}
	nready  int
	killed  int64 // workers killed at the drain timeout
	open    bool  // the generation is ready: workers may accept
	publish bool  // write the workers PID file
	rolling bool
}

func newProcPool(u *Upgrader, spec *procSpec) *procPool {
	pp := &procPool{
		n:            u.opts.Workers,
		spec:         spec,
		log:          u.log,
		drainTimeout: u.opts.DrainTimeout,
		readyTimeout: u.opts.UpgradeTimeout,
		readyDelay:   u.opts.WorkerReadyDelay,
		pidFile:      u.opts.WorkersPIDFile,
		readyC:       make(chan struct{}),
		failed:       make(chan struct{}),
		failFast:     u.HasParent(),
		open:         !u.HasParent(), // the first generation serves alone
		draining:     make(chan struct{}),
		slots:        make([]procSlot, u.opts.Workers),
		procs:        make(map[*workerProc]struct{}),
		onRollback:   u.rollBackWorkers,
		closeSockets: func() {
			for _, ln := range u.lns {
				ln.Close()
			}
			for _, pc := range u.pcs {
				pc.Close()
			}
		},
	}
	for i := range pp.slots {
		pp.slots[i].keep = -1
	}
	if u.opts.KernelSteering {
		pp.steer = newSteering(u)
		if pp.steer != nil && len(pp.steer.prev) > 0 {
			go pp.forgetPrevious()
		}
	}
	return pp
}

// forgetPrevious frees the socket sets older generations' workers held,
// each once the generation that holds it has exited: the previous one, or
// an older one still draining beside it (overlap.go).
func (pp *procPool) forgetPrevious() {
	pp.mu.Lock()
	holders := map[int]bool{}
	for _, pid := range pp.steer.prev {
		holders[pid] = true
	}
	pp.mu.Unlock()
	var wg sync.WaitGroup
	for pid := range holders {
		wg.Go(func() {
			proc.WaitGone(context.Background(), pid)
			pp.mu.Lock()
			defer pp.mu.Unlock()
			for j, holder := range pp.steer.prev {
				if holder != pid {
					continue
				}
				if q := pp.steer.queued(j); q > 0 {
					pp.log.Warn("connections left in the socket of a previous generation's worker: they wait for the next worker on it", "socket", j, "queued", q)
				}
				delete(pp.steer.prev, j)
			}
		})
	}
	wg.Wait()
}

// steerLocked points new connections at the ready workers.
func (pp *procPool) steerLocked() {
	if pp.steer == nil {
		return
	}
	pp.steer.steerLocked(pp.procs, pp.keptLocked())
}

func (pp *procPool) keptLocked() []int {
	var kept []int
	for _, s := range pp.slots {
		if s.keep >= 0 && s.cur == nil {
			kept = append(kept, s.keep)
		}
	}
	return kept
}

func (pp *procPool) ready() <-chan struct{} { return pp.readyC }

func (pp *procPool) isDraining() bool {
	select {
	case <-pp.draining:
		return true
	default:
		return false
	}
}

// start starts the N workers. A worker that cannot be started is retried
// like one that died.
func (pp *procPool) start() error {
	for id := range pp.slots {
		if _, err := pp.spawn(id, false); err != nil {
			pp.mu.Lock()
			pp.diedLocked(id, time.Now(), err)
			pp.mu.Unlock()
		}
	}
	return nil
}

// spawn starts a process for slot id, as its current process or, for a
// roll, as its replacement.
func (pp *procPool) spawn(id int, replacement bool) (*workerProc, error) {
	p := &workerProc{id: id, readyC: make(chan struct{}), exited: make(chan struct{}), state: stateStarting, set: -1}
	var err error
	if pp.readyDelay <= 0 {
		if p.notify, err = pp.spec.newNotifySocket(id); err != nil {
			return nil, err
		}
	}
	r, w, err := os.Pipe()
	if err != nil {
		p.notify.close()
		return nil, fmt.Errorf("upgrader: worker %d lifeline: %w", id, err)
	}
	defer r.Close()
	p.lifeline = w
	p.cmd = pp.spec.command(id, p.notify.path(), r)

	pp.mu.Lock()
	defer pp.mu.Unlock()
	if pp.isDraining() {
		p.notify.close()
		w.Close()
		return nil, errPoolDraining
	}
	if pp.steer != nil {
		keep := -1
		if !replacement {
			keep = pp.slots[id].keep
		}
		files, err := pp.steer.acquireLocked(p, keep, pp.keptLocked())
		if err != nil {
			p.notify.close()
			w.Close()
			return nil, fmt.Errorf("upgrader: start worker %d: %w", id, err)
		}
		p.cmd.ExtraFiles = files
	}
	markCloseOnExec()
	if err := startCmd(p.cmd); err != nil {
		p.notify.close()
		w.Close()
		if pp.steer != nil {
			pp.steer.releaseLocked(p)
		}
		return nil, fmt.Errorf("upgrader: start worker %d: %w", id, err)
	}
	if !replacement {
		pp.slots[id].keep = p.set
	}
	p.pid, p.started = p.cmd.Process.Pid, time.Now()
	s := &pp.slots[id]
	if replacement {
		s.next = p
	} else {
		s.cur = p
	}
	pp.procs[p] = struct{}{}
	if pp.open {
		p.openGate()
	}
	pp.live.Add(1)
	pp.writePIDsLocked()
	pp.log.Info("worker started", "worker", id, "worker_pid", p.pid, "replacement", replacement)
	go pp.wait(p)
	go pp.watchReady(p)
	return p, nil
}

// watchReady marks p ready when it says so (or after the ready delay) and
// kills it when it is not ready within the ready timeout.
func (pp *procPool) watchReady(p *workerProc) {
	if p.notify != nil {
		go p.notify.serve(func(state string) {
			switch {
			case state == "READY=1":
				pp.setReady(p)
			case strings.HasPrefix(state, "STATUS="):
				pp.log.Debug("worker status", "worker", p.id, "worker_pid", p.pid, "status", strings.TrimPrefix(state, "STATUS="))
			}
		})
	}
	delay := time.NewTimer(pp.readyDelay)
	defer delay.Stop()
	if pp.readyDelay <= 0 {
		delay.Stop()
	}
	timeout := time.NewTimer(pp.readyTimeout)
	defer timeout.Stop()
	select {
	case <-delay.C:
		pp.setReady(p)
	case <-p.readyC:
	case <-p.exited:
	case <-timeout.C:
		pp.mu.Lock()
		p.failure = fmt.Sprintf("not ready within %s, killed", pp.readyTimeout)
		pp.mu.Unlock()
		pp.log.Error("worker not ready in time, killing it", "worker", p.id, "worker_pid", p.pid, "timeout", pp.readyTimeout)
		p.cmd.Process.Kill()
	}
}

func (pp *procPool) setReady(p *workerProc) {
	pp.mu.Lock()
	defer pp.mu.Unlock()
	if p.state != stateStarting {
		return
	}
	if !p.markReady() {
		return
	}
	p.state = stateReady
	pp.log.Info("worker ready", "worker", p.id, "worker_pid", p.pid, "startup", time.Since(p.started).Round(time.Millisecond))
	pp.steerLocked()
	s := &pp.slots[p.id]
	if p == s.cur && !s.wasReady {
		s.wasReady = true
		pp.nready++
		if pp.nready == pp.n {
			pp.readyAt = time.Now()
			close(pp.readyC)
		}
	}
}

// wait reaps p and replaces it if it was a current worker that died.
func (pp *procPool) wait(p *workerProc) {
	err := p.cmd.Wait()
	p.notify.close()
	p.lifeline.Close()

	pp.mu.Lock()
	p.err = err
	if p.failure != "" {
		p.err = fmt.Errorf("%s (%v)", p.failure, err)
	}
	delete(pp.procs, p)
	s := &pp.slots[p.id]
	switch {
	case p == s.cur:
		s.cur = nil
		if !pp.isDraining() {
			pp.diedLocked(p.id, p.started, p.err)
		}
	case p == s.next:
		s.next = nil // the roll sees it exit
		if s.cur == nil && !pp.isDraining() {
			pp.scheduleLocked(p.id, 0)
		}
	default:
		pp.log.Info("worker exited", "worker", p.id, "worker_pid", p.pid, "err", err)
	}
	if pp.steer != nil {
		pp.steer.releaseLocked(p)
		pp.steerLocked()
	}
	pp.writePIDsLocked()
	pp.mu.Unlock()
	close(p.exited)
	pp.live.Done()
}

// diedLocked records the death of slot id's process started at started
// and schedules its replacement: at once after a worker that was stable,
// then with a backoff doubling up to MaxRestartBackoff.
func (pp *procPool) diedLocked(id int, started time.Time, err error) {
	s := &pp.slots[id]
	now := time.Now()
	if now.Sub(started) >= StableAfter {
		s.backoff = 0
	}
	delay := s.backoff
	s.backoff = min(max(2*s.backoff, MinRestartBackoff), MaxRestartBackoff)
	s.deaths = slices.DeleteFunc(append(s.deaths, now), func(t time.Time) bool { return now.Sub(t) > CrashLoopWindow })
	s.lastErr = errString(err)
	if len(s.deaths) >= CrashLoopDeaths {
		switch {
		case pp.rollbackLocked(id):
			delay = 0
		case !s.looping:
			s.looping = true
			pp.log.Error("WORKER CRASH LOOP: backing off", "worker", id, "deaths", len(s.deaths), "window", CrashLoopWindow, "err", err, "backoff", delay)
		default:
			pp.log.Error("worker in crash loop died again", "worker", id, "err", err, "backoff", delay)
		}
		if pp.failFast && pp.nready < pp.n {
			pp.failOnce.Do(func() {
				pp.failErr = fmt.Errorf("upgrader: worker %d in a crash loop before this generation was ready: %s", id, s.lastErr)
				close(pp.failed)
			})
		}
	} else {
		pp.log.Error("worker died, replacing it", "worker", id, "err", err, "backoff", delay)
	}
	if s.next == nil {
		pp.scheduleLocked(id, delay)
	}
}

func (pp *procPool) scheduleLocked(id int, delay time.Duration) {
	s := &pp.slots[id]
	if s.respawn != nil {
		s.respawn.Stop()
	}
	s.respawnAt = time.Now().Add(delay)
	s.respawn = time.AfterFunc(delay, func() { pp.respawn(id) })
}

func (pp *procPool) respawn(id int) {
	pp.mu.Lock()
	s := &pp.slots[id]
	if pp.isDraining() || s.cur != nil || s.next != nil {
		pp.mu.Unlock()
		return
	}
	s.respawn = nil
	s.restarts++
	pp.mu.Unlock()
	start := time.Now()
	if _, err := pp.spawn(id, false); err != nil && !errors.Is(err, errPoolDraining) {
		pp.mu.Lock()
		pp.diedLocked(id, start, err)
		pp.mu.Unlock()
	}
}

// roll replaces every worker in turn: it starts the replacement, waits
// until it is ready, then drains the old one. It stops at the first
// replacement that does not become ready, leaving the workers not yet
// replaced in place.
func (pp *procPool) roll(ctx context.Context, progress func(string)) (int, error) {
	pp.mu.Lock()
	if pp.rolling {
		pp.mu.Unlock()
		return 0, ErrRollInProgress
	}
	pp.rolling = true
	pp.mu.Unlock()
	defer func() {
		pp.mu.Lock()
		pp.rolling = false
		pp.mu.Unlock()
	}()
	for id := range pp.slots {
		start := time.Now()
		p, err := pp.spawn(id, true)
		if err != nil {
			return id, fmt.Errorf("upgrader: roll stopped at worker %d: %w", id, err)
		}
		if err := pp.waitReady(ctx, p); err != nil {
			pp.stopProc(p, pp.drainTimeout+workerCutGrace)
			return id, fmt.Errorf("upgrader: roll stopped at worker %d: replacement pid %d %w; workers %d to %d keep serving", id, p.pid, err, id, pp.n-1)
		}
		pp.mu.Lock()
		s := &pp.slots[id]
		old := s.cur
		s.cur, s.next = p, nil
		if p.set >= 0 {
			s.keep = p.set
		}
		if s.respawn != nil {
			s.respawn.Stop()
			s.respawn = nil
		}
		pp.writePIDsLocked()
		pp.mu.Unlock()
		msg := fmt.Sprintf("worker %d: pid %d ready in %d ms", id, p.pid, time.Since(start).Milliseconds())
		if old != nil {
			msg += fmt.Sprintf(", old pid %d draining", old.pid)
			if pp.steer != nil {
				go func() {
					ctx, cancel := context.WithTimeout(context.Background(), pp.drainTimeout)
					defer cancel()
					pp.retire(ctx, old, pp.drainTimeout+workerCutGrace)
				}()
			} else {
				pp.stopProc(old, pp.drainTimeout+workerCutGrace)
			}
		}
		pp.log.Info("worker replaced", "worker", id, "worker_pid", p.pid, "duration", time.Since(start).Round(time.Millisecond))
		progress(msg)
	}
	return pp.n, nil
}

func (pp *procPool) waitReady(ctx context.Context, p *workerProc) error {
	select {
	case <-p.readyC:
		return nil
	case <-p.exited:
		return fmt.Errorf("exited before ready: %s", errString(p.err))
	case <-pp.draining:
		return errors.New("not ready before this generation began to drain")
	case <-ctx.Done():
		return fmt.Errorf("not ready: %w", ctx.Err())
	}
}

// stopProc asks p to drain with SIGTERM; with a timeout, it kills p if it
// has not exited by then.
func (pp *procPool) stopProc(p *workerProc, timeout time.Duration) {
	pp.mu.Lock()
	p.state = stateDraining
	pp.mu.Unlock()
	p.cmd.Process.Signal(syscall.SIGTERM)
	if timeout <= 0 {
		return
	}
	go func() {
		t := time.NewTimer(timeout)
		defer t.Stop()
		select {
		case <-p.exited:
		case <-t.C:
			pp.log.Warn("worker still running after its drain timeout, killing it", "worker", p.id, "worker_pid", p.pid, "timeout", timeout)
			p.cmd.Process.Kill()
		}
	}()
}

// retire stops p once the kernel says it holds no connection (kernel
// steering): it leaves p's socket out of the program, waits until p has
// been idle for retireSettle, or ctx is done, then sends SIGTERM, and,
// with killAfter, SIGKILL if p has not exited by then.
func (pp *procPool) retire(ctx context.Context, p *workerProc, killAfter time.Duration) {
	start := time.Now()
	pp.mu.Lock()
	p.state = stateDraining
	pp.steerLocked()
	pp.mu.Unlock()
	if held, idle := pp.steer.waitIdle(ctx, p); !idle {
		pp.log.Warn("worker not idle at its drain timeout, signalling it", "worker", p.id, "worker_pid", p.pid, "held", held, "timeout", time.Since(start).Round(time.Millisecond))
	} else {
		pp.log.Info("worker idle, signalling it", "worker", p.id, "worker_pid", p.pid, "waited", time.Since(start).Round(time.Millisecond))
	}
	pp.stopProc(p, killAfter)
}

// drain stops every worker process: SIGTERM, then SIGKILL for those left
// when ctx is done. It returns once all have exited. With kernel
// steering, after an upgrade, each worker gets its SIGTERM once it holds
// no connection (retire).
func (pp *procPool) drain(ctx context.Context) error {
	defer func() {
		if pp.steer != nil {
			pp.mu.Lock()
			if len(pp.procs) == 0 {
				pp.steer.close()
			}
			pp.mu.Unlock()
		}
	}()
	pp.drainOnce.Do(func() {
		pp.mu.Lock()
		handedOver := pp.steer != nil && !pp.steer.live
		close(pp.draining)
		var procs []*workerProc
		for i := range pp.slots {
			if t := pp.slots[i].respawn; t != nil {
				t.Stop()
			}
		}
		for p := range pp.procs {
			procs = append(procs, p)
		}
		// No worker starts from now on: the master lets go of the
		// sockets, so that once its workers have closed theirs this
		// generation holds none (a restart after the newer generation
		// died can bind the address at once).
		pp.spec.cleanup()
		if pp.closeSockets != nil {
			pp.closeSockets()
		}
		pp.mu.Unlock()
		for _, p := range procs {
			if handedOver {
				go pp.retire(ctx, p, 0)
			} else {
				pp.stopProc(p, 0)
			}
		}
	})
	done := make(chan struct{})
	go func() { pp.live.Wait(); close(done) }()
	select {
	case <-done:
		pp.unpublish()
		return nil
	case <-ctx.Done():
	}
	// The workers cut what is left at their own drain timeout, which
	// began with their SIGTERM, and log how many connections they cut; a
	// second SIGTERM says the same at once (a forced stop). Those still
	// running after workerCutGrace are killed.
	pp.mu.Lock()
	for p := range pp.procs {
		p.cmd.Process.Signal(syscall.SIGTERM)
	}
	pp.mu.Unlock()
	select {
	case <-done:
		pp.unpublish()
		return nil
	case <-time.After(workerCutGrace):
	}
	pp.mu.Lock()
	n := len(pp.procs)
	for p := range pp.procs {
		p.cmd.Process.Kill()
	}
	pp.killed += int64(n)
	pp.mu.Unlock()
	pp.log.Warn("drain timeout: worker processes killed", "killed", n)
	select {
	case <-done:
		pp.unpublish()
		return nil
	case <-time.After(time.Second):
		return errors.New("upgrader: worker processes did not exit after SIGKILL")
	}
}

// progress counts the worker processes still running.
func (pp *procPool) progress() progress {
	pp.mu.Lock()
	defer pp.mu.Unlock()
	return progress{Left: len(pp.procs), Unit: "workers"}
}

// stopAccepting does nothing: the master accepts nothing itself, and its
// worker processes stop accepting at the drain's SIGTERM, a moment after
// the upgrade is answered.
func (pp *procPool) stopAccepting() {}

func (pp *procPool) cutCount() int64 {
	pp.mu.Lock()
	defer pp.mu.Unlock()
	return pp.killed
}

// openGate lets every worker accept, now and once started: the
// generation is ready.
func (pp *procPool) openGate() {
	pp.mu.Lock()
	defer pp.mu.Unlock()
	pp.open = true
	for p := range pp.procs {
		p.openGate()
	}
}

// openGate tells the worker process it may accept. A worker that has
// died meanwhile makes this a failed write, which changes nothing.
func (p *workerProc) openGate() {
	p.lifeline.Write([]byte{gateOpen})
}

// setPublish turns the writing of the workers PID file on (once this
// generation is ready, or again after a failed upgrade) or off (while a
// new generation takes over: the file becomes its own).
//
// With kernel steering it also hands the program over: off, at the start
// of an upgrade, this generation leaves it to the new one and tells it
// which socket sets its workers hold; on, this generation steers again
// (it is ready, or its upgrade failed).
func (pp *procPool) setPublish(on bool) {
	pp.mu.Lock()
	defer pp.mu.Unlock()
	if st := pp.steer; st != nil {
		st.live = on
		if on {
			st.last = "" // the other generation may have set its own
			pp.steerLocked()
		} else {
			os.Setenv(steerHeldEnv, st.heldLocked(pp.keptLocked()))
		}
	}
	pp.publish = on
	pp.writePIDsLocked()
}

func (pp *procPool) unpublish() {
	pp.mu.Lock()
	defer pp.mu.Unlock()
	if pp.publish && pp.pidFile != "" {
		os.Remove(pp.pidFile)
	}
}

// writePIDsLocked lists the live workers, in slot order, then those
// draining.
func (pp *procPool) writePIDsLocked() {
	if !pp.publish || pp.pidFile == "" {
		return
	}
	var pids []int
	for _, s := range pp.slots {
		for _, p := range []*workerProc{s.cur, s.next} {
			if p != nil {
				pids = append(pids, p.pid)
			}
		}
	}
	for p := range pp.procs {
		if !slices.Contains(pids, p.pid) {
			pids = append(pids, p.pid)
		}
	}
	if err := writePIDFile(pp.pidFile, pids...); err != nil {
		pp.log.Warn("cannot write the workers pid file", "err", err)
	}
}

func (pp *procPool) status() []control.WorkerStatus {
	pp.mu.Lock()
	defer pp.mu.Unlock()
	now := time.Now()
	var out []control.WorkerStatus
	listed := make(map[*workerProc]bool)
	add := func(id int, p *workerProc, s *procSlot) {
		listed[p] = true
		out = append(out, control.WorkerStatus{ID: id, PID: p.pid, State: p.state, Restarts: s.restarts,
			Uptime: now.Sub(p.started).Round(time.Millisecond), LastErr: s.lastErr})
	}
	for id := range pp.slots {
		s := &pp.slots[id]
		if s.looping && s.cur != nil && s.cur.state == stateReady && now.Sub(s.cur.started) >= StableAfter {
			s.looping = false
		}
		if s.cur != nil {
			add(id, s.cur, s)
			if s.looping {
				out[len(out)-1].State = stateCrashLoop + "/" + s.cur.state
			}
		} else {
			st := control.WorkerStatus{ID: id, State: stateBackoff, Restarts: s.restarts, LastErr: s.lastErr}
			if s.respawn != nil {
				st.LastErr = fmt.Sprintf("next start in %s: %s", s.respawnAt.Sub(now).Round(time.Millisecond), s.lastErr)
			}
			if s.looping {
				st.State = stateCrashLoop
			}
			out = append(out, st)
		}
		if s.next != nil {
			add(id, s.next, s)
		}
	}
	for p := range pp.procs {
		if !listed[p] {
			out = append(out, control.WorkerStatus{ID: p.id, PID: p.pid, State: p.state, Uptime: now.Sub(p.started).Round(time.Millisecond)})
		}
	}
	return out
}

func errString(err error) string {
	if err == nil {
		return "exited with status 0"
	}
	return strings.TrimSpace(err.Error())
}

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
		return newPool(u.opts.Workers, fn, u.lns, u.pcs, u.log, u.acceptGate()), nil
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
	u.mu.Lock()
	pp, ok := u.pool.(*procPool)
	u.mu.Unlock()
	if ok {
		pp.openGate()
	}
}

// publishWorkers turns the workers PID file of a process pool on or off.
func (u *Upgrader) publishWorkers(on bool) {
	u.mu.Lock()
	pp, ok := u.pool.(*procPool)
	u.mu.Unlock()
	if ok {
		pp.setPublish(on)
	}
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
	u.mu.Lock()
	pp, ok := u.pool.(*procPool)
	u.mu.Unlock()
	if !ok {
		return 0, errors.New("upgrader: no worker processes to restart: worker mode is goroutine")
	}
	select {
	case <-u.ready:
	default:
		return 0, ErrNotReady
	}
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
	u.log.Info("rolling restart of the workers", "workers", pp.n)
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
	pp, ok := p.(*procPool)
	if !ok || !pp.failFast {
		return
	}
	done := make(chan struct{})
	g.Add(func() error {
		select {
		case <-pp.failed:
			return pp.failErr
		case <-pp.readyC:
		case <-done:
		}
		<-done
		return nil
	}, func(error) { close(done) })
}
