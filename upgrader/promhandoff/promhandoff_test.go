package promhandoff

import (
	"strconv"
	"testing"

	"github.com/gohandoff/handoff/upgrader"
	"github.com/prometheus/client_golang/prometheus"
)

type fakeSource upgrader.Stats

func (f fakeSource) Stats() upgrader.Stats { return upgrader.Stats(f) }

// The series keep the names and labels dashboards know, and the
// histograms come out cumulated.
func TestCollectorSeries(t *testing.T) {
	t.Parallel()
	src := fakeSource{
		Generation: 3, Version: "b6",
		Workers:        map[string]int{"starting": 0, "ready": 2, "backoff": 0, "draining": 0, "stopped": 0, "crash-loop": 1},
		WorkerRestarts: 7,
		RolledBack:     true,
		Upgrades:       map[string]uint64{"success": 2, "exited": 1, "timeout": 0, "error": 0},
		UpgradeSeconds: upgrader.Histogram{Count: 4, Sum: 303.23, Bounds: []float64{0.05, 0.1, 0.25, 5}, Counts: []uint64{1, 0, 1, 1}},
		DrainSeconds:   upgrader.Histogram{Bounds: []float64{0.01, 1}, Counts: []uint64{0, 0}},
		ConnsCut:       5,
		ConnsPassed:    9,
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(NewCollector(src))
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			key := mf.GetName()
			for _, l := range m.GetLabel() {
				key += "{" + l.GetName() + "=" + l.GetValue() + "}"
			}
			switch {
			case m.GetGauge() != nil:
				got[key] = m.GetGauge().GetValue()
			case m.GetCounter() != nil:
				got[key] = m.GetCounter().GetValue()
			case m.GetHistogram() != nil:
				h := m.GetHistogram()
				got[key+"_count"] = float64(h.GetSampleCount())
				for _, b := range h.GetBucket() {
					got[key+"_bucket"+formatBound(b.GetUpperBound())] = float64(b.GetCumulativeCount())
				}
			}
		}
	}
	want := map[string]float64{
		"handoff_generation":                          3,
		"handoff_version_info{version=b6}":            1,
		"handoff_upgrades_total{result=success}":      2,
		"handoff_upgrades_total{result=exited}":       1,
		"handoff_upgrades_total{result=timeout}":      0,
		"handoff_upgrades_total{result=error}":        0,
		"handoff_upgrade_duration_seconds_count":      4,
		"handoff_upgrade_duration_seconds_bucket0.05": 1,
		"handoff_upgrade_duration_seconds_bucket0.1":  1,
		"handoff_upgrade_duration_seconds_bucket0.25": 2,
		"handoff_upgrade_duration_seconds_bucket5":    3,
		"handoff_drain_duration_seconds_count":        0,
		"handoff_drain_connections_cut_total":         5,
		"handoff_drain_connections_passed_total":      9,
		"handoff_workers{state=ready}":                2,
		"handoff_workers{state=starting}":             0,
		"handoff_workers{state=crash-loop}":           1,
		"handoff_worker_restarts_total":               7,
		"handoff_workers_rolled_back":                 1,
	}
	for k, w := range want {
		if g, ok := got[k]; !ok || g != w {
			t.Errorf("%s = %v (present %v), want %v", k, g, ok, w)
		}
	}
}

func formatBound(b float64) string { return strconv.FormatFloat(b, 'g', -1, 64) }

// A histogram with fewer counts than bounds (a Stats built by hand, or by
// an older generation) is taken as empty past its counts, not a panic.
func TestCollectorShortHistogram(t *testing.T) {
	t.Parallel()
	src := fakeSource{UpgradeSeconds: upgrader.Histogram{Count: 2, Sum: 1, Bounds: []float64{0.5, 1, 5}, Counts: []uint64{2}}}
	reg := prometheus.NewRegistry()
	reg.MustRegister(NewCollector(src))
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "handoff_upgrade_duration_seconds" {
			continue
		}
		var got []uint64
		for _, b := range mf.GetMetric()[0].GetHistogram().GetBucket() {
			got = append(got, b.GetCumulativeCount())
		}
		if len(got) != 3 || got[0] != 2 || got[1] != 2 || got[2] != 2 {
			t.Errorf("buckets %v, want [2 2 2]", got)
		}
		return
	}
	t.Fatal("no upgrade duration histogram")
}
