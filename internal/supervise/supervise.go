// Package supervise keeps the books of a pool of workers, the same for
// goroutine workers and worker processes: each slot's restarts, last error
// and crash history, the restart rule, the crash-loop alarm, and the count
// of slots ready.
//
// The supervisors run the workers (upgrader's pool and procPool); this
// package decides when a dead worker starts again, when its slot is in a
// crash loop, and when the whole pool is ready. It is not safe for
// concurrent use: a supervisor holds its own lock around every call.
package supervise

import (
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/gohandoff/handoff/control"
)

// State is a worker's state in the status.
type State string

// Worker states.
const (
	Starting  State = "starting"
	Ready     State = "ready"
	Draining  State = "draining"
	Backoff   State = "backoff"
	CrashLoop State = "crash-loop"
	Stopped   State = "stopped" // a goroutine worker that returned at the drain
)

// The restart rule: a worker that died starts again at once after its
// first death, or after a run of StableAfter; then after a backoff
// doubling from MinBackoff up to MaxBackoff. CrashLoopDeaths deaths within
// CrashLoopWindow are a crash loop, which lasts until a worker of the slot
// stays up for StableAfter.
const (
	MinBackoff      = 100 * time.Millisecond
	MaxBackoff      = 10 * time.Second
	StableAfter     = 10 * time.Second
	CrashLoopDeaths = 5
	CrashLoopWindow = 10 * time.Second
)

// Slot is the record of one worker place of a pool.
type Slot struct {
	Restarts int
	// LastErr is how the slot's last worker died.
	LastErr string
	// Backoff is the wait before the start after the next death.
	Backoff time.Duration
	// Deaths are the deaths within CrashLoopWindow of the last one.
	Deaths []time.Time
	// Looping is true from the death that makes a crash loop until a
	// worker of the slot has stayed up for StableAfter.
	Looping bool
	// counted: a worker of the slot has been ready (Count).
	counted bool
}

// A Death is what the rule says of one: how long to wait before the next
// start, and whether the slot is in a crash loop, Alarm if this death
// begins it.
type Death struct {
	Delay   time.Duration
	Deaths  int // within CrashLoopWindow
	Looping bool
	Alarm   bool
}

// Died records that the slot's worker started at started died at now of
// err, and returns what to do.
func (s *Slot) Died(started, now time.Time, err error) Death {
	if now.Sub(started) >= StableAfter {
		s.Backoff, s.Looping = 0, false
	}
	d := Death{Delay: s.Backoff}
	s.Backoff = min(max(2*s.Backoff, MinBackoff), MaxBackoff)
	s.Deaths = slices.DeleteFunc(append(s.Deaths, now), func(t time.Time) bool { return now.Sub(t) > CrashLoopWindow })
	d.Deaths = len(s.Deaths)
	if d.Deaths >= CrashLoopDeaths {
		d.Alarm = !s.Looping
		s.Looping = true
	}
	d.Looping = s.Looping
	s.LastErr = ErrString(err)
	return d
}

// Up ends the slot's crash loop once its worker, started at started and
// ready, has stayed up for StableAfter; it reports whether the slot is
// still in a crash loop.
func (s *Slot) Up(started time.Time, ready bool, now time.Time) bool {
	if s.Looping && ready && now.Sub(started) >= StableAfter {
		s.Looping = false
	}
	return s.Looping
}

// Forget clears the crash history: the slot starts afresh (a rollback to
// the previous build).
func (s *Slot) Forget() {
	s.Backoff, s.Deaths, s.Looping = 0, nil, false
}

// Status is the slot's line in the status, without what only its
// supervisor knows (pid, uptime).
func (s *Slot) Status(id int, state State) control.WorkerStatus {
	return control.WorkerStatus{ID: id, State: string(state), Restarts: s.Restarts, LastErr: s.LastErr}
}

// Log writes the death d of a worker to log, which names the worker:
// plain is the message of a death outside a crash loop.
func (d Death) Log(log *slog.Logger, plain string, err error) {
	switch {
	case d.Alarm:
		log.Error("WORKER CRASH LOOP: backing off", "deaths", d.Deaths, "window", CrashLoopWindow, "err", err, "backoff", d.Delay)
	case d.Looping:
		log.Error("worker in crash loop died again", "err", err, "backoff", d.Delay)
	default:
		log.Error(plain, "err", err, "backoff", d.Delay)
	}
}

// ErrString is how a worker's exit reads in the status.
func ErrString(err error) string {
	if err == nil {
		return "exited with status 0"
	}
	return strings.TrimSpace(err.Error())
}

// Count counts the slots of a pool whose worker has been ready once; the
// pool is ready when all of them have been. A slot counts once: a worker
// that replaces a dead one does not count again.
type Count struct {
	n, ready int
	done     chan struct{}
	// At is when the last slot was counted, zero before.
	At time.Time
}

// NewCount returns the count of a pool of n slots.
func NewCount(n int) *Count {
	return &Count{n: n, done: make(chan struct{})}
}

// Ready counts s ready at now, if it was not already, and reports whether
// that made the whole pool ready.
func (c *Count) Ready(s *Slot, now time.Time) bool {
	if s.counted {
		return false
	}
	s.counted = true
	c.ready++
	if c.ready != c.n {
		return false
	}
	c.At = now
	close(c.done)
	return true
}

// Done is closed when every slot has been ready.
func (c *Count) Done() <-chan struct{} { return c.done }

// N is how many slots have been ready.
func (c *Count) N() int { return c.ready }

// All reports whether every slot has been ready.
func (c *Count) All() bool { return c.ready == c.n }
