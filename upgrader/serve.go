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
	u.mu.Lock()
	if u.pool != nil {
		u.mu.Unlock()
		return errors.New("upgrader: Serve called twice")
	}
	var gate <-chan struct{}
	if u.HasParent() {
		gate = u.gate
	}
	p := newPool(u.opts.Workers, fn, u.lns, u.pcs, u.log, gate)
	u.pool = p
	u.mu.Unlock()
	p.start()

	var g run.Group
	// The generation ends after an upgrade or a stop: drain, then return.
	{
		g.Add(func() error {
			<-u.exit
			u.closeControl()
			return u.drain(p)
		}, func(error) {
			u.Stop()
		})
	}
	// Ready once every worker is.
	{
		done := make(chan struct{})
		g.Add(func() error {
			select {
			case <-p.readyC:
				if err := u.markReady(); err != nil {
					return err
				}
			case <-done:
				return nil
			}
			<-done
			return nil
		}, func(error) { close(done) })
	}
	// Signals.
	{
		sigc := make(chan os.Signal, 16)
		signal.Notify(sigc, upgradeSignals...)
		signal.Notify(sigc, stopSignals...)
		done := make(chan struct{})
		g.Add(func() error {
			for {
				select {
				case sig := <-sigc:
					u.onSignal(sig)
				case <-done:
					return nil
				}
			}
		}, func(error) {
			signal.Stop(sigc)
			close(done)
		})
	}
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
	// The caller's context.
	{
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
	err := g.Run()
	if err != nil {
		u.log.Error("generation failed", "err", err)
	} else {
		u.log.Info("exited")
	}
	return err
}

func (u *Upgrader) onSignal(sig os.Signal) {
	if isUpgradeSignal(sig) {
		u.log.Info("upgrade requested", "signal", sig.String())
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), u.opts.DrainTimeout+u.opts.UpgradeTimeout)
			defer cancel()
			_, err := u.Upgrade(ctx)
			var ue *UpgradeError
			switch {
			case errors.Is(err, ErrUpgradeInProgress):
				u.log.Warn("upgrade already in progress, signal ignored", "signal", sig.String())
			case err != nil && !errors.As(err, &ue):
				u.log.Warn("upgrade refused, signal ignored", "signal", sig.String(), "err", err)
			}
		}()
		return
	}
	select {
	case <-u.exit:
		u.log.Warn("second stop signal, cutting the drain short", "signal", sig.String())
		u.forceOnce.Do(func() { close(u.force) })
	default:
		u.requestStop("signal", sig.String())
	}
}

// drain runs after this generation stopped accepting work for good.
func (u *Upgrader) drain(p *pool) error {
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
