package upgrader

import (
	"maps"
	"os"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Results of an upgrade, the values of the result label of
// handoff_upgrades_total.
const (
	ResultSuccess = "success" // the new generation became ready
	ResultExited  = "exited"  // it exited before it was ready
	ResultTimeout = "timeout" // it was not ready within the upgrade timeout
	ResultError   = "error"   // it could not be started, or another error
)

// Bucket bounds, in seconds, of the duration histograms.
var (
	upgradeBuckets = []float64{0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120}
	drainBuckets   = []float64{0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}
)

// workerStates are always reported by handoff_workers, 0 when no worker
// is in them, so that a dashboard shows every series.
var workerStates = []string{"starting", "ready", "backoff", "draining", "stopped"}

var (
	descGeneration = prometheus.NewDesc("handoff_generation",
		"Generation of the serving process: 1 for the first, one more after every upgrade.", nil, nil)
	descInfo = prometheus.NewDesc("handoff_version_info",
		"Version of the serving generation, as a label; always 1.", []string{"version"}, nil)
	descUpgrades = prometheus.NewDesc("handoff_upgrades_total",
		"Upgrades since the service first started, by result: success, exited, timeout or error.", []string{"result"}, nil)
	descUpgradeDuration = prometheus.NewDesc("handoff_upgrade_duration_seconds",
		"Time from the start of a successful upgrade until the new generation was ready.", nil, nil)
	descDrainDuration = prometheus.NewDesc("handoff_drain_duration_seconds",
		"Time an old generation took to drain after it handed over, reported by its successor once it exited.", nil, nil)
	descConnsCut = prometheus.NewDesc("handoff_drain_connections_cut_total",
		"Connections an old generation still had open at its drain timeout and closed.", nil, nil)
	descWorkers = prometheus.NewDesc("handoff_workers",
		"Workers of the serving generation's pool, by state.", []string{"state"}, nil)
	descRestarts = prometheus.NewDesc("handoff_worker_restarts_total",
		"Restarts of failed workers since the service first started.", nil, nil)
	descRolledBack = prometheus.NewDesc("handoff_workers_rolled_back",
		"1 if the serving generation's worker processes crash-looped after its upgrade and now run the previous build, else 0.", nil, nil)
	descDraining = prometheus.NewDesc("handoff_draining_generations",
		"Old generations still draining beside the serving one (at most --max-draining).", nil, nil)
	descDrainingEnded = prometheus.NewDesc("handoff_draining_ended_total",
		"Draining generations ended at once, their connections cut, because an upgrade went past --max-draining.", nil, nil)
)

// stats are the service's counters since its first start. Counters that
// lived only in a process would be lost at every upgrade, which is when
// they change, so each generation inherits them in the state file and
// passes them on.
type stats struct {
	Upgrades       map[string]uint64 `json:"upgrades,omitempty"`
	UpgradeSeconds histogram         `json:"upgrade_seconds"`
	DrainSeconds   histogram         `json:"drain_seconds"`
	ConnsCut       uint64            `json:"conns_cut,omitempty"`
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

func (h *histogram) metric(desc *prometheus.Desc, bounds []float64) prometheus.Metric {
	cum := make(map[float64]uint64, len(bounds))
	var n uint64
	for i, b := range bounds {
		if i < len(h.Buckets) {
			n += h.Buckets[i]
		}
		cum[b] = n
	}
	return prometheus.MustNewConstHistogram(desc, h.Count, h.Sum, cum)
}

// drainRecord is what an old generation leaves in the state file after its
// drain, for its successor to count once it has exited.
type drainRecord struct {
	PID      int           `json:"pid"`
	Duration time.Duration `json:"duration_ns"`
	Cut      uint64        `json:"cut,omitempty"`
	// Ended: the drain was cut short over --max-draining (overlap.go).
	Ended bool `json:"ended,omitempty"`
}

// collector reports an Upgrader's metrics at every scrape.
type collector struct{ u *Upgrader }

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descGeneration, descInfo, descUpgrades, descUpgradeDuration,
		descDrainDuration, descConnsCut, descWorkers, descRestarts, descRolledBack, descDraining, descDrainingEnded} {
		ch <- d
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	u := c.u
	u.absorbDrains()
	draining := len(u.liveDraining())
	u.mu.Lock()
	st := u.stats.clone()
	p := u.pool
	u.mu.Unlock()
	ch <- prometheus.MustNewConstMetric(descGeneration, prometheus.GaugeValue, float64(u.gen))
	ch <- prometheus.MustNewConstMetric(descInfo, prometheus.GaugeValue, 1, u.opts.Version)
	for _, r := range []string{ResultSuccess, ResultExited, ResultTimeout, ResultError} {
		ch <- prometheus.MustNewConstMetric(descUpgrades, prometheus.CounterValue, float64(st.Upgrades[r]), r)
	}
	ch <- st.UpgradeSeconds.metric(descUpgradeDuration, upgradeBuckets)
	ch <- st.DrainSeconds.metric(descDrainDuration, drainBuckets)
	ch <- prometheus.MustNewConstMetric(descConnsCut, prometheus.CounterValue, float64(st.ConnsCut))
	byState := make(map[string]int)
	for _, s := range workerStates {
		byState[s] = 0
	}
	restarts := st.WorkerRestarts
	if p != nil {
		for _, w := range p.status() {
			byState[w.State]++
			restarts += uint64(w.Restarts)
		}
	}
	for _, s := range slices.Sorted(maps.Keys(byState)) {
		ch <- prometheus.MustNewConstMetric(descWorkers, prometheus.GaugeValue, float64(byState[s]), s)
	}
	ch <- prometheus.MustNewConstMetric(descRestarts, prometheus.CounterValue, float64(restarts))
	rolledBack := 0.0
	if rollbackOf(p) != "" {
		rolledBack = 1
	}
	ch <- prometheus.MustNewConstMetric(descRolledBack, prometheus.GaugeValue, rolledBack)
	ch <- prometheus.MustNewConstMetric(descDraining, prometheus.GaugeValue, float64(draining))
	ch <- prometheus.MustNewConstMetric(descDrainingEnded, prometheus.CounterValue, float64(st.DrainingEnded))
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
	u.stats.countUpgrade(ResultSuccess)
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
	if r.Ended {
		u.stats.DrainingEnded++
	}
}

// leaveDrainRecord tells the serving generation, through the state file,
// how this one's drain went.
func (u *Upgrader) leaveDrainRecord(took time.Duration, cut int64, ended bool) {
	err := u.state.update(func(st *genState) {
		st.Drains = append(st.Drains, drainRecord{PID: os.Getpid(), Duration: took, Cut: uint64(cut), Ended: ended})
	})
	if err != nil {
		u.log.Warn("drain not recorded for the metrics of the next generation", "err", err)
	}
}
