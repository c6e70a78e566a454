package upgrader

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/gohandoff/handoff/internal/supervise"
)

// spawn starts a process for slot id, as its current process or, for a
// roll, as its replacement.
func (pp *procPool) spawn(id int, replacement bool) (*workerProc, error) {
	p := &workerProc{id: id, readyC: make(chan struct{}), exited: make(chan struct{}), state: supervise.Starting, set: -1}
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
	if err := pp.startLocked(p, replacement); err != nil {
		p.notify.close()
		w.Close()
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

// startLocked starts p's process, with kernel steering on the socket set
// its slot keeps (a replacement takes a fresh one).
func (pp *procPool) startLocked(p *workerProc, replacement bool) error {
	if pp.steer != nil {
		keep := -1
		if !replacement {
			keep = pp.slots[p.id].keep
		}
		files, err := pp.steer.acquireLocked(p, keep, pp.keptLocked())
		if err != nil {
			return err
		}
		p.cmd.ExtraFiles = files
	}
	markCloseOnExec()
	if err := startCmd(p.cmd); err != nil {
		if pp.steer != nil {
			pp.steer.releaseLocked(p)
		}
		return err
	}
	return nil
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
	if p.state != supervise.Starting {
		return
	}
	if !p.markReady() {
		return
	}
	p.state = supervise.Ready
	pp.log.Info("worker ready", "worker", p.id, "worker_pid", p.pid, "startup", time.Since(p.started).Round(time.Millisecond))
	pp.steerLocked()
	if s := &pp.slots[p.id]; p == s.cur {
		pp.nready.Ready(&s.Slot, time.Now())
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
// and schedules its replacement by the restart rule (internal/supervise);
// a crash loop soon after an upgrade rolls the workers back instead.
func (pp *procPool) diedLocked(id int, started time.Time, err error) {
	s := &pp.slots[id]
	d := s.Died(started, time.Now(), err)
	if d.Looping && pp.rollbackLocked(id) {
		d.Delay = 0
	} else {
		d.Log(pp.log.With("worker", id), "worker died, replacing it", err)
	}
	if d.Looping && pp.failFast && !pp.nready.All() {
		pp.failOnce.Do(func() {
			pp.failErr = fmt.Errorf("upgrader: worker %d in a crash loop before this generation was ready: %s", id, s.LastErr)
			close(pp.failed)
		})
	}
	if s.next == nil {
		pp.scheduleLocked(id, d.Delay)
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
	s.Restarts++
	pp.mu.Unlock()
	start := time.Now()
	if _, err := pp.spawn(id, false); err != nil && !errors.Is(err, errPoolDraining) {
		pp.mu.Lock()
		pp.diedLocked(id, start, err)
		pp.mu.Unlock()
	}
}
