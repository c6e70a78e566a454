package upgrader

import (
	"maps"
	"os"
	"slices"
	"time"
)

// Results of an upgrade, the keys of Stats.Upgrades.
const (
	resultSuccess = "success" // the new generation became ready
	resultExited  = "exited"  // it exited before it was ready
	resultTimeout = "timeout" // it was not ready within the upgrade timeout
	resultError   = "error"   // it could not be started, or another error
)

// Bucket bounds, in seconds, of the duration histograms.
var (
	upgradeBuckets = []float64{0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120}
	drainBuckets   = []float64{0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}
)

// workerStates are always keys of Stats.Workers, 0 when no worker is in
// them, so that a dashboard shows every series.
var workerStates = []string{"starting", "ready", "backoff", "crash-loop", "draining", "stopped"}

// Stats is a snapshot of a generation and of the service's counters since
// it first started (each generation passes them on to the next), for
// integrations such as upgrader/promhandoff, which exports them to
// Prometheus.
type Stats struct {
	Generation int    // 1 for the first, one more after every upgrade
	Version    string // Options.Version
	// Phase is this generation's: starting, ready, upgrading, draining
	// or stopping.
	Phase string
	// Workers counts the pool's workers by state: starting, ready,
	// backoff, crash-loop, draining, stopped (always present, 0 if none)
	// and others a worker process may be in.
	Workers map[string]int
	// WorkerRestarts counts restarts of failed workers since the
	// service first started.
	WorkerRestarts uint64
	// RolledBack: this generation's worker processes crash-looped after
	// its upgrade and now run the previous build.
	RolledBack bool
	// Upgrades counts upgrades by result: success (the new generation
	// became ready), exited (it exited before), timeout (it was not
	// ready within the upgrade timeout) and error (it could not be
	// started); every key is present.
	Upgrades map[string]uint64
	// UpgradeSeconds: time from the start of each successful upgrade
	// until the new generation was ready. DrainSeconds: time each old
	// generation took to drain, counted once it has exited.
	UpgradeSeconds, DrainSeconds Histogram
	// ConnsCut counts connections old generations still had open at
	// their drain timeout and closed.
	ConnsCut uint64
	// ConnsPassed counts keep-alive connections old generations handed
	// to their successor at their drain instead of closing them.
	ConnsPassed uint64
	// Draining counts the old generations still draining beside this
	// one (at most Options.MaxDraining); DrainingEnded counts those ended
	// at once, their connections cut, because an upgrade went past it.
	Draining      int
	DrainingEnded uint64
}

// Histogram is a distribution of durations in seconds: Counts[i] is how
// many were at most Bounds[i] and above the bound before (not cumulated);
// those above every bound count only in Count and Sum.
type Histogram struct {
	Count  uint64
	Sum    float64
	Bounds []float64
	Counts []uint64
}

// Stats returns a snapshot of this generation's counters. Safe to call
// from any goroutine at any time, as a metrics scrape does.
func (u *Upgrader) Stats() Stats {
	u.absorbDrains()
	draining := len(u.liveDraining())
	u.mu.Lock()
	st := u.stats.clone()
	p := u.pool
	u.mu.Unlock()
	s := Stats{
		Generation:     u.gen,
		Version:        u.opts.Version,
		Phase:          u.phase.get().String(),
		Workers:        make(map[string]int, len(workerStates)),
		WorkerRestarts: st.WorkerRestarts,
		Upgrades:       make(map[string]uint64, 4),
		UpgradeSeconds: st.UpgradeSeconds.export(upgradeBuckets),
		DrainSeconds:   st.DrainSeconds.export(drainBuckets),
		ConnsCut:       st.ConnsCut,
		ConnsPassed:    st.ConnsPassed,
		Draining:       draining,
		DrainingEnded:  st.DrainingEnded,
	}
	for _, r := range []string{resultSuccess, resultExited, resultTimeout, resultError} {
		s.Upgrades[r] = st.Upgrades[r]
	}
	for _, state := range workerStates {
		s.Workers[state] = 0
	}
	if p != nil {
		for _, w := range p.status() {
			s.Workers[w.State]++
			s.WorkerRestarts += uint64(w.Restarts)
		}
		s.RolledBack = p.rolledBack() != ""
	}
	return s
}

// stats are the service's counters since its first start. Counters that
// lived only in a process would be lost at every upgrade, which is when
// they change, so each generation inherits them in the state file and
// passes them on.
type stats struct {
	Upgrades       map[string]uint64 `json:"upgrades,omitempty"`
	UpgradeSeconds histogram         `json:"upgrade_seconds"`
	DrainSeconds   histogram         `json:"drain_seconds"`
	ConnsCut       uint64            `json:"conns_cut,omitempty"`
	ConnsPassed    uint64            `json:"conns_passed,omitempty"`
	// WorkerRestarts counts the restarts of the generations before this one.
	WorkerRestarts uint64 `json:"worker_restarts,omitempty"`
	// DrainingEnded counts the draining generations ended over the cap.
	DrainingEnded uint64 `json:"draining_ended,omitempty"`
}

func (s *stats) clone() stats {
	c := *s
	c.Upgrades = maps.Clone(s.Upgrades)
	c.UpgradeSeconds.Buckets = slices.Clone(s.UpgradeSeconds.Buckets)
	c.DrainSeconds.Buckets = slices.Clone(s.DrainSeconds.Buckets)
	return c
}

func (s *stats) countUpgrade(result string) {
	if s.Upgrades == nil {
		s.Upgrades = make(map[string]uint64)
	}
	s.Upgrades[result]++
}

// histogram is a Prometheus histogram that can be carried in JSON: Buckets
// holds the count of each bound of its list, not cumulated.
type histogram struct {
	Count   uint64   `json:"count,omitempty"`
	Sum     float64  `json:"sum,omitempty"`
	Buckets []uint64 `json:"buckets,omitempty"`
}

func (h *histogram) observe(bounds []float64, d time.Duration) {
	if len(h.Buckets) != len(bounds) {
		*h = histogram{Buckets: make([]uint64, len(bounds))}
	}
	v := d.Seconds()
	h.Count++
	h.Sum += v
	for i, b := range bounds {
		if v <= b {
			h.Buckets[i]++
			break
		}
	}
}

func (h *histogram) export(bounds []float64) Histogram {
	e := Histogram{Count: h.Count, Sum: h.Sum, Bounds: slices.Clone(bounds), Counts: make([]uint64, len(bounds))}
	copy(e.Counts, h.Buckets)
	return e
}

// drainRecord is what an old generation leaves in the state file after its
// drain, for its successor to count once it has exited.
type drainRecord struct {
	PID      int           `json:"pid"`
	Duration time.Duration `json:"duration_ns"`
	Cut      uint64        `json:"cut,omitempty"`
	Passed   uint64        `json:"passed,omitempty"`
	// Ended: the drain was cut short over --max-draining (overlap.go).
	Ended bool `json:"ended,omitempty"`
}

// statsToPassLocked returns the stats the next generation inherits: this one's,
// with the restarts of its own workers added.
func (u *Upgrader) statsToPassLocked() *stats {
	st := u.stats.clone()
	if u.pool != nil {
		for _, w := range u.pool.status() {
			st.WorkerRestarts += uint64(w.Restarts)
		}
	}
	return &st
}

// countReadyAfterUpgrade counts the upgrade that started this generation,
// once it is ready.
func (u *Upgrader) countReadyAfterUpgrade(upgradeStart time.Time) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.stats.countUpgrade(resultSuccess)
	if !upgradeStart.IsZero() {
		u.stats.UpgradeSeconds.observe(upgradeBuckets, time.Since(upgradeStart))
	}
}

func (u *Upgrader) countFailedUpgrade(result string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.stats.countUpgrade(result)
}

// countDrain counts an old generation's drain, which it left in the state
// file (absorbDrains); u.mu is held.
func (u *Upgrader) countDrain(r drainRecord) {
	u.stats.DrainSeconds.observe(drainBuckets, r.Duration)
	u.stats.ConnsCut += r.Cut
	u.stats.ConnsPassed += r.Passed
	if r.Ended {
		u.stats.DrainingEnded++
	}
}

// leaveDrainRecord tells the serving generation, through the state file,
// how this one's drain went.
func (u *Upgrader) leaveDrainRecord(took time.Duration, cut, passed int64, ended bool) {
	err := u.state.update(func(st *genState) {
		st.Drains = append(st.Drains, drainRecord{PID: os.Getpid(), Duration: took, Cut: uint64(cut), Passed: uint64(passed), Ended: ended})
	})
	if err != nil {
		u.log.Warn("drain not recorded for the metrics of the next generation", "err", err)
	}
}
