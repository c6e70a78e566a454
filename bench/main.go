//go:build !windows

// Command bench is `make bench`: it starts each contender on loopback in
// turn (a bare net/http baseline, a cloudflare/tableflip reference, handoff's
// hello, the Node.js cluster pattern and nginx when installed), runs the
// same loads on each, with and without upgrades under load, times 20
// upgrades without load, and writes bench/results/DATE.{md,json,svg}.
//
//	go run ./bench [-rounds 3] [-only handoff,tableflip] [-note "..."]
//
// The contenders live in bench/contenders; the driver's pure parts (tool
// output parsers, statistics, report, picture) have unit tests, and the
// heavy work only runs here, never in go test.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gohandoff/handoff/internal/verify"
)

// config holds the benchmark's knobs; the defaults are the seed's test.
type config struct {
	out, tmp        string
	rounds          int
	requests        int64
	concurrency     int
	upgrades        int
	latencyUpgrades int
	keepAliveFor    time.Duration
	tools           string
	only            []string
	loads           []string
	budget          time.Duration
	note            string
	upgradeTimeout  time.Duration
}

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		var ue usageError
		if errors.As(err, &ue) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

type usageError struct{ error }

func run(args []string, stdout io.Writer) error {
	var cfg config
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.StringVar(&cfg.out, "out", "bench/results", "`folder` for the reports")
	fs.StringVar(&cfg.tmp, "tmp", "bench/tmp", "`folder` for binaries and contenders' files")
	fs.IntVar(&cfg.rounds, "rounds", 3, "rounds over every contender, interleaved; medians are quoted")
	fs.Int64Var(&cfg.requests, "requests", 100000, "requests per load with a connection per request")
	fs.IntVar(&cfg.concurrency, "concurrency", 1000, "concurrent clients")
	fs.IntVar(&cfg.upgrades, "upgrades", 5, "upgrades spread through each load with upgrades")
	fs.IntVar(&cfg.latencyUpgrades, "latency-upgrades", 20, "upgrades timed without load")
	fs.DurationVar(&cfg.keepAliveFor, "keepalive-duration", 4*time.Second, "length of a keep-alive load with wrk (it has no request count)")
	fs.StringVar(&cfg.tools, "tools", "auto", "load generators: auto (ab and wrk when installed) or go (internal/load only)")
	only := fs.String("only", "", "comma-separated contenders to run (baseline is always run)")
	render := fs.String("render", "", "rewrite the report of an earlier run from its `JSON` file instead of running")
	onlyLoads := fs.String("loads", "", "comma-separated loads to run: steady, upgrades, steady-ka, upgrades-ka (default all), or none: only the upgrade latency without load")
	fs.DurationVar(&cfg.budget, "budget", 11*time.Minute, "start no round that the last round's length says would end after this long")
	fs.StringVar(&cfg.note, "note", "", "a line for the report, e.g. that the machine was shared")
	fs.DurationVar(&cfg.upgradeTimeout, "upgrade-timeout", time.Minute, "give up on one upgrade after this long")
	if err := fs.Parse(args); err != nil {
		return usageError{err}
	}
	switch {
	case fs.NArg() > 0:
		return usageError{fmt.Errorf("unexpected argument %q", fs.Arg(0))}
	case cfg.rounds < 1:
		return usageError{fmt.Errorf("invalid value %d for flag -rounds: must be at least 1", cfg.rounds)}
	case cfg.requests < 1:
		return usageError{fmt.Errorf("invalid value %d for flag -requests: must be at least 1", cfg.requests)}
	case cfg.concurrency < 1:
		return usageError{fmt.Errorf("invalid value %d for flag -concurrency: must be at least 1", cfg.concurrency)}
	case cfg.upgrades < 0 || cfg.latencyUpgrades < 0:
		return usageError{errors.New("flags -upgrades and -latency-upgrades must not be negative")}
	case cfg.keepAliveFor <= 0:
		return usageError{fmt.Errorf("invalid value %s for flag -keepalive-duration: must be positive", cfg.keepAliveFor)}
	case cfg.tools != "auto" && cfg.tools != "go":
		return usageError{fmt.Errorf("invalid value %q for flag -tools: want auto or go", cfg.tools)}
	}
	if *only != "" {
		cfg.only = strings.Split(*only, ",")
		for _, n := range cfg.only {
			if !slices.ContainsFunc(contenders, func(c contender) bool { return c.Name == n }) {
				return usageError{fmt.Errorf("invalid value %q for flag -only: no contender %q", *only, n)}
			}
		}
	}
	if *render != "" {
		paths, err := rerender(*render)
		if err != nil {
			return err
		}
		fmt.Fprintln(stdout, "wrote", strings.Join(paths, ", "))
		return nil
	}
	if *onlyLoads == "none" {
		cfg.loads = []string{"none"} // no scenario: no round
	} else if *onlyLoads != "" {
		cfg.loads = strings.Split(*onlyLoads, ",")
		for _, n := range cfg.loads {
			if !slices.ContainsFunc(scenarios(config{}), func(sc scenario) bool { return sc.Name == n }) {
				return usageError{fmt.Errorf("invalid value %q for flag -loads: no load %q", *onlyLoads, n)}
			}
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return bench(ctx, cfg, stdout)
}

// scenario is one load on a contender.
type scenario struct {
	Name      string `json:"name"`
	Title     string `json:"title"`
	KeepAlive bool   `json:"keepalive"`
	Upgrades  int    `json:"upgrades"`
	// Steady names the scenario with the same load and no upgrades.
	Steady string `json:"steady,omitempty"`
}

func scenarios(cfg config) []scenario {
	all := []scenario{
		{Name: "steady", Title: "steady state, a connection per request, no upgrades"},
		{Name: "upgrades", Title: fmt.Sprintf("the seed's test: a connection per request, %d upgrades", cfg.upgrades), Upgrades: cfg.upgrades, Steady: "steady"},
		{Name: "steady-ka", Title: "steady state, keep-alive, no upgrades", KeepAlive: true},
		{Name: "upgrades-ka", Title: fmt.Sprintf("keep-alive, %d upgrades", cfg.upgrades), KeepAlive: true, Upgrades: cfg.upgrades, Steady: "steady-ka"},
	}
	if len(cfg.loads) == 0 {
		return all
	}
	return slices.DeleteFunc(all, func(sc scenario) bool { return !slices.Contains(cfg.loads, sc.Name) })
}

// runRecord is one load on one contender in one round.
type runRecord struct {
	Contender string           `json:"contender"`
	Scenario  string           `json:"scenario"`
	Round     int              `json:"round"`
	Load      loadResult       `json:"load"`
	Upgrades  []verify.Upgrade `json:"upgrades,omitempty"`
	// UpgradeMarks are the upgrades' start times on the load's timeline.
	UpgradeMarks []float64 `json:"upgrade_marks_s,omitempty"`
	PeakRSSKB    int64     `json:"peak_rss_kb"`
	// CPU is the time the contender's processes ran during the load.
	CPU time.Duration `json:"server_cpu_ns"`
	Err string        `json:"error,omitempty"`
}

// latencyRecord is the upgrade latency of one contender without load.
type latencyRecord struct {
	Contender string           `json:"contender"`
	Trigger   string           `json:"trigger"`
	Upgrades  []verify.Upgrade `json:"upgrades"`
	PeakRSSKB int64            `json:"peak_rss_kb"`
	Err       string           `json:"error,omitempty"`
}

func bench(ctx context.Context, cfg config, stdout io.Writer) error {
	began := time.Now()
	logf := func(format string, a ...any) {
		fmt.Fprintf(stdout, "[%5.0fs] %s\n", time.Since(began).Seconds(), fmt.Sprintf(format, a...))
	}
	tmp, err := filepath.Abs(cfg.tmp)
	if err != nil {
		return err
	}
	src, err := filepath.Abs("bench/contenders")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return err
	}
	e := &env{binDir: filepath.Join(tmp, "bin"), srcDir: src, tmp: tmp, log: stdout}
	logf("building the Go contenders into %s", e.binDir)
	if err := buildContenders(ctx, e.binDir); err != nil {
		return err
	}
	rep := &report{Started: began, Note: cfg.note, Machine: machineFacts(), Scenarios: scenarios(cfg), Config: reportConfig(cfg)}
	newConnLoader, kaLoader := pickLoaders(cfg, tmp)
	rep.Tools = map[string]string{"connection per request": newConnLoader.name(), "keep-alive": kaLoader.name()}
	var active []contender
	for _, c := range contenders {
		if len(cfg.only) > 0 && c.Kind != kindBaseline && !slices.Contains(cfg.only, c.Name) {
			continue
		}
		if why := e.available(c); why != "" {
			logf("skipping %s: %s", c.Name, why)
			rep.Skipped = append(rep.Skipped, skip{Name: c.Name, Why: why})
			continue
		}
		active = append(active, c)
		rep.Contenders = append(rep.Contenders, c)
	}
	logf("contenders: %s; loads: %s for a connection per request, %s for keep-alive", names(active), newConnLoader.name(), kaLoader.name())

	if cfg.latencyUpgrades > 0 {
		for _, c := range active {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			lr := runLatency(ctx, e, c, cfg.latencyUpgrades, cfg.upgradeTimeout)
			if lr == nil {
				continue
			}
			rep.Latency = append(rep.Latency, *lr)
			logf("latency %-15s %s", c.Name, lr.line())
		}
	}
	var roundTook time.Duration
	for round := 1; round <= cfg.rounds && len(rep.Scenarios) > 0; round++ {
		if round > 1 && time.Since(began)+roundTook > cfg.budget {
			rep.Notes = append(rep.Notes, fmt.Sprintf("ran %d of %d rounds: another (the last took %s) would have passed the %s budget", round-1, cfg.rounds, roundTook.Round(time.Second), cfg.budget))
			logf("budget: no round %d", round)
			break
		}
		roundStart := time.Now()
		if err := benchRound(ctx, e, cfg, rep, active, round, logf); err != nil {
			return err
		}
		rep.Rounds = round
		roundTook = time.Since(roundStart)
	}
	rep.Took = time.Since(began)
	rep.Machine.LoadEnd = loadAvg()
	paths, err := rep.write(cfg.out, true)
	if err != nil {
		return err
	}
	logf("wrote %s", strings.Join(paths, ", "))
	return nil
}

// benchRound starts every contender and applies each load to each in
// turn: for each kind of connection, every contender's steady load then its
// load with upgrades, the contenders in an order rotated by one each round.
// Loads compared with each other thus run minutes apart at most, and drift
// on a shared machine spreads over every contender.
func benchRound(ctx context.Context, e *env, cfg config, rep *report, active []contender, round int, logf func(string, ...any)) error {
	var ins []*instance
	defer func() {
		for _, in := range ins {
			in.stop()
		}
	}()
	for _, c := range active {
		in, err := e.start(ctx, c)
		if err != nil {
			logf("round %d %s: %v", round, c.Name, err)
			rep.Runs = append(rep.Runs, runRecord{Contender: c.Name, Round: round, Err: err.Error()})
			continue
		}
		ins = append(ins, in)
	}
	if len(ins) == 0 {
		return nil
	}
	k := (round - 1) % len(ins)
	order := slices.Concat(ins[k:], ins[:k])
	newConn, keepAlive := pickLoaders(cfg, e.tmp)
	for _, ka := range []bool{false, true} {
		for _, in := range order {
			for _, sc := range rep.Scenarios {
				if sc.KeepAlive != ka || (sc.Upgrades > 0 && in.trigger == nil) {
					continue
				}
				if ctx.Err() != nil {
					return ctx.Err()
				}
				ld, spec := newConn, loadSpec{Addr: in.addr, Concurrency: cfg.concurrency, Requests: cfg.requests}
				if ka {
					ld, spec.KeepAlive = keepAlive, true
					if ld.name() == toolWrk {
						spec.Requests, spec.Duration = 0, cfg.keepAliveFor
					}
				}
				r := runScenario(ctx, in, sc, ld, spec, cfg.upgradeTimeout)
				r.Round = round
				rep.Runs = append(rep.Runs, r)
				logf("round %d %-15s %-11s %s", round, in.c.Name, sc.Name, r.line())
			}
		}
	}
	return nil
}

func names(cs []contender) string {
	var n []string
	for _, c := range cs {
		n = append(n, c.Name)
	}
	return strings.Join(n, ", ")
}

// pickLoaders: ab for a connection per request and wrk for keep-alive when
// installed, else the built-in generator.
func pickLoaders(cfg config, tmp string) (newConn, keepAlive loader) {
	newConn, keepAlive = goLoader{}, goLoader{}
	if cfg.tools == "go" {
		return
	}
	if _, err := exec.LookPath("ab"); err == nil {
		newConn = abLoader{dir: tmp}
	}
	if _, err := exec.LookPath("wrk"); err == nil {
		keepAlive = wrkLoader{}
	}
	return
}

// buildContenders builds hello and the Go contenders. hello is built
// with -tags nometrics: without Prometheus, as the tableflip reference,
// so that both start the same program (Prometheus's package inits would
// add to every upgrade's time to ready).
func buildContenders(ctx context.Context, dir string) error {
	for _, b := range []struct{ out, pkg, tags string }{
		{"hello", "./examples/hello", "nometrics"},
		{"handoff", "./cmd/handoff", ""},
		{"baseline", "./bench/contenders/baseline", ""},
		{"tableflip", "./bench/contenders/tableflip", ""},
	} {
		cmd := exec.CommandContext(ctx, "go", "build", "-tags", b.tags, "-ldflags", "-X main.version=bench", "-o", filepath.Join(dir, b.out), b.pkg)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("build %s: %w\n%s", b.pkg, err, out)
		}
	}
	return nil
}

// runScenario applies one load to in, driving upgrades through it.
func runScenario(ctx context.Context, in *instance, sc scenario, ld loader, spec loadSpec, upgradeTimeout time.Duration) runRecord {
	r := runRecord{Contender: in.c.Name, Scenario: sc.Name}
	endUsage := sampleUsage(in.cmd.Process.Pid)
	var progress atomic.Int64
	done := make(chan struct{})
	var lerr error
	start := time.Now()
	go func() {
		defer close(done)
		r.Load, lerr = ld.run(ctx, spec, &progress)
	}()
	if sc.Upgrades > 0 {
		trigger := func(ctx context.Context) (verify.Upgrade, error) {
			ctx, cancel := context.WithTimeout(ctx, upgradeTimeout)
			defer cancel()
			return in.trigger(ctx)
		}
		r.Upgrades = verify.Drive(ctx, start, sc.Upgrades, func() float64 { return float64(progress.Load()) / progressScale }, trigger, done)
	}
	<-done
	u := endUsage()
	r.PeakRSSKB, r.CPU = u.PeakRSSKB, u.CPU
	if lerr != nil {
		r.Err = lerr.Error()
	}
	base := r.Load.timeBase
	if base.IsZero() {
		base = start
	}
	for _, u := range r.Upgrades {
		if u.At > 0 {
			r.UpgradeMarks = append(r.UpgradeMarks, (start.Sub(base) + u.At).Seconds())
		}
	}
	return r
}

// runLatency times n upgrades of a fresh instance of c with no load.
func runLatency(ctx context.Context, e *env, c contender, n int, upgradeTimeout time.Duration) *latencyRecord {
	in, err := e.start(ctx, c)
	if err != nil {
		return &latencyRecord{Contender: c.Name, Err: err.Error()}
	}
	defer in.stop()
	if in.trigger == nil {
		return nil
	}
	lr := &latencyRecord{Contender: c.Name, Trigger: triggerName(c.Kind)}
	endUsage := sampleUsage(in.cmd.Process.Pid)
	for range n {
		tctx, cancel := context.WithTimeout(ctx, upgradeTimeout)
		u, err := in.trigger(tctx)
		cancel()
		if err != nil {
			u.Err = err.Error()
		}
		lr.Upgrades = append(lr.Upgrades, u)
		if in.gap > 0 {
			time.Sleep(in.gap) // idle spacing between upgrades, outside the timings
		}
	}
	lr.PeakRSSKB = endUsage().PeakRSSKB
	return lr
}

func triggerName(kind string) string {
	switch kind {
	case kindTableflip:
		return "SIGHUP; ready = PID file names the new pid"
	case kindHandoff:
		return "control socket (handoff reload); ready = PID file names the new pid"
	case kindRun:
		return "control socket (handoff reload): new master, new workers; ready = PID file names the new pid"
	case kindNode:
		return "SIGUSR2; ready = last replacement worker listening"
	case kindNginx:
		return "nginx -s reload; ready = all new workers forked"
	}
	return ""
}
