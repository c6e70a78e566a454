package upgrader

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"time"

	"github.com/oklog/run"
)

// Serve runs this generation: it starts the pool of workers running fn
// over the listeners, reports ready once every worker is ready, then
// upgrades on SIGHUP or a control request, and stops gracefully on SIGTERM,
// SIGINT, a control request or ctx's end. A second SIGTERM or SIGINT cuts
// the drain short. Serve returns once this generation has drained: after a
// successful upgrade, or a stop. The caller then exits.
//
// Create every listener with Listen or ListenPacket before calling Serve.
func (u *Upgrader) Serve(ctx context.Context, fn WorkerFunc) error {
	if u.worker != nil {
		return u.serveWorker(ctx, fn)
	}
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
	u.mu.Unlock()
	if err := p.start(); err != nil {
		return err
	}

	var g run.Group
	// The generation ends after an upgrade or a stop: drain, then return.
	{
		g.Add(func() error {
			<-u.exit()
			u.closeControl()
			return u.drain(p)
		}, func(error) {
			u.Stop()
		})
	}
	// Ready once every worker is.
	addReadyActor(&g, p.ready(), u.markReady)
	addStartFailureActor(&g, p)
	// Signals.
	addSignalActor(&g, u.onSignal, upgradeSignals, rollSignals, stopSignals)
	// Control socket.
	if u.ctlLn != nil {
		done := make(chan struct{})
		g.Add(func() error {
			u.serveControl(done)
			<-done
			return nil
		}, func(error) {
			u.closeControl()
			close(done)
		})
	}
	// Upgrades on changes of watched files.
	if len(u.opts.Watch) > 0 {
		done := make(chan struct{})
		g.Add(func() error {
			return u.watch(done)
		}, func(error) { close(done) })
	}
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

func (u *Upgrader) onSignal(sig os.Signal) {
	if isRollSignal(sig) {
		u.log.Info("rolling restart requested", "signal", sig.String())
		go u.roll(context.Background(), func(string) {}) // logged by roll
		return
	}
	if isUpgradeSignal(sig) {
		u.log.Info("upgrade requested", "signal", sig.String())
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), u.opts.DrainTimeout+u.opts.UpgradeTimeout)
			defer cancel()
			if _, err := u.Upgrade(ctx); err != nil && !errors.Is(err, ErrUpgradeInProgress) {
				return // logged by upgrade
			} else if err != nil {
				u.log.Warn("upgrade already in progress, signal ignored", "signal", sig.String())
			}
		}()
		return
	}
	select {
	case <-u.tf.Exit():
		u.log.Warn("second stop signal, cutting the drain short", "signal", sig.String())
		u.forceOnce.Do(func() { close(u.force) })
	default:
		u.log.Info("stopping", "signal", sig.String())
		u.Stop()
	}
}

// drain runs after this generation stopped accepting work for good.
func (u *Upgrader) drain(p workers) error {
	if u.phase.Load() != "draining" {
		u.phase.Store("stopping")
	}
	start := time.Now()
	u.log.Info("draining", "timeout", u.opts.DrainTimeout)
	ctx, cancel := context.WithTimeout(context.Background(), u.opts.DrainTimeout)
	defer cancel()
	go func() {
		select {
		case <-u.force:
			cancel()
		case <-ctx.Done():
		}
	}()
	err := p.drain(ctx)
	u.log.Info("drained", "duration", time.Since(start).Round(time.Millisecond))
	if u.phase.Load() == "stopping" && u.opts.PIDFile != "" {
		u.removePIDFile()
	}
	if err != nil {
		return fmt.Errorf("drain: %w", err)
	}
	return nil
}

// removePIDFile removes the PID file on a final stop, if it still names
// this process.
func (u *Upgrader) removePIDFile() {
	pids, err := ReadPIDFile(u.opts.PIDFile)
	if err == nil && len(pids) == 1 && pids[0] == os.Getpid() {
		os.Remove(u.opts.PIDFile)
	}
}

// addReadyActor adds to g an actor that calls mark once ready is closed.
func addReadyActor(g *run.Group, ready <-chan struct{}, mark func() error) {
	done := make(chan struct{})
	g.Add(func() error {
		select {
		case <-ready:
			if err := mark(); err != nil {
				return err
			}
		case <-done:
			return nil
		}
		<-done
		return nil
	}, func(error) { close(done) })
}

// addSignalActor adds to g an actor that passes the signals of sets to
// handle.
func addSignalActor(g *run.Group, handle func(os.Signal), sets ...[]os.Signal) {
	sigc := make(chan os.Signal, 16)
	for _, set := range sets {
		signal.Notify(sigc, set...)
	}
	done := make(chan struct{})
	g.Add(func() error {
		for {
			select {
			case sig := <-sigc:
				handle(sig)
			case <-done:
				return nil
			}
		}
	}, func(error) {
		signal.Stop(sigc)
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
