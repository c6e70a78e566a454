package upgrader

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"slices"
	"sync"
	"time"

	"github.com/gohandoff/handoff/control"
	"github.com/gohandoff/handoff/internal/proc"
	"github.com/gohandoff/handoff/internal/supervise"
)

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
	state    supervise.State
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
	supervise.Slot
	cur, next *workerProc
	respawn   *time.Timer
	respawnAt time.Time
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
	// rollback says why its workers were rolled back to the previous
	// build, if they were, and onRollback replaces those still running
	// this build.
	rollback     string
	onRollback   func()
	log          *slog.Logger
	drainTimeout time.Duration
	readyTimeout time.Duration
	readyDelay   time.Duration
	pidFile      string
	// steer, if set, steers new connections in the kernel (steering.go).
	steer *steering

	failed    chan struct{} // closed on a crash loop before ready, with failFast
	failFast  bool
	failOnce  sync.Once
	failErr   error
	draining  chan struct{}
	drainOnce sync.Once
	live      sync.WaitGroup

	mu    sync.Mutex
	slots []procSlot
	procs map[*workerProc]struct{}
	// nready counts the slots ready; nready.At is when the whole pool
	// was first ready.
	nready  *supervise.Count
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
		nready:       supervise.NewCount(u.opts.Workers),
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

func (pp *procPool) ready() <-chan struct{} { return pp.nready.Done() }

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

// passedCount is 0: worker processes drain their connections themselves.
func (pp *procPool) passedCount() int64 { return 0 }

func (pp *procPool) cutCount() int64 {
	pp.mu.Lock()
	defer pp.mu.Unlock()
	return pp.killed
}

// startFailure: a pool that fails fast (a generation started by an
// upgrade) gives up when a slot falls into a crash loop before all workers
// are ready; the first generation keeps retrying.
func (pp *procPool) startFailure() (<-chan struct{}, func() error) {
	if !pp.failFast {
		return nil, nil
	}
	return pp.failed, func() error { return pp.failErr }
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
		st := s.Status(id, p.state)
		st.PID, st.Uptime = p.pid, now.Sub(p.started).Round(time.Millisecond)
		out = append(out, st)
	}
	for id := range pp.slots {
		s := &pp.slots[id]
		if s.cur != nil {
			looping := s.Up(s.cur.started, s.cur.state == supervise.Ready, now)
			add(id, s.cur, s)
			if looping {
				out[len(out)-1].State = string(supervise.CrashLoop) + "/" + string(s.cur.state)
			}
		} else {
			st := s.Status(id, supervise.Backoff)
			if s.respawn != nil {
				st.LastErr = fmt.Sprintf("next start in %s: %s", s.respawnAt.Sub(now).Round(time.Millisecond), s.LastErr)
			}
			if s.Looping {
				st.State = string(supervise.CrashLoop)
			}
			out = append(out, st)
		}
		if s.next != nil {
			add(id, s.next, s)
		}
	}
	for p := range pp.procs {
		if !listed[p] {
			out = append(out, control.WorkerStatus{ID: p.id, PID: p.pid, State: string(p.state), Uptime: now.Sub(p.started).Round(time.Millisecond)})
		}
	}
	return out
}
