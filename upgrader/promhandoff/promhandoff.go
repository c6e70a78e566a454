// Package promhandoff exports an Upgrader's Stats to Prometheus: the
// handoff_* series, kept out of package upgrader so that only the
// programs that serve metrics pay for client_golang.
//
//	upg, err := upgrader.New(opts)
//	...
//	reg.MustRegister(promhandoff.NewCollector(upg))
//	upg.ServeAdmin("tcp", "127.0.0.1:9090", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
//
// Counters count since the service first started: each generation passes
// them on to the next. Serve them on a listener of the upgrader
// (ServeAdmin), handed to every new generation like the service's, so
// that scrapes never fail during an upgrade.
package promhandoff

import (
	"maps"
	"slices"

	"github.com/gohandoff/handoff/upgrader"
	"github.com/prometheus/client_golang/prometheus"
)

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
	descConnsPassed = prometheus.NewDesc("handoff_drain_connections_passed_total",
		"Keep-alive connections an old generation handed to its successor at its drain instead of closing them.", nil, nil)
	descWorkers = prometheus.NewDesc("handoff_workers",
		"Workers of the serving generation's pool, by state.", []string{"state"}, nil)
	descRestarts = prometheus.NewDesc("handoff_worker_restarts_total",
		"Restarts of failed workers since the service first started.", nil, nil)
	descDraining = prometheus.NewDesc("handoff_draining_generations",
		"Old generations still draining beside the serving one (at most --max-draining).", nil, nil)
	descDrainingEnded = prometheus.NewDesc("handoff_draining_ended_total",
		"Draining generations ended at once, their connections cut, because an upgrade went past --max-draining.", nil, nil)
	descRolledBack = prometheus.NewDesc("handoff_workers_rolled_back",
		"1 if the serving generation's worker processes crash-looped after its upgrade and now run the previous build, else 0.", nil, nil)
)

// Source is what a collector reads at every scrape; *upgrader.Upgrader is
// one.
type Source interface{ Stats() upgrader.Stats }

// NewCollector returns a collector of src's handoff_* metrics, read from
// src.Stats() at every scrape.
func NewCollector(src Source) prometheus.Collector { return collector{src} }

type collector struct{ src Source }

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descGeneration, descInfo, descUpgrades, descUpgradeDuration,
		descDrainDuration, descConnsCut, descConnsPassed, descWorkers, descRestarts, descRolledBack, descDraining, descDrainingEnded} {
		ch <- d
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	st := c.src.Stats()
	ch <- prometheus.MustNewConstMetric(descGeneration, prometheus.GaugeValue, float64(st.Generation))
	ch <- prometheus.MustNewConstMetric(descInfo, prometheus.GaugeValue, 1, st.Version)
	for _, r := range slices.Sorted(maps.Keys(st.Upgrades)) {
		ch <- prometheus.MustNewConstMetric(descUpgrades, prometheus.CounterValue, float64(st.Upgrades[r]), r)
	}
	ch <- histogram(descUpgradeDuration, st.UpgradeSeconds)
	ch <- histogram(descDrainDuration, st.DrainSeconds)
	ch <- prometheus.MustNewConstMetric(descConnsCut, prometheus.CounterValue, float64(st.ConnsCut))
	ch <- prometheus.MustNewConstMetric(descConnsPassed, prometheus.CounterValue, float64(st.ConnsPassed))
	for _, s := range slices.Sorted(maps.Keys(st.Workers)) {
		ch <- prometheus.MustNewConstMetric(descWorkers, prometheus.GaugeValue, float64(st.Workers[s]), s)
	}
	ch <- prometheus.MustNewConstMetric(descRestarts, prometheus.CounterValue, float64(st.WorkerRestarts))
	rolledBack := 0.0
	if st.RolledBack {
		rolledBack = 1
	}
	ch <- prometheus.MustNewConstMetric(descRolledBack, prometheus.GaugeValue, rolledBack)
	ch <- prometheus.MustNewConstMetric(descDraining, prometheus.GaugeValue, float64(st.Draining))
	ch <- prometheus.MustNewConstMetric(descDrainingEnded, prometheus.CounterValue, float64(st.DrainingEnded))
}

// histogram turns h's counts per bound into Prometheus's cumulated ones.
func histogram(desc *prometheus.Desc, h upgrader.Histogram) prometheus.Metric {
	cum := make(map[float64]uint64, len(h.Bounds))
	var n uint64
	for i, b := range h.Bounds {
		if i < len(h.Counts) {
			n += h.Counts[i]
		}
		cum[b] = n
	}
	return prometheus.MustNewConstHistogram(desc, h.Count, h.Sum, cum)
}
