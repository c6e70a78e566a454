package upgrader

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gohandoff/handoff/control"
	"github.com/gohandoff/handoff/internal/supervise"
)

// Restart of a failing worker, goroutine or process (internal/supervise):
// at once the first time, then after a backoff doubling from
// MinRestartBackoff up to MaxRestartBackoff; once a worker has stayed up
// for StableAfter, at once again.
const (
	MinRestartBackoff = supervise.MinBackoff
	MaxRestartBackoff = supervise.MaxBackoff
	StableAfter       = supervise.StableAfter
)

// A WorkerFunc is the application's worker. Each worker of the pool runs it
// over the same listeners. It calls w.Ready once it serves, serves until
// w.Draining is closed (the listeners are closed right after), then
// finishes the work it accepted and returns nil. ctx is cancelled when the
// drain timeout has passed: whatever is left must be cut then.
//
// w.PacketConns are not closed at the drain but get a read deadline in
// the past, so a ReadFrom returns a timeout error while WriteTo still
// works: on such an error, answer what was read, and return once
// w.Draining is closed (a worker that sets read deadlines of its own must
// check w.Draining when one passes). They are closed once the workers
// have returned; what is still queued in the socket is the next
// generation's to read.
//
// In a generation started by an upgrade, Accept on w.Listeners waits until
// the whole generation is ready, so that one which fails before has taken
// no connection: call w.Ready without waiting for a connection.
//
// A WorkerFunc that returns before the drain, with an error or not, or
// panics, is logged and run again after a backoff.
type WorkerFunc func(ctx context.Context, w *Worker) error

// Worker is one worker of a generation's pool.
type Worker struct {
	// ID numbers the workers of a generation from 0. In process mode it
	// is the worker process's number among its master's workers.
	ID int
	// Listeners and PacketConns are the service's sockets, shared by
	// every worker and every generation. In a generation started by an
	// upgrade the listeners are wrapped (see WorkerFunc); such a listener
	// has a method Unwrap() net.Listener that returns the socket itself.
	Listeners   []net.Listener
	PacketConns []net.PacketConn
	// Logger carries the pid, the generation and the worker's ID.
	Logger *slog.Logger

	pool  *pool
	slot  int // in pool.slots
	ready sync.Once
}

// Ready tells the pool that this worker serves. It is safe to call twice.
func (w *Worker) Ready() {
	w.ready.Do(func() { w.pool.workerReady(w.slot) })
}

// Draining returns a channel closed when the generation starts draining,
// just before its listeners are closed.
func (w *Worker) Draining() <-chan struct{} {
	return w.pool.draining
}

// slot is a goroutine worker's place: its books, and the state and start
// of its current run.
type slot struct {
	supervise.Slot
	state   supervise.State
	started time.Time
}

// pool runs n goroutine workers and supervises them.
type pool struct {
	fn       WorkerFunc
	lns      []net.Listener
	pcs      []net.PacketConn
	log      *slog.Logger
	draining chan struct{}
	done     chan struct{}
	cancel   context.CancelFunc
	drainOne sync.Once
	// closePacketsOnce closes the packet conns once drain is over.
	closePacketsOnce sync.Once
	// procID is, in a worker process, the worker's ID among its
	// master's workers: the ID of the pool's one Worker. Its logger
	// already names it. -1 elsewhere.
	procID int

	mu           sync.Mutex
	slots        []slot
	nready       *supervise.Count
	connCounters []func() int // progress.go
	// pass, on the Upgrader's goroutine pool, lets its HTTPServers take
	// connections over from the previous generation and hand theirs to
	// the next (httppass.go).
	pass   *connPassing
	cut    atomic.Int64 // connections cut at the drain timeout
	passed atomic.Int64 // connections handed to the next generation
}

// newPool makes a pool of n workers running fn. If gate is not nil, the
// workers' Accept waits until it is closed (see gatedListener).
func newPool(n int, fn WorkerFunc, lns []net.Listener, pcs []net.PacketConn, log *slog.Logger, gate <-chan struct{}) *pool {
	if gate != nil {
		lns = gateListeners(lns, gate)
	}
	return &pool{
		fn:       fn,
		lns:      lns,
		pcs:      pcs,
		log:      log,
		draining: make(chan struct{}),
		done:     make(chan struct{}),
		slots:    make([]slot, n),
		nready:   supervise.NewCount(n),
		procID:   -1,
	}
}

// workerLog returns the logger of the worker in slot id.
func (p *pool) workerLog(id int) *slog.Logger {
	if p.procID >= 0 {
		return p.log
	}
	return p.log.With("worker", id)
}

func (p *pool) ready() <-chan struct{} { return p.nready.Done() }

// start runs the workers until drain; done is closed when all returned.
func (p *pool) start() error {
	ctx, cancel := context.WithCancel(context.Background())
	p.cancel = cancel
	var wg sync.WaitGroup
	for id := range p.slots {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.supervise(ctx, id)
		}()
	}
	go func() {
		wg.Wait()
		close(p.done)
	}()
	return nil
}

func (p *pool) isDraining() bool {
	select {
	case <-p.draining:
		return true
	default:
		return false
	}
}

func (p *pool) supervise(ctx context.Context, id int) {
	for {
		p.setState(id, supervise.Starting, nil)
		start := time.Now()
		err := p.runOnce(ctx, id)
		if p.isDraining() || ctx.Err() != nil {
			p.setState(id, supervise.Stopped, err)
			return
		}
		if err == nil {
			err = errors.New("worker returned before the drain")
		}
		p.mu.Lock()
		d := p.slots[id].Died(start, time.Now(), err)
		p.slots[id].state = supervise.Backoff
		if d.Looping {
			p.slots[id].state = supervise.CrashLoop
		}
		p.mu.Unlock()
		d.Log(p.workerLog(id), "worker failed, restarting", err)
		select {
		case <-time.After(d.Delay):
		case <-p.draining:
			return
		}
		p.mu.Lock()
		p.slots[id].Restarts++
		p.mu.Unlock()
	}
}

func (p *pool) runOnce(ctx context.Context, id int) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic: %v\n%s", r, debug.Stack())
		}
	}()
	w := &Worker{ID: id, Listeners: p.lns, PacketConns: p.pcs, Logger: p.workerLog(id), pool: p, slot: id}
	if p.procID >= 0 {
		w.ID = p.procID
	}
	return p.fn(ctx, w)
}

func (p *pool) setState(id int, state supervise.State, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := &p.slots[id]
	s.state = state
	if state == supervise.Starting {
		s.started = time.Now()
	}
	if err != nil {
		s.LastErr = err.Error()
	}
}

func (p *pool) workerReady(id int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := &p.slots[id]
	if p.isDraining() {
		return
	}
	s.state = supervise.Ready
	p.nready.Ready(&s.Slot, time.Now())
}

// stopAccepting ends the accept loops, closes the draining channel and
// stops reading datagrams: the first step of the drain, taken as soon as
// an upgrade succeeds (Upgrader.stopAccepting).
func (p *pool) stopAccepting() {
	p.drainOne.Do(func() {
		p.mu.Lock()
		close(p.draining)
		for i := range p.slots {
			if p.slots[i].state == supervise.Ready {
				p.slots[i].state = supervise.Draining
			}
		}
		p.mu.Unlock()
		for _, ln := range p.lns {
			ln.Close()
		}
		// A packet conn is not closed before its workers return: a
		// read deadline in the past makes a waiting ReadFrom return,
		// while WriteTo still works, so a worker answers every datagram
		// it read. The datagrams still queued stay in the socket, which
		// the next generation reads.
		for _, pc := range p.pcs {
			pc.SetReadDeadline(time.Now())
		}
	})
}

// drain stops the pool: it marks it draining, closes the sockets so no
// worker accepts any more, and waits for the workers until ctx is done,
// when it cancels their context and waits a little more.
func (p *pool) drain(ctx context.Context) error {
	p.stopAccepting()
	defer p.closePacketsOnce.Do(func() {
		for _, pc := range p.pcs {
			pc.Close()
		}
	})
	select {
	case <-p.done:
		return nil
	case <-ctx.Done():
	}
	p.cancel()
	select {
	case <-p.done:
		return nil
	case <-time.After(time.Second):
		return errors.New("upgrader: workers did not return after the drain timeout")
	}
}

func (p *pool) status() []control.WorkerStatus {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]control.WorkerStatus, len(p.slots))
	for i, s := range p.slots {
		out[i] = s.Status(i, s.state)
		if !s.started.IsZero() {
			out[i].Uptime = time.Since(s.started).Round(time.Millisecond)
		}
	}
	return out
}

// A pool of goroutines has no gate of its own (its accept loops wait on
// the Upgrader's), no workers PID file, nothing to roll and no build to
// roll back to (Upgrader.roll refuses goroutine mode before it asks; roll
// says so too), and never gives up starting: its workers retry.
func (p *pool) openGate()                                       {}
func (p *pool) setPublish(bool)                                 {}
func (p *pool) roll(context.Context, func(string)) (int, error) { return 0, errGoroutineRoll }
func (p *pool) startFailure() (<-chan struct{}, func() error)   { return nil, nil }
func (p *pool) rolledBack() string                              { return "" }
