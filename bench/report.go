//go:build !windows

package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/gohandoff/handoff/internal/verify"
)

// report is everything one `make bench` measured; it is written as JSON
// and as markdown with a picture.
type report struct {
	Started    time.Time         `json:"started"`
	Took       time.Duration     `json:"took_ns"`
	Note       string            `json:"note,omitempty"`
	Notes      []string          `json:"notes,omitempty"`
	Machine    machine           `json:"machine"`
	Config     map[string]any    `json:"config"`
	Tools      map[string]string `json:"tools"`
	Scenarios  []scenario        `json:"scenarios"`
	Contenders []contender       `json:"contenders"`
	Skipped    []skip            `json:"skipped,omitempty"`
	Rounds     int               `json:"rounds"`
	Runs       []runRecord       `json:"runs"`
	Latency    []latencyRecord   `json:"latency"`

	Summary        []summaryRow `json:"summary"`
	LatencySummary []latencyRow `json:"latency_summary"`
	Targets        []targetRow  `json:"targets"`
}

type skip struct {
	Name string `json:"name"`
	Why  string `json:"why"`
}

type machine struct {
	Cores     int    `json:"cores"`
	CPU       string `json:"cpu"`
	MemoryGiB int    `json:"memory_gib"`
	Kernel    string `json:"kernel"`
	Go        string `json:"go"`
	Tools     string `json:"tool_versions"`
	LoadStart string `json:"loadavg_start"`
	LoadEnd   string `json:"loadavg_end"`
}

func machineFacts() machine {
	m := machine{Cores: runtime.NumCPU(), Go: runtime.Version(), LoadStart: loadAvg()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.Lines(string(b)) {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		var kb int
		fmt.Sscanf(string(b), "MemTotal: %d kB", &kb)
		m.MemoryGiB = (kb + 1<<19) >> 20
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = "Linux " + strings.TrimSpace(string(b))
	}
	var tools []string
	for _, t := range []struct{ name, arg, prefix string }{
		{"ab", "-V", "This is ApacheBench, Version "},
		{"wrk", "-v", ""},
		{"node", "--version", ""},
		{"nginx", "-v", "nginx version: "},
	} {
		if _, err := exec.LookPath(t.name); err != nil {
			continue
		}
		out, _ := exec.Command(t.name, t.arg).CombinedOutput()
		line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
		line = strings.TrimPrefix(line, t.prefix)
		if f := strings.Fields(line); t.name == "wrk" && len(f) >= 2 {
			line = f[1]
		} else if t.name == "ab" && len(f) >= 1 {
			line = f[0]
		}
		tools = append(tools, t.name+" "+strings.TrimPrefix(line, t.name+" "))
	}
	m.Tools = strings.Join(tools, ", ")
	return m
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(b))
	return strings.Join(f[:min(3, len(f))], " ")
}

func reportConfig(cfg config) map[string]any {
	return map[string]any{
		"rounds": cfg.rounds, "requests": cfg.requests, "concurrency": cfg.concurrency,
		"upgrades": cfg.upgrades, "latency_upgrades": cfg.latencyUpgrades,
		"keepalive_duration": cfg.keepAliveFor.String(), "tools": cfg.tools,
	}
}

func (r runRecord) line() string {
	if r.Err != "" {
		return "error: " + r.Err
	}
	l := r.Load
	s := fmt.Sprintf("%s: %d ok, %d failed%s, %.0f req/s, p50 %s, p99 %s, rss %d MiB, cpu %s", l.Tool, l.OK, l.Failed, kindsText(l.ByKind),
		l.RPS, fmtMs(l.P50), fmtMs(l.P99), r.PeakRSSKB>>10, r.CPU.Round(10*time.Millisecond))
	if n := len(r.Upgrades); n > 0 {
		bad, notRun := 0, 0
		for _, u := range r.Upgrades {
			switch {
			case u.NotRun:
				notRun++
			case u.Err != "":
				bad++
			}
		}
		s += fmt.Sprintf(", %d upgrades (%d failed, %d not run)", n, bad, notRun)
	}
	if l.Note != "" {
		s += "; " + l.Note
	}
	return s
}

func (lr latencyRecord) line() string {
	if lr.Err != "" {
		return "error: " + lr.Err
	}
	row := summarizeLatency(lr)
	return fmt.Sprintf("ready p50 %s p99 %s max %s; old gone p50 %s p99 %s max %s; %d failed",
		fmtMs(row.ReadyP50), fmtMs(row.ReadyP99), fmtMs(row.ReadyMax), fmtMs(row.GoneP50), fmtMs(row.GoneP99), fmtMs(row.GoneMax), row.Failed)
}

func kindsText(byKind map[string]int64) string {
	if len(byKind) == 0 {
		return ""
	}
	var ks []string
	for _, k := range slices.Sorted(maps.Keys(byKind)) {
		ks = append(ks, fmt.Sprintf("%s %d", k, byKind[k]))
	}
	return " (" + strings.Join(ks, ", ") + ")"
}

func fmtMs(d time.Duration) string {
	ms := float64(d) / float64(time.Millisecond)
	switch {
	case ms >= 100:
		return fmt.Sprintf("%.0f ms", ms)
	case ms >= 10:
		return fmt.Sprintf("%.1f ms", ms)
	}
	return fmt.Sprintf("%.2f ms", ms)
}

// summaryRow is one contender and scenario over every round.
type summaryRow struct {
	Contender string           `json:"contender"`
	Scenario  string           `json:"scenario"`
	Tool      string           `json:"tool"`
	Runs      int              `json:"runs"`
	Errors    int              `json:"runs_with_errors"`
	OK        float64          `json:"completed_median"`
	Failed    int64            `json:"failed_total"`
	PerRun    []int64          `json:"failed_per_run"`
	ByKind    map[string]int64 `json:"failed_by_kind,omitempty"`
	RPS       float64          `json:"rps_median"`
	RPSMin    float64          `json:"rps_min"`
	RPSMax    float64          `json:"rps_max"`
	P50       time.Duration    `json:"p50_median_ns"`
	P99       time.Duration    `json:"p99_median_ns"`
	// Dials is the median of the connections the clients opened, where
	// the tool counts them (0: not counted).
	Dials float64 `json:"dials_median,omitempty"`
	// Redials, for loads with upgrades whose dials are counted: the
	// median over rounds of the dials beyond the contender's own steady
	// load's in the same round, per upgrade done (nil: not counted).
	Redials *float64 `json:"redials_per_upgrade_median,omitempty"`
	// VsBaseline is the median over rounds of this rate over the
	// baseline's steady rate with the same connections in the same round.
	VsBaseline float64 `json:"vs_baseline"`
	// VsSteady, for loads with upgrades: over the contender's own steady
	// rate in the same round.
	VsSteady  float64 `json:"vs_own_steady,omitempty"`
	PeakRSSKB int64   `json:"peak_rss_kb"`
	// CPUPer1k is the median server CPU time per 1000 answers: unlike
	// requests/s, it barely moves when other work shares the machine.
	CPUPer1k time.Duration `json:"server_cpu_per_1k_ns"`
	Upgrades int           `json:"upgrades"`
	UpFailed int           `json:"upgrades_failed"`
	UpNotRun int           `json:"upgrades_not_run"`
}

type latencyRow struct {
	Contender string        `json:"contender"`
	Trigger   string        `json:"trigger"`
	N         int           `json:"upgrades"`
	Failed    int           `json:"failed"`
	ReadyP50  time.Duration `json:"ready_p50_ns"`
	ReadyP99  time.Duration `json:"ready_p99_ns"`
	ReadyMax  time.Duration `json:"ready_max_ns"`
	GoneP50   time.Duration `json:"gone_p50_ns"`
	GoneP99   time.Duration `json:"gone_p99_ns"`
	GoneMax   time.Duration `json:"gone_max_ns"`
	// AnsweredP50: when the requester got its answer, where it differs.
	AnsweredP50 time.Duration `json:"answered_p50_ns,omitempty"`
	PeakRSSKB   int64         `json:"peak_rss_kb"`
	Err         string        `json:"error,omitempty"`
}

type targetRow struct {
	Contender string `json:"contender"`
	Target    string `json:"target"`
	Measured  string `json:"measured"`
	Met       bool   `json:"met"`
}

func (rep *report) find(contender, scenario string, round int) (runRecord, bool) {
	for _, r := range rep.Runs {
		if r.Contender == contender && r.Scenario == scenario && r.Round == round && r.Err == "" {
			return r, true
		}
	}
	return runRecord{}, false
}

func (rep *report) scenario(name string) scenario {
	for _, sc := range rep.Scenarios {
		if sc.Name == name {
			return sc
		}
	}
	return scenario{}
}

// summarize computes the summary rows, the latency rows and the targets.
func (rep *report) summarize() {
	rep.Summary, rep.LatencySummary, rep.Targets = nil, nil, nil
	for _, c := range rep.Contenders {
		for _, sc := range rep.Scenarios {
			row := summaryRow{Contender: c.Name, Scenario: sc.Name, ByKind: map[string]int64{}}
			var oks, rps, vsBase, vsSteady, dials, redials []float64
			var p50s, p99s, cpus []time.Duration
			for _, r := range rep.Runs {
				if r.Contender != c.Name || r.Scenario != sc.Name {
					continue
				}
				row.Runs++
				if r.Err != "" {
					row.Errors++
					continue
				}
				l := r.Load
				row.Tool = l.Tool
				oks, rps = append(oks, float64(l.OK)), append(rps, l.RPS)
				p50s, p99s = append(p50s, l.P50), append(p99s, l.P99)
				if l.Dials > 0 {
					dials = append(dials, float64(l.Dials))
				}
				row.Failed += l.Failed
				row.PerRun = append(row.PerRun, l.Failed)
				for k, v := range l.ByKind {
					row.ByKind[k] += v
				}
				row.PeakRSSKB = max(row.PeakRSSKB, r.PeakRSSKB)
				if l.OK > 0 && r.CPU > 0 {
					cpus = append(cpus, r.CPU*1000/time.Duration(l.OK))
				}
				for _, u := range r.Upgrades {
					row.Upgrades++
					switch {
					case u.NotRun:
						row.UpNotRun++
					case u.Err != "":
						row.UpFailed++
					}
				}
				steadyName := sc.Name
				if sc.Steady != "" {
					steadyName = sc.Steady
				}
				if b, ok := rep.find("baseline", steadyName, r.Round); ok && b.Load.RPS > 0 {
					vsBase = append(vsBase, l.RPS/b.Load.RPS)
				}
				if sc.Steady != "" {
					if s, ok := rep.find(c.Name, sc.Steady, r.Round); ok {
						if s.Load.RPS > 0 {
							vsSteady = append(vsSteady, l.RPS/s.Load.RPS)
						}
						if done := upgradesDone(r.Upgrades); l.Dials > 0 && s.Load.Dials > 0 && done > 0 {
							redials = append(redials, float64(max(l.Dials-s.Load.Dials, 0))/float64(done))
						}
					}
				}
			}
			if row.Runs == 0 {
				continue
			}
			if len(row.ByKind) == 0 {
				row.ByKind = nil
			}
			row.OK, row.RPS = median(oks), median(rps)
			row.RPSMin, row.RPSMax = spread(rps)
			row.P50, row.P99 = medianDur(p50s), medianDur(p99s)
			row.VsBaseline, row.VsSteady = median(vsBase), median(vsSteady)
			row.CPUPer1k = medianDur(cpus)
			row.Dials = median(dials)
			if len(redials) > 0 {
				m := median(redials)
				row.Redials = &m
			}
			rep.Summary = append(rep.Summary, row)
		}
	}
	for _, lr := range rep.Latency {
		rep.LatencySummary = append(rep.LatencySummary, summarizeLatency(lr))
	}
	rep.Targets = rep.targets()
}

func summarizeLatency(lr latencyRecord) latencyRow {
	row := latencyRow{Contender: lr.Contender, Trigger: lr.Trigger, N: len(lr.Upgrades), PeakRSSKB: lr.PeakRSSKB, Err: lr.Err}
	var ready, gone, answered []time.Duration
	for _, u := range lr.Upgrades {
		if u.Err != "" {
			row.Failed++
			continue
		}
		ready, gone = append(ready, u.Ready), append(gone, u.Gone)
		if u.Answered > 0 {
			answered = append(answered, u.Answered)
		}
	}
	row.AnsweredP50 = medianDur(answered)
	row.ReadyP50, row.ReadyP99, row.ReadyMax = durQuantiles(ready)
	row.GoneP50, row.GoneP99, row.GoneMax = durQuantiles(gone)
	return row
}

func (rep *report) row(contender, scenario string) (summaryRow, bool) {
	for _, r := range rep.Summary {
		if r.Contender == contender && r.Scenario == scenario {
			return r, true
		}
	}
	return summaryRow{}, false
}

func (rep *report) latencyRow(contender string) (latencyRow, bool) {
	for _, r := range rep.LatencySummary {
		if r.Contender == contender && r.Err == "" && r.N > r.Failed {
			return r, true
		}
	}
	return latencyRow{}, false
}

// targets checks the handoff contenders against the product's targets.
func (rep *report) targets() []targetRow {
	var out []targetRow
	for _, c := range rep.Contenders {
		if c.Kind == kindRun {
			out = append(out, rep.runTargets(c)...)
			continue
		}
		if c.Kind != kindHandoff {
			continue
		}
		add := func(target, measured string, met bool) {
			out = append(out, targetRow{Contender: c.Name, Target: target, Measured: measured, Met: met})
		}
		var failed int64
		var runs, upFailed, upNotRun int
		var kinds []string
		for _, r := range rep.Summary {
			if r.Contender == c.Name {
				failed += r.Failed
				runs += r.Runs - r.Errors
				upFailed += r.UpFailed
				upNotRun += r.UpNotRun
				if r.Failed > 0 {
					kinds = append(kinds, fmt.Sprintf("%s: %d%s", r.Scenario, r.Failed, kindsText(r.ByKind)))
				}
			}
		}
		m := fmt.Sprintf("%d failed requests in %d runs", failed, runs)
		if len(kinds) > 0 {
			m += " (" + strings.Join(kinds, "; ") + ")"
		}
		if upFailed > 0 {
			m += fmt.Sprintf(", %d failed upgrades", upFailed)
		}
		if upNotRun > 0 {
			m += fmt.Sprintf(", %d upgrades not run (the load ended first)", upNotRun)
		}
		add("zero failed requests in every scenario, keep-alive included", m, failed == 0 && upFailed == 0 && runs > 0)
		if len(c.Args) == 0 { // goroutine mode
			for _, s := range []string{"steady", "steady-ka"} {
				if r, ok := rep.row(c.Name, s); ok && r.VsBaseline > 0 {
					add(fmt.Sprintf("%s: requests/s ≥ 0.97 × baseline", s), fmt.Sprintf("%.3f × baseline (%.0f req/s)", r.VsBaseline, r.RPS), r.VsBaseline >= 0.97)
				}
				// The same target seen through server CPU per request,
				// which a shared machine disturbs much less.
				r, ok1 := rep.row(c.Name, s)
				b, ok2 := rep.row("baseline", s)
				if ok1 && ok2 && r.CPUPer1k > 0 && b.CPUPer1k > 0 {
					ratio := float64(r.CPUPer1k) / float64(b.CPUPer1k)
					add(fmt.Sprintf("%s: server CPU per request ≤ baseline's ÷ 0.97 (the same target, less noisy)", s),
						fmt.Sprintf("%s vs %s per 1k requests = %.3f ×", fmtMs(r.CPUPer1k), fmtMs(b.CPUPer1k), ratio), ratio <= 1/0.97)
				}
			}
		}
		for _, s := range []string{"upgrades", "upgrades-ka"} {
			if r, ok := rep.row(c.Name, s); ok && r.VsSteady > 0 {
				add(fmt.Sprintf("%s: requests/s ≥ 0.9 × own steady state", s), fmt.Sprintf("%.3f × own steady (%.0f req/s)", r.VsSteady, r.RPS), r.VsSteady >= 0.9)
			}
		}
		if h, ok := rep.latencyRow(c.Name); ok {
			if t, ok := rep.latencyRow("tableflip"); ok && t.ReadyP50 > 0 {
				ratio := float64(h.ReadyP50) / float64(t.ReadyP50)
				limit := latencyTarget(c)
				add(fmt.Sprintf("upgrade latency p50 ≤ %.1f × tableflip reference", limit), fmt.Sprintf("%s vs %s = %.2f ×", fmtMs(h.ReadyP50), fmtMs(t.ReadyP50), ratio), ratio <= limit)
			}
		}
	}
	return out
}

// latencyTarget is the ready p50 a contender of handoff's must reach, as
// a ratio to the tableflip reference's: at most as slow with goroutine
// workers, 1.5 × when a new master must also start its worker processes.
func latencyTarget(c contender) float64 {
	if slices.Contains(c.Args, "process") {
		return 1.5
	}
	return 1.0
}

// write writes DATE.json, DATE.md and DATE.svg into dir and, if latest,
// copies them to latest.*, the files the README shows.
func (rep *report) write(dir string, latest bool) ([]string, error) {
	rep.summarize()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	stamp := rep.Started.UTC().Format("2006-01-02-1504")
	js, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return nil, err
	}
	svg := rep.picture()
	md := rep.markdown(stamp + ".svg")
	var paths []string
	for _, f := range []struct {
		ext string
		b   []byte
	}{{".json", js}, {".svg", svg}, {".md", md}} {
		p := filepath.Join(dir, stamp+f.ext)
		if err := os.WriteFile(p, f.b, 0o644); err != nil {
			return paths, err
		}
		paths = append(paths, p)
		if !latest {
			continue
		}
		b := f.b
		if f.ext == ".md" {
			b = bytes.ReplaceAll(f.b, []byte("("+stamp+".svg)"), []byte("(latest.svg)"))
		}
		if err := os.WriteFile(filepath.Join(dir, "latest"+f.ext), b, 0o644); err != nil {
			return paths, err
		}
	}
	return paths, nil
}

// rerender reads a report's JSON and writes it again, with the summary,
// markdown and picture of the current code, beside it.
func rerender(path string) ([]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var rep report
	if err := json.Unmarshal(b, &rep); err != nil {
		return nil, fmt.Errorf("read report %s: %w", path, err)
	}
	// latest.* follow only the newest report.
	dated, _ := filepath.Glob(filepath.Join(filepath.Dir(path), "20*.json"))
	slices.Sort(dated)
	latest := len(dated) == 0 || filepath.Base(dated[len(dated)-1]) == filepath.Base(path)
	return rep.write(filepath.Dir(path), latest)
}

var scenarioShort = map[string]string{
	"steady":      "steady, new conn",
	"upgrades":    "upgrades, new conn (seed's test)",
	"steady-ka":   "steady, keep-alive",
	"upgrades-ka": "upgrades, keep-alive",
}

func (rep *report) markdown(svgName string) []byte {
	var b bytes.Buffer
	p := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	m := rep.Machine
	p("# handoff benchmark, %s\n\n", rep.Started.UTC().Format("2006-01-02 15:04 UTC"))
	p("Machine: %d cores (%s), %d GiB, %s, %s; %s. Load average %s at the start, %s at the end. Took %s.\n\n",
		m.Cores, m.CPU, m.MemoryGiB, m.Kernel, m.Go, m.Tools, m.LoadStart, m.LoadEnd, rep.Took.Round(time.Second))
	if rep.Note != "" {
		p("**Note:** %s\n\n", rep.Note)
	}
	p("Method: %d round(s); each round starts every contender afresh and, for each kind of connection, runs on each contender in turn (in an order rotated by one each round) its steady load then its load with upgrades. Figures are medians over the rounds; the spread is the lowest–highest requests/s. Ratios are taken within a round, against the baseline's steady state with the same connections, or the contender's own, then their median is quoted. Server CPU is the user+system time of the contender's processes during the load, per 1000 answers: it moves much less than requests/s when other work shares the machine. Every failure counts: connect, read (connection closed or reset before a whole answer), write, timeout, non-2xx.\n\n", rep.Rounds)
	p("Loads: %v clients. A connection per request: %s. Keep-alive: %s.\n\n", rep.Config["concurrency"], toolText(rep, false), toolText(rep, true))
	for _, s := range rep.Skipped {
		p("- skipped **%s**: %s\n", s.Name, s.Why)
	}
	for _, n := range rep.Notes {
		p("- %s\n", n)
	}
	if len(rep.Skipped)+len(rep.Notes) > 0 {
		p("\n")
	}

	if len(rep.Targets) > 0 {
		p("## Targets\n\n| contender | target | measured | |\n|---|---|---|---|\n")
		for _, t := range rep.Targets {
			verdict := "met"
			if !t.Met {
				verdict = "**missed**"
			}
			p("| %s | %s | %s | %s |\n", t.Contender, t.Target, t.Measured, verdict)
		}
		p("\n")
	}

	p("## Under load\n\n| contender | load | completed | failed (by kind) | req/s (spread) | × baseline | × own steady | p50 | p99 | server CPU per 1k req | peak RSS | dials |\n|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, r := range rep.Summary {
		failed := fmt.Sprintf("%d%s", r.Failed, kindsText(r.ByKind))
		if r.Runs > 1 && r.Failed > 0 {
			failed += fmt.Sprintf(" [per run %v]", r.PerRun)
		}
		if r.UpFailed > 0 {
			failed += fmt.Sprintf("; %d of %d upgrades failed", r.UpFailed, r.Upgrades)
		}
		if r.UpNotRun > 0 {
			failed += fmt.Sprintf("; %d of %d upgrades not run (the load ended first)", r.UpNotRun, r.Upgrades)
		}
		if r.Errors > 0 {
			failed += fmt.Sprintf("; %d runs did not run", r.Errors)
		}
		vsSteady := ""
		if r.VsSteady > 0 {
			vsSteady = fmt.Sprintf("%.2f", r.VsSteady)
		}
		dials := "–"
		if r.Dials > 0 {
			dials = fmt.Sprintf("%.0f", r.Dials)
		}
		if r.Redials != nil {
			dials += fmt.Sprintf(" (%.0f per upgrade)", *r.Redials)
		}
		p("| %s | %s | %.0f | %s | %.0f (%.0f–%.0f) | %.2f | %s | %s | %s | %s | %d MiB | %s |\n",
			r.Contender, scenarioShort[r.Scenario], r.OK, failed, r.RPS, r.RPSMin, r.RPSMax, r.VsBaseline, vsSteady, fmtMs(r.P50), fmtMs(r.P99), fmtMs(r.CPUPer1k), r.PeakRSSKB>>10, dials)
	}
	p("\n")

	if len(rep.LatencySummary) > 0 {
		n := rep.Config["latency_upgrades"]
		p("## Upgrade latency (%v upgrades, no load)\n\nFrom the trigger to the new generation ready, and to the old one gone; for handoff also to the control socket's answer (what `handoff reload` waits for).\n\n", n)
		p("| contender | trigger | ready p50 | p99 | max | old gone p50 | p99 | max | answered p50 | failed | peak RSS |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
		for _, r := range rep.LatencySummary {
			if r.Err != "" {
				p("| %s | | error: %s | | | | | | | | |\n", r.Contender, r.Err)
				continue
			}
			answered := "–"
			if r.AnsweredP50 > 0 {
				answered = fmtMs(r.AnsweredP50)
			}
			p("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %d | %d MiB |\n", r.Contender, r.Trigger,
				fmtMs(r.ReadyP50), fmtMs(r.ReadyP99), fmtMs(r.ReadyMax), fmtMs(r.GoneP50), fmtMs(r.GoneP99), fmtMs(r.GoneMax), answered, r.Failed, r.PeakRSSKB>>10)
		}
		p("\n")
	}
	p("## Through the upgrades\n\n![requests/s and p99 latency per second through the upgrades](%s)\n\n", svgName)
	p("Requests/s and p99 latency per second in the seed's test (a connection per request, %v upgrades; the baseline's line is its steady state), from the round with each contender's median rate (ab's per-request timings, failed requests included). Triangles mark the upgrades.\n\n", rep.Config["upgrades"])
	if errs := rep.upgradeErrors(); len(errs) > 0 {
		p("## Upgrades that failed or did not run\n\n")
		for _, e := range errs {
			p("- %s\n", e)
		}
		p("\n")
	}
	p("Raw figures, every run and every upgrade: the .json file beside this one.\n")
	return b.Bytes()
}

func toolText(rep *report, keepAlive bool) string {
	for _, r := range rep.Runs {
		if r.Err == "" && rep.scenario(r.Scenario).KeepAlive == keepAlive {
			return "`" + r.Load.Command + "`"
		}
	}
	if keepAlive {
		return rep.Tools["keep-alive"]
	}
	return rep.Tools["connection per request"]
}

func (rep *report) upgradeErrors() []string {
	var out []string
	for _, r := range rep.Runs {
		for i, u := range r.Upgrades {
			if u.Err != "" {
				out = append(out, fmt.Sprintf("%s, %s, round %d, upgrade %d: %s", r.Contender, r.Scenario, r.Round, i+1, u.Err))
			}
		}
	}
	for _, lr := range rep.Latency {
		for i, u := range lr.Upgrades {
			if u.Err != "" {
				out = append(out, fmt.Sprintf("%s, latency, upgrade %d: %s", lr.Contender, i+1, u.Err))
			}
		}
	}
	return out
}

// medianRun picks, for the picture, the run of contender in scenario whose
// rate is the median one.
func (rep *report) medianRun(contender, scenario string) (runRecord, bool) {
	var runs []runRecord
	for _, r := range rep.Runs {
		if r.Contender == contender && r.Scenario == scenario && r.Err == "" && len(r.Load.Timeline) > 0 {
			runs = append(runs, r)
		}
	}
	if len(runs) == 0 {
		return runRecord{}, false
	}
	slices.SortFunc(runs, func(a, b runRecord) int { return cmpFloat(a.Load.RPS, b.Load.RPS) })
	return runs[(len(runs)-1)/2], true
}

func cmpFloat(a, b float64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// runTargets checks handoff run with the unmodified app against the
// Node.js cluster runner it replaces: zero failed requests, and at least
// 1.3 × its requests/s through reloads, in the same run.
func (rep *report) runTargets(c contender) []targetRow {
	var out []targetRow
	add := func(target, measured string, met bool) {
		out = append(out, targetRow{Contender: c.Name, Target: target, Measured: measured, Met: met})
	}
	var failed int64
	var runs int
	for _, r := range rep.Summary {
		if r.Contender == c.Name {
			failed += r.Failed
			runs += r.Runs - r.Errors
		}
	}
	add("zero failed requests in every scenario", fmt.Sprintf("%d failed requests in %d runs", failed, runs), failed == 0 && runs > 0)
	for _, s := range []string{"upgrades", "upgrades-ka"} {
		r, ok1 := rep.row(c.Name, s)
		n, ok2 := rep.row("node-cluster", s)
		if ok1 && ok2 && n.RPS > 0 {
			ratio := r.RPS / n.RPS
			add(fmt.Sprintf("%s: requests/s ≥ 1.3 × the Node.js cluster runner's", s), fmt.Sprintf("%.0f vs %.0f req/s = %.2f ×", r.RPS, n.RPS, ratio), ratio >= 1.3)
		}
		if ok1 && ok2 && r.CPUPer1k > 0 && n.CPUPer1k > 0 {
			add(fmt.Sprintf("%s: server CPU per request vs the Node.js cluster runner (measured, no target)", s),
				fmt.Sprintf("%s vs %s per 1k requests = %.2f ×", fmtMs(r.CPUPer1k), fmtMs(n.CPUPer1k), float64(r.CPUPer1k)/float64(n.CPUPer1k)), true)
		}
	}
	return out
}

// upgradesDone counts the upgrades of a run that ran and did not fail.
func upgradesDone(ups []verify.Upgrade) int {
	n := 0
	for _, u := range ups {
		if !u.NotRun && u.Err == "" {
			n++
		}
	}
	return n
}
