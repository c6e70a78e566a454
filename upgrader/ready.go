package upgrader

import (
	"context"
	"fmt"
	"maps"
	"os"
	"strings"
	"time"

	"github.com/gohandoff/handoff/internal/proc"
)

// Ready returns a channel closed once this generation is ready: every
// worker serves, the PID file is written and the previous generation was
// told to drain.
func (u *Upgrader) Ready() <-chan struct{} { return u.ready }

// Stop ends this generation gracefully: a running upgrade is abandoned and
// Serve drains the pool and returns. Stop returns once the sockets this
// process must clean up (its unix sockets, unless a new generation took
// them over) are removed. It is safe to call more than once.
func (u *Upgrader) Stop() { u.as().stop() }

// stopMaster is Stop in the master.
func (u *Upgrader) stopMaster() {
	u.mu.Lock()
	if u.ppid != 0 && !u.isReady {
		// tableflip would unlink the unix sockets this new generation
		// inherited, the control socket among them, while the previous
		// generation goes on serving on them: leave them to the OS,
		// which closes them when this process exits.
		u.abortOnce.Do(func() { close(u.abort) })
		u.mu.Unlock()
		return
	}
	u.tf.Stop()
	u.mu.Unlock()
	<-u.tf.Exit()
}

// markReady publishes this generation once its pool is ready.
func (u *Upgrader) markReady() error {
	select {
	case <-u.abort:
		return ErrStopping
	default:
	}
	u.publishWorkers(true)
	if u.opts.PIDFile != "" {
		if err := writePIDFile(u.opts.PIDFile, os.Getpid()); err != nil {
			return err
		}
	}
	if err := u.writeState(time.Time{}); err != nil {
		return err
	}
	// Ordered against Stop: a new generation is either aborted before it
	// told its parent it is ready, or ready.
	u.mu.Lock()
	select {
	case <-u.abort:
		u.mu.Unlock()
		return ErrStopping
	default:
	}
	u.restoreStderr()
	if err := u.tf.Ready(); err != nil {
		u.mu.Unlock()
		return fmt.Errorf("upgrader: report ready to parent pid %d: %w", u.ppid, err)
	}
	u.isReady = true
	u.readyAt = time.Now()
	if from, ok := u.phase.to(phaseReady); !ok {
		// Stopped meanwhile (a first generation's Stop does not abort):
		// the drain's phase stands.
		u.log.Debug("ready while no longer starting: phase kept", "phase", from)
	}
	close(u.ready)
	close(u.gate)
	u.mu.Unlock()
	u.openWorkers()
	if u.ppid != 0 {
		u.countReadyAfterUpgrade(u.upgradeStart)
	}
	u.log.Info("ready", "addrs", strings.Join(u.addrs, ","), "workers", u.opts.Workers, "startup", time.Since(u.started).Round(time.Millisecond))
	u.closeUnusedActivated()
	u.sdReady()
	return nil
}

// writeState tells the next or previous generation who this one is, and
// passes on the service's counters.
func (u *Upgrader) writeState(upgradeStart time.Time) error {
	u.absorbDrains()
	u.mu.Lock()
	st := u.statsToPassLocked()
	conns := maps.Clone(u.connsAddrs)
	u.mu.Unlock()
	return u.state.write(genState{Generation: u.gen, PID: os.Getpid(), Version: u.opts.Version, FirstStart: u.first,
		UpgradeStart: upgradeStart, Stats: st, Conns: conns})
}

// watchParent closes link once the previous generation has ended
// tableflip's parent link, which it does right after its handover (see
// endParentLink), and parent once it has exited, after its drain.
func (u *Upgrader) watchParent() {
	defer close(u.parent)
	err := u.tf.WaitForParent(context.Background())
	close(u.link)
	if err != nil {
		u.log.Warn("previous generation ended its link abnormally", "parent_pid", u.ppid, "err", err)
	}
	if proc.Alive(u.ppid) {
		u.log.Info("previous generation let go of this one: it drains on, and upgrades may start", "parent_pid", u.ppid)
		proc.WaitGone(context.Background(), u.ppid)
	}
	u.log.Info("previous generation exited", "parent_pid", u.ppid)
}
