package upgrader

import (
	"slices"
	"time"
)

// restartPolicy says when a supervisor starts a slot's worker again after
// it died, the same for goroutine workers (pool) and worker processes
// (procPool): at once after its first death, or after a worker that stayed
// up for StableAfter; then after a backoff doubling from MinRestartBackoff
// up to MaxRestartBackoff. CrashLoopDeaths deaths within CrashLoopWindow
// are a crash loop.
type restartPolicy struct {
	backoff time.Duration // before the next start after a death
	deaths  []time.Time   // within CrashLoopWindow
}

// died records the death at now of the worker started at started, and
// returns how long to wait before the next start and whether the slot is
// in a crash loop.
func (r *restartPolicy) died(started, now time.Time) (delay time.Duration, crashLoop bool) {
	if now.Sub(started) >= StableAfter {
		r.backoff = 0
	}
	delay = r.backoff
	r.backoff = min(max(2*r.backoff, MinRestartBackoff), MaxRestartBackoff)
	r.deaths = slices.DeleteFunc(append(r.deaths, now), func(t time.Time) bool { return now.Sub(t) > CrashLoopWindow })
	return delay, len(r.deaths) >= CrashLoopDeaths
}

// deathsInWindow is how many deaths the crash-loop window holds.
func (r *restartPolicy) deathsInWindow() int { return len(r.deaths) }
