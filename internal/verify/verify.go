// Package verify proves a zero-downtime claim on a running service: it puts
// load on it with internal/load, triggers upgrades spread through the load,
// and reports every request that failed and what each upgrade took. It is
// the engine of `handoff verify` and of the benchmark.
package verify

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/gohandoff/handoff/control"
	"github.com/gohandoff/handoff/internal/load"
	"github.com/gohandoff/handoff/internal/proc"
)

// Upgrade is what one upgrade took, as the client side saw it.
type Upgrade struct {
	// At is when it was triggered, from the start of the load.
	At time.Duration `json:"at_ns"`
	// Ready is the time from the trigger to the new generation ready;
	// Gone to the old generation's exit (0 when not known).
	Ready time.Duration `json:"ready_ns"`
	Gone  time.Duration `json:"gone_ns,omitempty"`
	// Answered is when whoever asked for the upgrade got the answer, where
	// that is not the moment the new generation was ready.
	Answered time.Duration `json:"answered_ns,omitempty"`
	// OldPID, NewPID and Generation are set where the service tells them.
	OldPID     int    `json:"old_pid,omitempty"`
	NewPID     int    `json:"new_pid,omitempty"`
	Generation int    `json:"generation,omitempty"`
	Err        string `json:"error,omitempty"`
	// NotRun: the load ended before this upgrade's turn came.
	NotRun bool `json:"not_run,omitempty"`
}

// Trigger starts one upgrade and waits until the new generation is ready
// and the old one has exited. It fills in everything but At.
type Trigger func(ctx context.Context) (Upgrade, error)

// Marks returns the points, as fractions of a load, at which n upgrades
// are spread: evenly, with as much steady load before the first as after
// the last.
func Marks(n int) []float64 {
	out := make([]float64, n)
	for i := range out {
		out[i] = float64(i+1) / float64(n+1)
	}
	return out
}

// Drive triggers an upgrade each time progress, the fraction of the load
// done, passes the next of Marks(n), one upgrade at a time, until n are
// done or the load has ended (done closed). It returns every upgrade it
// ran, and a failed one for each it could not start before the end.
func Drive(ctx context.Context, start time.Time, n int, progress func() float64, trigger Trigger, done <-chan struct{}) []Upgrade {
	var ups []Upgrade
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for _, mark := range Marks(n) {
	wait:
		for progress() < mark {
			select {
			case <-tick.C:
			case <-done:
				break wait
			case <-ctx.Done():
				break wait
			}
		}
		if progress() < mark || closed(done) || ctx.Err() != nil {
			ups = append(ups, Upgrade{NotRun: true, Err: fmt.Sprintf("not run: the load ended before this upgrade's mark at %.0f%% of it", 100*mark)})
			continue
		}
		at := time.Since(start)
		u, err := trigger(ctx)
		u.At = at
		if err != nil {
			u.Err = err.Error()
		}
		ups = append(ups, u)
	}
	return ups
}

func closed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// ControlTrigger upgrades the service whose PID file is pidfile through its
// control socket, as `handoff reload` does, then waits for the old
// generation to exit.
func ControlTrigger(pidfile string) Trigger {
	return func(ctx context.Context) (Upgrade, error) {
		t0 := time.Now()
		m, err := control.Do(ctx, control.SocketPath(pidfile), control.Request{Cmd: control.CmdUpgrade}, nil)
		u := Upgrade{Ready: time.Since(t0)}
		if err != nil {
			return u, fmt.Errorf("upgrade through %s: %w", control.SocketPath(pidfile), err)
		}
		if r := m.Upgrade; r != nil {
			u.OldPID, u.NewPID, u.Generation = r.OldPID, r.NewPID, r.Generation
		}
		if err := proc.WaitGone(ctx, u.OldPID); err != nil {
			return u, fmt.Errorf("wait for old generation pid %d to exit: %w", u.OldPID, err)
		}
		u.Gone = time.Since(t0)
		return u, nil
	}
}

// Config describes a verification.
type Config struct {
	// Load is the load to apply. With Duration set, the load runs for
	// that long, or until the last upgrade is over if that is later, and
	// upgrades are spread over time; otherwise it sends Load.Requests and
	// they are spread over the count.
	Load     load.Config
	Duration time.Duration
	Upgrades int
	Trigger  Trigger
}

// Report is what a verification found.
type Report struct {
	Load     load.Result `json:"load"`
	Upgrades []Upgrade   `json:"upgrades"`
}

// Failed reports whether any request or upgrade failed.
func (r Report) Failed() bool {
	if r.Load.Failed > 0 || r.Load.OK != r.Load.Requests {
		return true
	}
	for _, u := range r.Upgrades {
		if u.Err != "" {
			return true
		}
	}
	return false
}

// Run applies the load, drives the upgrades through it and reports.
func Run(ctx context.Context, cfg Config) Report {
	lc := cfg.Load
	var completed atomic.Int64
	lc.Completed = &completed
	var progress func() float64
	start := time.Now()
	driven := make(chan struct{})
	if cfg.Duration > 0 {
		elapsed, until := make(chan struct{}), make(chan struct{})
		t := time.AfterFunc(cfg.Duration, func() { close(elapsed) })
		defer t.Stop()
		go func() {
			<-elapsed
			<-driven
			close(until)
		}()
		lc.Requests, lc.Until = 0, until
		if lc.MaxDuration <= 0 {
			lc.MaxDuration = cfg.Duration + time.Duration(cfg.Upgrades+1)*time.Minute
		}
		progress = func() float64 { return float64(time.Since(start)) / float64(cfg.Duration) }
	} else {
		total := max(lc.Requests, 1)
		progress = func() float64 { return float64(completed.Load()) / float64(total) }
	}
	results := make(chan load.Result, 1)
	loadDone := make(chan struct{})
	go func() {
		defer close(loadDone)
		results <- load.Run(ctx, lc)
	}()
	ups := Drive(ctx, start, cfg.Upgrades, progress, cfg.Trigger, loadDone)
	close(driven)
	res := <-results
	// Express the upgrade moments from the load's own start.
	for i := range ups {
		if ups[i].At > 0 {
			ups[i].At -= res.Start.Sub(start)
		}
	}
	return Report{Load: res, Upgrades: ups}
}
