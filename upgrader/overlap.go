package upgrader

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/gohandoff/handoff/control"
	"github.com/gohandoff/handoff/internal/proc"
)

// Overlapping generations: an upgrade never waits for older generations to
// finish draining.
//
// tableflip lets a process upgrade only once its parent has exited: the
// child watches a pipe (its fd 4) whose write end the parent holds until
// it dies (tableflip issue #52, wontfix). With long-lived connections the
// parent drains for up to its drain timeout, and every deploy behind the
// first would wait that long. We keep tableflip for what it does well,
// passing the sockets and the ready handshake, and release its rule from
// our side: once the handover is done (the child reported ready) and this
// generation has registered as draining, it puts /dev/null in place of its
// end of that pipe (endParentLink). The child sees its parent "exit" and
// may upgrade again, while this process drains on in the background to its
// own deadline. Ending the link is the parent's choice alone, needs no
// change to tableflip and no cooperation of the child, and the descriptor
// number stays taken (dup'd over, not closed), so tableflip's handle on it,
// which it never closes, cannot close another file later. Without /proc
// (not Linux) the link cannot be found and the old rule holds: an upgrade
// waits until the previous generation has exited.
//
// With a probation the link is ended only when the probation is over: the
// generation standing by is the one a restore brings back, and there is
// exactly one of it (an upgrade asked meanwhile waits for the probation's
// end, not for the drain's).
//
// The draining generations register in the state file that every
// generation shares (genState.Draining): pid, generation, version, work
// left and drain deadline, updated as their work goes down and removed
// when they exit. The serving generation reads them for its status and
// metrics and to enforce Options.MaxDraining, dropping entries whose
// process is gone (killed, it could not remove its own).
//
// Past MaxDraining, two policies: DrainingKillOldest (the default) ends the
// oldest draining generation at once, its connections cut, counted and
// logged: a deploy is never blocked, at the price of the longest-lived
// connections. DrainingRefuse keeps every connection and refuses the
// upgrade instead, naming the generations and the next drain deadline: no
// client is cut, but the deploy has to be asked again later. The cap is
// checked when the old generation starts to drain, so an upgrade that
// fails never ends anything.

// DefaultMaxDraining is Options.MaxDraining's default.
const DefaultMaxDraining = 3

// Policies for Options.MaxDrainingPolicy.
const (
	// DrainingKillOldest ends the oldest draining generation at once when
	// an upgrade would leave more than MaxDraining draining.
	DrainingKillOldest = "kill-oldest"
	// DrainingRefuse refuses such an upgrade: the serving generation goes
	// on serving, every draining one goes on draining.
	DrainingRefuse = "refuse"
)

// ErrTooManyDraining: the upgrade would leave more than MaxDraining
// generations draining, and the policy is DrainingRefuse.
var ErrTooManyDraining = errors.New("upgrader: too many generations draining")

// drainingGen is a draining generation's entry in the state file.
type drainingGen struct {
	PID        int       `json:"pid"`
	Generation int       `json:"generation"`
	Version    string    `json:"version,omitempty"`
	State      string    `json:"state"` // "draining", then "standing by"
	Left       int       `json:"left"`
	Unit       string    `json:"unit,omitempty"`
	Deadline   time.Time `json:"deadline"`
	// Ended is set by the generation that went past MaxDraining: this one
	// must end at once.
	Ended bool `json:"ended,omitempty"`
}

// checkPolicy refuses an unknown MaxDrainingPolicy.
func checkPolicy(p string) error {
	switch p {
	case DrainingKillOldest, DrainingRefuse:
		return nil
	}
	return fmt.Errorf("%w: max draining policy %q: want %s or %s", ErrInvalidOptions, p, DrainingKillOldest, DrainingRefuse)
}

// liveDraining returns the other generations still draining, oldest
// first.
func (u *Upgrader) liveDraining() []drainingGen {
	if u.state == nil {
		return nil
	}
	st, err := u.state.read()
	if err != nil {
		return nil
	}
	var gens []drainingGen
	for _, g := range st.Draining {
		if g.PID != os.Getpid() && proc.Alive(g.PID) {
			gens = append(gens, g)
		}
	}
	slices.SortFunc(gens, func(a, b drainingGen) int { return a.Generation - b.Generation })
	return gens
}

// checkDrainingCap refuses an upgrade under DrainingRefuse when this
// generation, once drained too, would make more than MaxDraining.
func (u *Upgrader) checkDrainingCap() error {
	if u.opts.MaxDrainingPolicy != DrainingRefuse {
		return nil
	}
	gens := u.liveDraining()
	if len(gens)+1 <= u.opts.MaxDraining {
		return nil
	}
	pids := make([]string, len(gens))
	next := gens[0].Deadline
	for i, g := range gens {
		pids[i] = strconv.Itoa(g.PID)
		if g.Deadline.Before(next) {
			next = g.Deadline
		}
	}
	what := "generations"
	if len(gens) == 1 {
		what = "generation"
	}
	return fmt.Errorf("%w: upgrade refused: %d %s still draining (pid %s), the cap is --max-draining %d with policy %s; the next drain deadline is %s (in %s)",
		ErrTooManyDraining, len(gens), what, strings.Join(pids, ", "), u.opts.MaxDraining, DrainingRefuse,
		next.Format(time.TimeOnly), max(time.Until(next), 0).Round(time.Second))
}

// registerDraining adds this generation, which has just handed over, to
// the draining ones, and under DrainingKillOldest marks those past
// MaxDraining, oldest first, to end at once. It returns those it marked.
func (u *Upgrader) registerDraining(deadline time.Time, pr progress) []drainingGen {
	var ended []drainingGen
	self := drainingGen{PID: os.Getpid(), Generation: u.gen, Version: u.opts.Version, State: "draining",
		Left: pr.Left, Unit: pr.Unit, Deadline: deadline}
	err := u.state.update(func(st *genState) {
		var live []drainingGen
		for _, g := range st.Draining {
			if g.PID != self.PID && proc.Alive(g.PID) {
				live = append(live, g)
			}
		}
		slices.SortFunc(live, func(a, b drainingGen) int { return a.Generation - b.Generation })
		// Those already ending go away in any case.
		over := len(live) + 1 - u.opts.MaxDraining
		for _, g := range live {
			if g.Ended {
				over--
			}
		}
		for i := range live {
			if over <= 0 || u.opts.MaxDrainingPolicy != DrainingKillOldest {
				break
			}
			if !live[i].Ended {
				live[i].Ended = true
				ended = append(ended, live[i])
				over--
			}
		}
		st.Draining = append(live, self)
	})
	if err != nil {
		u.log.Warn("cannot register as draining: status and the --max-draining cap do not see this generation", "err", err)
		return nil
	}
	return ended
}

// endOldest ends the generations registerDraining marked: each, told by
// SIGTERM, finds its mark and cuts its drain short (endedAtCap).
func (u *Upgrader) endOldest(ended []drainingGen) {
	for _, g := range ended {
		u.log.Warn("over --max-draining: ending the oldest draining generation at once, its connections cut",
			"max_draining", u.opts.MaxDraining, "ended_pid", g.PID, "ended_generation", g.Generation,
			"cut", g.Left, "unit", g.Unit, "its_deadline", g.Deadline.Format(time.TimeOnly))
		if err := terminate(g.PID); err != nil {
			u.log.Error("cannot end the oldest draining generation", "ended_pid", g.PID, "err", err)
		}
	}
}

// endedAtCap reports whether a newer generation marked this one to end at
// once, over MaxDraining.
func (u *Upgrader) endedAtCap() bool {
	if u.state == nil {
		return false
	}
	st, err := u.state.read()
	if err != nil {
		return false
	}
	for _, g := range st.Draining {
		if g.PID == os.Getpid() {
			return g.Ended
		}
	}
	return false
}

// updateDraining changes this generation's entry with fn.
func (u *Upgrader) updateDraining(fn func(*drainingGen)) {
	err := u.state.update(func(st *genState) {
		for i := range st.Draining {
			if st.Draining[i].PID == os.Getpid() {
				fn(&st.Draining[i])
			}
		}
	})
	if err != nil && !errors.Is(err, os.ErrClosed) {
		u.log.Debug("cannot update the draining entry", "err", err)
	}
}

// unregisterDraining removes this generation from the draining ones, as it
// is about to exit.
func (u *Upgrader) unregisterDraining() {
	err := u.state.update(func(st *genState) {
		st.Draining = slices.DeleteFunc(st.Draining, func(g drainingGen) bool { return g.PID == os.Getpid() })
	})
	if err != nil && !errors.Is(err, os.ErrClosed) {
		u.log.Warn("cannot unregister as draining: the next status drops the entry once this process is gone", "err", err)
	}
}

// followDrain keeps this generation's entry up to date with the work left
// until done is closed.
func (u *Upgrader) followDrain(p workers, done <-chan struct{}) {
	tick := time.NewTicker(drainProgressEvery)
	defer tick.Stop()
	last := -1
	for {
		select {
		case <-done:
			return
		case <-tick.C:
		}
		if pr := p.progress(); pr.Left != last {
			last = pr.Left
			u.updateDraining(func(g *drainingGen) { g.Left, g.Unit = pr.Left, pr.Unit })
		}
	}
}

// releaseParentLink ends tableflip's parent link with the successor, so
// that it may upgrade while this generation drains on (see the top of this
// file). Without it, the successor waits until this process has exited.
func (u *Upgrader) releaseParentLink() {
	u.mu.Lock()
	succ := u.successor
	u.mu.Unlock()
	if succ <= 0 {
		return
	}
	if err := endParentLink(succ); err != nil {
		u.log.Warn("cannot end the parent link: the new generation upgrades only once this one has exited", "new_pid", succ, "err", err)
		return
	}
	u.log.Info("parent link ended: the new generation may upgrade while this one drains", "new_pid", succ)
}

// generations lists every live generation for status: this one first, then
// the draining ones d (oldest first), newest first.
func generations(self control.GenerationStatus, d []drainingGen) []control.GenerationStatus {
	gens := []control.GenerationStatus{self}
	for i := len(d) - 1; i >= 0; i-- {
		g := d[i]
		state := g.State
		if g.Ended {
			state = "ending"
		}
		gens = append(gens, control.GenerationStatus{PID: g.PID, Generation: g.Generation, Version: g.Version,
			State: state, Left: g.Left, Unit: g.Unit, DrainDeadline: g.Deadline})
	}
	return gens
}

// drainingPIDs are the pids of the other generations still draining.
func (u *Upgrader) drainingPIDs() []int {
	var pids []int
	for _, g := range u.liveDraining() {
		pids = append(pids, g.PID)
	}
	return pids
}

// absorbDrains counts, in the serving generation, the drains that old
// generations recorded in the state file, and clears them there.
func (u *Upgrader) absorbDrains() {
	if u.state == nil {
		return
	}
	if p := u.phase.get(); p == phaseDraining || p == phaseStopping {
		return
	}
	var recs []drainRecord
	err := u.state.update(func(st *genState) {
		recs, st.Drains = st.Drains, nil
	})
	if err != nil || len(recs) == 0 {
		return
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	for _, r := range recs {
		u.countDrain(r)
	}
}

// waitLink waits until the previous generation has ended its parent link:
// a moment after its handover, or, with a probation, once the probation is
// over.
func (u *Upgrader) waitLink(ctx context.Context, progress func(step, msg string)) error {
	select {
	case <-u.link:
		return nil
	default:
	}
	if u.opts.Probation > 0 {
		left := max(u.opts.Probation-time.Since(u.readyAt), 0).Round(time.Second)
		progress("wait", fmt.Sprintf("previous generation pid %d stands by for this generation's probation (%s left at most); the upgrade starts once it is over", u.ppid, left))
		u.log.Info("upgrade waits for the previous generation's probation to end", "parent_pid", u.ppid, "left", left)
	}
	select {
	case <-u.link:
		return nil
	case <-u.exit:
		return ErrStopping
	case <-ctx.Done():
		return fmt.Errorf("upgrader: previous generation pid %d has not let go of this one: %w", u.ppid, ctx.Err())
	}
}
