package upgrader

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"time"

	"github.com/gohandoff/handoff/internal/supervise"
)

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
		return fmt.Errorf("exited before ready: %s", supervise.ErrString(p.err))
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
	p.state = supervise.Draining
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
	p.state = supervise.Draining
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
	pp.drainOnce.Do(func() { pp.startDrain(ctx) })
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

// startDrain, once, stops the respawns, lets go of the sockets and tells
// every worker process to drain: each is retired under the newer
// generation's steering after a handover, or stopped.
func (pp *procPool) startDrain(ctx context.Context) {
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
}
