//go:build !windows

package main

import (
	"bytes"
	"encoding/xml"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gohandoff/handoff/internal/verify"
)

func TestStats(t *testing.T) {
	t.Parallel()
	if got := median([]float64{3, 1, 2}); got != 2 {
		t.Errorf("median odd = %v, want 2", got)
	}
	if got := median([]float64{4, 1, 2, 3}); got != 2.5 {
		t.Errorf("median even = %v, want 2.5", got)
	}
	if lo, hi := spread([]float64{3, 1, 2}); lo != 1 || hi != 3 {
		t.Errorf("spread = %v–%v, want 1–3", lo, hi)
	}
	var ds []time.Duration
	for i := 1; i <= 20; i++ {
		ds = append(ds, time.Duration(i)*time.Millisecond)
	}
	p50, p99, mx := durQuantiles(ds)
	if p50 != 10500*time.Microsecond || p99 != 20*time.Millisecond || mx != 20*time.Millisecond {
		t.Errorf("durQuantiles = %s %s %s, want 10.5ms 20ms 20ms", p50, p99, mx)
	}
}

func TestParseStat(t *testing.T) {
	t.Parallel()
	st, ok := parseStat([]byte("4242 (my (odd) name) S 17 4200 4200 0 -1 4194560 101 0 0 0 250 40 0 0 20 0 3"))
	if !ok || st != (procStat{pid: 4242, ppid: 17, pgid: 4200, cpuTicks: 290}) {
		t.Errorf("parseStat = %+v %v, want pid 4242 ppid 17 pgid 4200 cpu 290", st, ok)
	}
	if _, ok := parseStat([]byte("4243 (zombie) Z 17 4200 4200 0 -1 4194560 101 0 0 0 250 40 0 0 20 0 3")); ok {
		t.Error("parseStat kept a zombie")
	}
}

func TestGroupOf(t *testing.T) {
	t.Parallel()
	procs := []procStat{
		{pid: 10, ppid: 1, pgid: 10},  // the contender
		{pid: 11, ppid: 10, pgid: 10}, // its worker
		{pid: 12, ppid: 10, pgid: 12}, // a child in a group of its own
		{pid: 13, ppid: 12, pgid: 12}, // and its child
		{pid: 20, ppid: 1, pgid: 20},  // someone else
	}
	got := groupOf(procs, 10)
	slices.Sort(got)
	if want := []int{10, 11, 12, 13}; !slices.Equal(got, want) {
		t.Errorf("groupOf = %v, want %v", got, want)
	}
}

func TestParseVmRSS(t *testing.T) {
	t.Parallel()
	if got := parseVmRSS([]byte("Name:\thello\nVmPeak:\t  9000 kB\nVmRSS:\t  1234 kB\n")); got != 1234 {
		t.Errorf("parseVmRSS = %d, want 1234", got)
	}
}

// testReport: baseline at 1000 req/s steady; handoff at 980 steady, 900
// through upgrades; tableflip loses requests; two rounds.
func testReport() *report {
	rep := &report{
		Started:   time.Date(2026, 1, 2, 3, 4, 0, 0, time.UTC),
		Config:    map[string]any{"concurrency": 1000, "upgrades": 5, "latency_upgrades": 2},
		Scenarios: scenarios(config{upgrades: 5}),
		Contenders: []contender{
			{Name: "baseline", Kind: kindBaseline},
			{Name: "tableflip", Kind: kindTableflip},
			{Name: "handoff", Kind: kindHandoff},
		},
		Rounds: 2,
	}
	add := func(c, sc string, round int, rps float64, failed int64) {
		l := loadResult{Tool: toolAB, OK: int64(rps * 10), Failed: failed, RPS: rps, Duration: 10 * time.Second,
			P50: 10 * time.Millisecond, P99: 50 * time.Millisecond, Timeline: []point{{0, 1, time.Millisecond}, {1, int64(rps), 40 * time.Millisecond}, {2, 1, time.Millisecond}}}
		if failed > 0 {
			l.ByKind = map[string]int64{"read": failed}
		}
		r := runRecord{Contender: c, Scenario: sc, Round: round, Load: l, PeakRSSKB: 20 << 10, CPU: time.Duration(rps) * time.Millisecond}
		if c == "handoff" && sc == "steady-ka" {
			r.CPU = r.CPU * 11 / 10 // 10% more CPU per request than the baseline
		}
		if strings.HasPrefix(sc, "upgrades") {
			r.Upgrades = make([]verify.Upgrade, 5)
			r.UpgradeMarks = []float64{1, 2, 3, 4, 5}
		}
		rep.Runs = append(rep.Runs, r)
	}
	for round := 1; round <= 2; round++ {
		k := float64(round) // the second round runs twice as fast
		add("baseline", "steady", round, 1000*k, 0)
		add("baseline", "steady-ka", round, 4000*k, 0)
		add("tableflip", "steady", round, 1000*k, 0)
		add("tableflip", "upgrades", round, 950*k, 300)
		add("handoff", "steady", round, 980*k, 0)
		add("handoff", "upgrades", round, 900*k, 0)
		add("handoff", "steady-ka", round, 3600*k, 0)
		add("handoff", "upgrades-ka", round, 3000*k, 0)
	}
	ups := func(ms ...int) []verify.Upgrade {
		var out []verify.Upgrade
		for _, m := range ms {
			d := time.Duration(m) * time.Millisecond
			out = append(out, verify.Upgrade{Ready: d, Gone: 2 * d})
		}
		return out
	}
	rep.Latency = []latencyRecord{
		{Contender: "tableflip", Upgrades: ups(10, 10)},
		{Contender: "handoff", Upgrades: ups(13, 13)},
	}
	return rep
}

func TestSummarize(t *testing.T) {
	t.Parallel()
	rep := testReport()
	rep.summarize()
	row, ok := rep.row("handoff", "upgrades")
	if !ok {
		t.Fatal("no handoff upgrades row")
	}
	// Ratios are taken within a round, then the median.
	if !near(row.VsBaseline, 0.9) || !near(row.VsSteady, 900.0/980) {
		t.Errorf("handoff upgrades: %.3f × baseline, %.3f × steady; want 0.9 and %.3f", row.VsBaseline, row.VsSteady, 900.0/980)
	}
	if row.RPS != 1350 || row.RPSMin != 900 || row.RPSMax != 1800 {
		t.Errorf("rps median %v spread %v–%v, want 1350, 900–1800", row.RPS, row.RPSMin, row.RPSMax)
	}
	tf, _ := rep.row("tableflip", "upgrades")
	if tf.Failed != 600 || tf.ByKind["read"] != 600 || !slices.Equal(tf.PerRun, []int64{300, 300}) {
		t.Errorf("tableflip failures %d %v %v, want 600 read, 300 per run", tf.Failed, tf.ByKind, tf.PerRun)
	}
	met := map[string]bool{}
	for _, tr := range rep.Targets {
		if tr.Contender != "handoff" {
			t.Errorf("target for %s: only handoff contenders are held to the targets", tr.Contender)
		}
		met[tr.Target] = tr.Met
	}
	want := map[string]bool{
		"zero failed requests in every scenario, keep-alive included":                         true,
		"steady: requests/s ≥ 0.97 × baseline":                                                true,  // 0.98
		"steady-ka: requests/s ≥ 0.97 × baseline":                                             false, // 0.9
		"upgrades: requests/s ≥ 0.9 × own steady state":                                       true,  // 0.918
		"upgrades-ka: requests/s ≥ 0.9 × own steady state":                                    false, // 0.833
		"upgrade latency p50 ≤ 1.0 × tableflip reference":                                     false, // 1.3
		"steady: server CPU per request ≤ baseline's ÷ 0.97 (the same target, less noisy)":    true,
		"steady-ka: server CPU per request ≤ baseline's ÷ 0.97 (the same target, less noisy)": false,
	}
	for k, v := range want {
		got, ok := met[k]
		if !ok || got != v {
			t.Errorf("target %q: met %v (present %v), want %v", k, got, ok, v)
		}
	}
}

func near(a, b float64) bool { return a-b < 1e-9 && b-a < 1e-9 }

func TestMarkdownAndPicture(t *testing.T) {
	t.Parallel()
	rep := testReport()
	rep.Skipped = []skip{{Name: "nginx", Why: "nginx is not installed"}}
	rep.summarize()
	md := string(rep.markdown("x.svg"))
	for _, want := range []string{
		"| tableflip | upgrades, new conn (seed's test) | 14250 | 600 (read 600) [per run [300 300]] | 1425 (950–1900) | 0.95 | 0.95 |",
		"| handoff | upgrade latency p50 ≤ 1.0 × tableflip reference | 13.0 ms vs 10.0 ms = 1.30 × | **missed** |",
		"skipped **nginx**: nginx is not installed",
		"![requests/s and p99 latency per second through the upgrades](x.svg)",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
	svg := rep.picture()
	dec := xml.NewDecoder(bytes.NewReader(svg))
	for {
		if _, err := dec.Token(); err != nil {
			if err.Error() != "EOF" {
				t.Fatalf("picture is not well-formed XML: %v", err)
			}
			break
		}
	}
	// One line per contender in each of the two panels, and a triangle
	// per upgrade mark of the two contenders that upgrade.
	if n := bytes.Count(svg, []byte("<polyline")); n != 6 {
		t.Errorf("%d lines in the picture, want 6", n)
	}
	if n := bytes.Count(svg, []byte("<path d=")); n != 2*5*2 {
		t.Errorf("%d upgrade marks, want 20", n)
	}
}

func TestNiceTicks(t *testing.T) {
	t.Parallel()
	tests := []struct {
		hi   float64
		want []float64
	}{
		{13, []float64{0, 5, 10, 15}},
		{9000, []float64{0, 2000, 4000, 6000, 8000, 10000}},
		{0, []float64{0, 0.2, 0.4, 0.6000000000000001, 0.8, 1}}, // 3 × 0.2
	}
	for _, tt := range tests {
		if got := niceTicks(tt.hi); !slices.Equal(got, tt.want) {
			t.Errorf("niceTicks(%v) = %v, want %v", tt.hi, got, tt.want)
		}
	}
}

// TestSummarizeRedials: the dials beyond the contender's own steady load
// in the same round are counted per upgrade done, and shown beside the
// dials; an upgrade not run does not count.
func TestSummarizeRedials(t *testing.T) {
	t.Parallel()
	rep := testReport()
	for i, r := range rep.Runs {
		switch {
		case r.Contender == "handoff" && r.Scenario == "steady-ka", r.Contender == "handoff" && r.Scenario == "upgrades-ka":
			rep.Runs[i].Load.Dials = 1000
		case r.Contender == "baseline" && r.Scenario == "steady-ka":
			rep.Runs[i].Load.Dials = 1000
		}
	}
	tf := func(sc string, round int, dials int64, ups []verify.Upgrade) {
		rep.Runs = append(rep.Runs, runRecord{Contender: "tableflip", Scenario: sc, Round: round, Upgrades: ups,
			Load: loadResult{Tool: toolWrk, OK: 1000, RPS: 100, Duration: time.Second, Dials: dials}})
	}
	tf("steady-ka", 1, 1000, nil)
	tf("upgrades-ka", 1, 6000, make([]verify.Upgrade, 5))
	tf("steady-ka", 2, 1000, nil)
	tf("upgrades-ka", 2, 5000, append(make([]verify.Upgrade, 4), verify.Upgrade{NotRun: true, Err: "not run"}))
	rep.summarize()
	for _, c := range []struct {
		contender string
		want      float64
	}{{"tableflip", 1000}, {"handoff", 0}} {
		row, ok := rep.row(c.contender, "upgrades-ka")
		if !ok || row.Redials == nil || *row.Redials != c.want {
			t.Errorf("%s upgrades-ka re-dials per upgrade = %v (row %v), want %v", c.contender, row.Redials, ok, c.want)
		}
	}
	if row, _ := rep.row("handoff", "steady-ka"); row.Redials != nil {
		t.Errorf("steady load with re-dials %v, want none counted", *row.Redials)
	}
	if row, _ := rep.row("handoff", "upgrades"); row.Redials != nil {
		t.Errorf("ab load (dials not counted) with re-dials %v, want none", *row.Redials)
	}
	md := string(rep.markdown("x.svg"))
	for _, want := range []string{"| 5500 (1000 per upgrade) |", "| 1000 (0 per upgrade) |"} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q", want)
		}
	}
}
