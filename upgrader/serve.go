package upgrader

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/oklog/run"
)

// Serve runs this generation: it starts the pool of workers running fn
// over the listeners, reports ready once every worker is ready, then
// upgrades on SIGHUP or a control request, and stops gracefully on SIGTERM,
// SIGINT, a control request or ctx's end. A second SIGTERM or SIGINT cuts
// the drain short (a generation draining after an upgrade takes its first
// one as the stop it is already doing). Serve returns once this generation
// has drained: after a successful upgrade, or a stop. The caller then
// exits.
//
// Create every listener with Listen or ListenPacket before calling Serve.
func (u *Upgrader) Serve(ctx context.Context, fn WorkerFunc) error { return u.as().serve(ctx, fn) }

// serveMaster is Serve in the master.
func (u *Upgrader) serveMaster(ctx context.Context, fn WorkerFunc) error {
	u.mu.Lock()
	if u.pool != nil {
		u.mu.Unlock()
		return errors.New("upgrader: Serve called twice")
	}
	p, err := u.newWorkersLocked(fn)
	if err != nil {
		u.mu.Unlock()
		return err
	}
	u.pool = p
	admin := u.startAdminLocked()
	u.mu.Unlock()
	if err := p.start(); err != nil {
		return err
	}

	var g run.Group
	// The generation ends after an upgrade or a stop: drain, then return.
	{
		g.Add(func() error {
			<-u.exit
			u.closeControl()
			return u.drain(p, admin)
		}, func(error) {
			u.Stop()
		})
	}
	// Ready once every worker is.
	readies := []<-chan struct{}{p.ready(), u.sigs.done}
	for _, a := range admin {
		readies = append(readies, a.ready())
	}
	slowAfter := u.opts.UpgradeTimeout * 3 / 4
	addReadyActor(&g, u.markReady, slowAfter, func() { u.slowStart(slowAfter, p) }, readies...)
	addStartFailureActor(&g, p)
	// Signals.
	addSignalActor(&g, u.onSignal, u.sigs)
	u.addControlActor(&g)
	u.addWatchActor(&g)
	// The caller's context.
	u.addContextActor(&g, ctx)
	err = g.Run()
	if err != nil {
		u.log.Error("generation failed", "err", err)
	} else {
		u.log.Info("exited")
	}
	return err
}

// addWatchActor runs Options.Watch, which upgrades on events such as
// changes of files.
func (u *Upgrader) addWatchActor(g *run.Group) {
	if u.opts.Watch == nil {
		return
	}
	wctx, cancel := context.WithCancel(context.Background())
	g.Add(func() error {
		return u.opts.Watch(wctx, u)
	}, func(error) { cancel() })
}

func (u *Upgrader) onSignal(sig os.Signal) {
	if isRollSignal(sig) {
		u.log.Info("rolling restart requested", "signal", sig.String())
		go u.roll(context.Background(), func(string) {}) // logged by roll
		return
	}
	if isUpgradeSignal(sig) {
		if u.standing.Load() && u.passOn(sig) {
			return // the new generation upgrades
		}
		u.log.Info("upgrade requested", "signal", sig.String())
		go u.upgradeOnSignal(sig)
		return
	}
	if u.endStandBy(sig) || u.endedByNewer(sig) {
		return
	}
	u.stopOnSignal(sig)
}

// upgradeOnSignal runs the upgrade a signal asked for; its outcome is
// logged (by upgrade, or here if it did not start).
func (u *Upgrader) upgradeOnSignal(sig os.Signal) {
	ctx, cancel := context.WithTimeout(context.Background(), u.upgradeWait())
	defer cancel()
	_, err := u.Upgrade(ctx)
	var ue *UpgradeError
	switch {
	case errors.Is(err, ErrUpgradeInProgress):
		u.log.Warn("upgrade already in progress, signal ignored", "signal", sig.String())
	case err != nil && !errors.As(err, &ue):
		u.log.Warn("upgrade refused, signal ignored", "signal", sig.String(), "err", err)
	}
}

// endedByNewer reports whether sig is a newer generation ending this
// draining one at once, as it went past --max-draining (overlap.go), and
// if so cuts the drain short.
func (u *Upgrader) endedByNewer(sig os.Signal) bool {
	select {
	case <-u.exit:
	default:
		return false
	}
	if u.phase.get() != phaseDraining || u.endedAt.Load() || !u.endedAtCap() {
		return false
	}
	u.endedAt.Store(true)
	u.mu.Lock()
	p := u.pool
	u.mu.Unlock()
	var pr progress
	if p != nil {
		pr = p.progress()
	}
	u.log.Warn("ended at once by a newer generation over --max-draining: cutting the drain short", "signal", sig.String(),
		"max_draining", u.opts.MaxDraining, "left", pr.Left, "unit", pr.Unit)
	u.forceOnce.Do(func() { close(u.force) })
	return true
}

// stopOnSignal is a stop signal: the first stops the service, and a
// second one (not taken as the same stop) cuts the drain short.
func (u *Upgrader) stopOnSignal(sig os.Signal) {
	n := u.stopSignals.Add(1)
	select {
	case <-u.exit:
		if n == 1 && u.phase.get() == phaseDraining {
			// systemd's KillMode=control-group and a terminal's Ctrl-C
			// signal every generation at once.
			u.stopSignalAt.CompareAndSwap(0, time.Now().UnixNano())
			u.log.Info("stop signal while draining after an upgrade: the drain goes on, a second signal cuts it short", "signal", sig.String())
			return
		}
		if u.sameStop() {
			u.log.Info("stop signal again, taken as the same stop", "signal", sig.String())
			return
		}
		u.log.Warn("second stop signal, cutting the drain short", "signal", sig.String())
		u.forceOnce.Do(func() { close(u.force) })
	default:
		u.stopSignalAt.CompareAndSwap(0, time.Now().UnixNano())
		u.requestStop("signal", sig.String())
	}
}

// StopSignalGrace: a stop signal that comes within this time of the first
// one is taken as the same stop, not as the second one that cuts the drain
// short. systemd's KillMode=control-group and a terminal's Ctrl-C signal
// every process of a service at once, and a master signals its worker
// processes too: each of them would otherwise see two signals.
const StopSignalGrace = time.Second

// sameStop reports whether a stop signal now is within StopSignalGrace of
// the first.
func (u *Upgrader) sameStop() bool {
	first := u.stopSignalAt.Load()
	return first != 0 && time.Since(time.Unix(0, first)) < StopSignalGrace
}

// drain runs after this generation stopped accepting work for good: after
// an upgrade, or on a final stop.
func (u *Upgrader) drain(p workers, admin []*pool) error {
	u.phaseMu.Lock() // an upgrade that just succeeded has said so
	from, _ := u.phase.to(phaseStopping)
	u.phaseMu.Unlock()
	final := from != phaseDraining
	if final {
		u.markStopping()
	}
	// With a probation, stand by from now on, alongside the drain: a new
	// generation that dies while this one still drains is restored at once.
	start := time.Now()
	if !final {
		// Registered before the parent link ends, so that the successor,
		// free to upgrade from then on, counts this generation.
		u.endOldest(u.registerDraining(start.Add(u.opts.DrainTimeout), p.progress()))
		defer u.unregisterDraining()
	}
	var standDone chan struct{}
	if !final {
		standDone = u.standByOrLetGo()
	}
	u.drainSt.begin(start)
	pr := p.progress()
	u.log.Info("draining", "timeout", u.opts.DrainTimeout, "left", pr.Left, "unit", pr.Unit)
	if final {
		u.sdStopping(u.opts.DrainTimeout)
	}
	reported := make(chan struct{})
	go u.reportDrain(p, start.Add(u.opts.DrainTimeout), reported)
	if !final {
		go u.followDrain(p, reported)
	}
	err := u.drainWithin(p, admin)
	close(reported)
	took, cut, passed := time.Since(start), p.cutCount(), p.passedCount()
	if !final {
		u.leaveDrainRecord(took, cut, passed, u.endedAt.Load())
	}
	u.log.Info("drained", "duration", took.Round(time.Millisecond), "cut", cut, "passed", passed)
	u.drainSt.end(took, cut)
	if standDone != nil && !final {
		u.updateDraining(func(g *drainingGen) { g.State, g.Left = "standing by", 0 })
	}
	if final && u.opts.PIDFile != "" {
		u.removePIDFile()
	}
	if standDone != nil {
		<-standDone
	}
	if err != nil {
		return fmt.Errorf("drain: %w", err)
	}
	return nil
}

// standByOrLetGo, after a handover, lets the new generation go free of
// this one: at once, or with a probation once the stand-by is over. It
// returns a channel closed when the stand-by is over, nil without one.
func (u *Upgrader) standByOrLetGo() (standDone chan struct{}) {
	if !u.as().standsBy() {
		u.releaseParentLink()
		return nil
	}
	kept := u.keptSockets()
	u.mu.Lock()
	succ, at := u.successor, u.successorAt
	u.mu.Unlock()
	u.standing.Store(true)
	standDone = make(chan struct{})
	go func() {
		defer close(standDone)
		u.standBy(kept, succ, at)
		u.releaseParentLink()
	}()
	return standDone
}

// drainWithin drains the workers and the admin servers at once, within
// the drain timeout, cut short by a second stop signal (u.force).
func (u *Upgrader) drainWithin(p workers, admin []*pool) error {
	ctx, cancel := context.WithTimeout(context.Background(), u.opts.DrainTimeout)
	defer cancel()
	go func() {
		select {
		case <-u.force:
			cancel()
		case <-ctx.Done():
		}
	}()
	var wg sync.WaitGroup
	for _, a := range admin {
		wg.Go(func() {
			if err := a.drain(ctx); err != nil {
				u.log.Warn("admin server drain", "err", err)
			}
		})
	}
	err := p.drain(ctx)
	wg.Wait()
	return err
}

// removePIDFile removes the PID file on a final stop, if it still names
// this process.
func (u *Upgrader) removePIDFile() {
	pids, err := readPIDFile(u.opts.PIDFile)
	if err == nil && len(pids) == 1 && pids[0] == os.Getpid() {
		os.Remove(u.opts.PIDFile)
	}
}

// addReadyActor adds to g an actor that calls mark once every channel of
// readies is closed. If that takes longer than slowAfter (when positive),
// it calls slow once meanwhile: a new generation that the previous one
// will kill at the upgrade timeout says first what it is waiting for.
func addReadyActor(g *run.Group, mark func() error, slowAfter time.Duration, slow func(), readies ...<-chan struct{}) {
	done := make(chan struct{})
	g.Add(func() error {
		var slowC <-chan time.Time
		if slowAfter > 0 {
			t := time.NewTimer(slowAfter)
			defer t.Stop()
			slowC = t.C
		}
		for _, ready := range readies {
			for waiting := true; waiting; {
				select {
				case <-ready:
					waiting = false
				case <-slowC:
					slow()
					slowC = nil
				case <-done:
					return nil
				}
			}
		}
		if err := mark(); err != nil {
			return err
		}
		<-done
		return nil
	}, func(error) { close(done) })
}

// slowStart logs, for a generation not ready after the given time, which
// of its workers it still waits for.
func (u *Upgrader) slowStart(after time.Duration, p workers) {
	var waiting []string
	for _, w := range p.status() {
		if w.State == "ready" {
			continue
		}
		desc := fmt.Sprintf("worker %d", w.ID)
		if w.PID > 0 {
			desc += fmt.Sprintf(" (pid %d)", w.PID)
		}
		desc += " " + w.State
		if w.LastErr != "" {
			desc += ": " + w.LastErr
		}
		waiting = append(waiting, desc)
	}
	if len(waiting) == 0 {
		waiting = append(waiting, "the metrics listener")
	}
	u.log.Warn("not ready yet", "after", after, "upgrade_timeout", u.opts.UpgradeTimeout, "waiting_for", strings.Join(waiting, "; "))
}

// addSignalActor adds to g an actor that passes the signals of sets to
// handle.
func addSignalActor(g *run.Group, handle func(os.Signal), sigs *signalSet) {
	done := make(chan struct{})
	g.Add(func() error {
		for {
			select {
			case sig := <-sigs.c:
				handle(sig)
			case <-done:
				return nil
			}
		}
	}, func(error) {
		sigs.stop()
		close(done)
	})
}

// addContextActor adds to g an actor that stops u when ctx is done.
func (u *Upgrader) addContextActor(g *run.Group, ctx context.Context) {
	done := make(chan struct{})
	g.Add(func() error {
		select {
		case <-ctx.Done():
			u.log.Info("context done, stopping")
			u.Stop()
		case <-done:
		}
		<-done
		return nil
	}, func(error) { close(done) })
}
