package upgrader

import (
	"fmt"
	"net"
	"os"
	"sync"
	"time"

	"github.com/gohandoff/handoff/control"
)

// drainProgressEvery is how often a draining generation reports how much
// work it has left: to systemd on a stop, and to the handoff reload that
// upgraded it.
const drainProgressEvery = 250 * time.Millisecond

// drainState is what a generation reports while it drains.
type drainState struct {
	started chan struct{} // closed when the drain starts
	done    chan struct{} // closed when it is over

	mu    sync.Mutex
	start time.Time
	took  time.Duration
	cut   int64
}

func newDrainState() *drainState {
	return &drainState{started: make(chan struct{}), done: make(chan struct{})}
}

// begin records the drain's start and says it started.
func (ds *drainState) begin(start time.Time) {
	ds.mu.Lock()
	ds.start = start
	ds.mu.Unlock()
	close(ds.started)
}

// end records how long the drain took and how many it cut, and says it is
// over.
func (ds *drainState) end(took time.Duration, cut int64) {
	ds.mu.Lock()
	ds.took, ds.cut = took, cut
	ds.mu.Unlock()
	close(ds.done)
}

// progress is how much work a pool has left while it drains: open
// connections if its workers count them (HTTPServer does), otherwise the
// workers that have not returned.
type progress struct {
	Left int
	Unit string // "connections" or "workers"
}

func (pr progress) String() string {
	unit := pr.Unit
	if pr.Left == 1 {
		unit = unit[:len(unit)-1]
	}
	return fmt.Sprintf("%d %s left", pr.Left, unit)
}

// countConns registers a counter of open connections: workers that track
// their connections (HTTPServer) report them, and how many they cut.
func (p *pool) countConns(n func() int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.connCounters = append(p.connCounters, n)
}

func (p *pool) addCut(n int) { p.cut.Add(int64(n)) }

func (p *pool) cutCount() int64 { return p.cut.Load() }

func (p *pool) addPassed(n int64)  { p.passed.Add(n) }
func (p *pool) passedCount() int64 { return p.passed.Load() }

func (p *pool) progress() progress {
	p.mu.Lock()
	counters := p.connCounters
	busy := 0
	for _, s := range p.slots {
		if s.state != "stopped" {
			busy++
		}
	}
	p.mu.Unlock()
	if len(counters) == 0 {
		return progress{Left: busy, Unit: "workers"}
	}
	n := 0
	for _, c := range counters {
		n += c()
	}
	return progress{Left: n, Unit: "connections"}
}

// reportDrain runs while a drain does: on a final stop it tells systemd
// how much is left and extends its stop timeout, until done is closed.
func (u *Upgrader) reportDrain(p workers, deadline time.Time, done <-chan struct{}) {
	if u.phase.get() != phaseStopping || !u.sd.notify {
		return
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-done:
			return
		case <-tick.C:
			u.sdDraining(time.Until(deadline), p.progress().String())
		}
	}
}

// streamDrain follows a successful upgrade on the control connection that
// asked for it: once the final message has told the CLI the new generation
// is ready, this old generation sends its drain progress, then a last
// "drained" message, and the connection closes. A CLI that stopped
// reading (an older one closes after the final message) ends the stream.
func (u *Upgrader) streamDrain(conn net.Conn, w *control.Writer) {
	ds := u.drainSt
	select {
	case <-ds.started:
	case <-time.After(10 * time.Second):
		return
	}
	u.mu.Lock()
	p := u.pool
	u.mu.Unlock()
	send := func(step, msg string, d *control.Drain) bool {
		conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
		return w.Send(control.Message{Step: step, Msg: msg, Drain: d}) == nil
	}
	pid := os.Getpid()
	tick := time.NewTicker(drainProgressEvery)
	defer tick.Stop()
	last := -1
	for {
		select {
		case <-ds.done:
			ds.mu.Lock()
			took, cut := ds.took, ds.cut
			ds.mu.Unlock()
			msg := fmt.Sprintf("old generation pid %d drained in %d ms", pid, took.Milliseconds())
			if cut > 0 {
				msg += fmt.Sprintf(", %d connections cut at the drain timeout", cut)
			}
			send("drained", msg, &control.Drain{PID: pid, Elapsed: took, Cut: int(cut), Done: true})
			return
		default:
		}
		pr := p.progress()
		if pr.Left != last {
			last = pr.Left
			ds.mu.Lock()
			elapsed := time.Since(ds.start)
			ds.mu.Unlock()
			msg := fmt.Sprintf("draining old generation pid %d: %s", pid, pr)
			if !send("drain", msg, &control.Drain{PID: pid, Left: pr.Left, Unit: pr.Unit, Elapsed: elapsed}) {
				return
			}
		}
		select {
		case <-ds.done:
		case <-tick.C:
		}
	}
}
