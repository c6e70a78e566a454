//go:build !windows

package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/gohandoff/handoff/internal/load"
)

// Load generators.
const (
	toolAB  = "ab"
	toolWrk = "wrk"
	toolGo  = "go" // internal/load
)

// loadSpec is one load to apply.
type loadSpec struct {
	Addr        string
	Concurrency int
	// Requests, for a fixed count, or Duration, for a fixed time.
	Requests  int64
	Duration  time.Duration
	KeepAlive bool
}

// loadResult is what one load measured, whatever the tool.
type loadResult struct {
	Tool     string           `json:"tool"`
	Command  string           `json:"command,omitempty"`
	Requests int64            `json:"requests"`
	OK       int64            `json:"ok"`
	Failed   int64            `json:"failed"`
	ByKind   map[string]int64 `json:"failed_by_kind,omitempty"`
	Duration time.Duration    `json:"duration_ns"`
	RPS      float64          `json:"requests_per_second"`
	P50      time.Duration    `json:"p50_ns"`
	P99      time.Duration    `json:"p99_ns"`
	// Dials counts the connections the clients opened, where the tool
	// tells (internal/load): with keep-alive, one per client plus one per
	// connection the server closed. 0: not counted.
	Dials     int64     `json:"dials,omitempty"`
	Note      string    `json:"note,omitempty"`
	Timeline  []point   `json:"timeline,omitempty"`
	timeBase  time.Time // second 0 of the timeline
	firstErrs []string
}

// point is one second of a load: answers completed and their p99.
type point struct {
	Second int           `json:"second"`
	OK     int64         `json:"ok"`
	P99    time.Duration `json:"p99_ns"`
}

// loader runs one load and reports its progress (fraction done) as it goes.
type loader interface {
	name() string
	run(ctx context.Context, spec loadSpec, progress *atomic.Int64) (loadResult, error)
}

// progressScale turns a fraction into the integer kept in progress.
const progressScale = 1_000_000

// --- built-in Go generator -------------------------------------------------

type goLoader struct{}

func (goLoader) name() string { return toolGo }

func (goLoader) run(ctx context.Context, spec loadSpec, progress *atomic.Int64) (loadResult, error) {
	var completed atomic.Int64
	cfg := load.Config{Addr: spec.Addr, Concurrency: spec.Concurrency, KeepAlive: spec.KeepAlive, Completed: &completed}
	start := time.Now()
	stop := make(chan struct{})
	defer close(stop)
	if spec.Duration > 0 {
		until := make(chan struct{})
		t := time.AfterFunc(spec.Duration, func() { close(until) })
		defer t.Stop()
		cfg.Until, cfg.MaxDuration = until, spec.Duration+time.Minute
	} else {
		cfg.Requests, cfg.MaxDuration = spec.Requests, 5*time.Minute
	}
	go func() {
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			if spec.Duration > 0 {
				progress.Store(int64(progressScale * float64(time.Since(start)) / float64(spec.Duration)))
			} else {
				progress.Store(progressScale * completed.Load() / max(spec.Requests, 1))
			}
		}
	}()
	r := load.Run(ctx, cfg)
	out := loadResult{
		Tool: toolGo, Requests: r.Requests, OK: r.OK, Failed: r.Failed, ByKind: r.ByKind,
		Duration: r.Duration, RPS: r.RPS(), P50: r.P50, P99: r.P99, Dials: r.Dials, timeBase: r.Start, firstErrs: r.Errors,
	}
	out.Command = fmt.Sprintf("internal/load -c %d", spec.Concurrency)
	for i := range r.PerSecond {
		out.Timeline = append(out.Timeline, point{Second: i, OK: r.PerSecond[i], P99: r.P99PerSec[i]})
	}
	return out, nil
}

// --- ab ----------------------------------------------------------------------

type abLoader struct{ dir string }

func (abLoader) name() string { return toolAB }

// abArgs is the seed's test: ab -n N -c C, a connection per request unless
// keep-alive; -r keeps going on receive errors so they are counted rather
// than ending the run; -g writes every request's timing for the timeline.
func abArgs(spec loadSpec, gnuplot string) []string {
	args := []string{"-r", "-n", strconv.FormatInt(spec.Requests, 10), "-c", strconv.Itoa(spec.Concurrency), "-s", "30", "-g", gnuplot}
	if spec.KeepAlive {
		args = append(args, "-k")
	}
	return append(args, "http://"+spec.Addr+"/")
}

func (l abLoader) run(ctx context.Context, spec loadSpec, progress *atomic.Int64) (loadResult, error) {
	if spec.Requests <= 0 {
		return loadResult{}, errors.New("ab needs a request count")
	}
	gp := filepath.Join(l.dir, "ab-timings.tsv")
	defer os.Remove(gp)
	cmd := exec.CommandContext(ctx, "ab", abArgs(spec, gp)...)
	var stdout bytes.Buffer
	cmd.Stdout = &stdout
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return loadResult{}, err
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return loadResult{}, fmt.Errorf("start ab: %w", err)
	}
	var lastErr string
	sc := bufio.NewScanner(stderr)
	for sc.Scan() {
		line := sc.Text()
		if n, ok := abHeartbeat(line); ok {
			progress.Store(progressScale * n / spec.Requests)
		} else if strings.TrimSpace(line) != "" {
			lastErr = line
		}
	}
	waitErr := cmd.Wait()
	dur := time.Since(start)
	r, perr := parseAB(stdout.String())
	r.Tool, r.Command = toolAB, "ab "+strings.Join(abArgs(spec, "FILE"), " ")
	if perr != nil || waitErr != nil {
		// ab gives up after repeated connect errors or a timeout: what it
		// did not send is counted as failed, not hidden.
		done := r.OK + r.Failed
		left := spec.Requests - done
		if left > 0 {
			if r.ByKind == nil {
				r.ByKind = map[string]int64{}
			}
			r.ByKind["aborted"] += left
			r.Failed += left
			r.Requests = spec.Requests
		}
		r.Note = fmt.Sprintf("ab aborted (%v): %s", waitErr, lastErr)
		if r.Duration == 0 {
			r.Duration = dur
		}
	}
	if f, err := os.Open(gp); err == nil {
		r.Timeline, r.timeBase = abTimeline(f, start)
		f.Close()
	}
	return r, nil
}

var abHeartbeatRe = regexp.MustCompile(`^Completed (\d+) requests$`)

func abHeartbeat(line string) (int64, bool) {
	m := abHeartbeatRe.FindStringSubmatch(strings.TrimSpace(line))
	if m == nil {
		return 0, false
	}
	n, err := strconv.ParseInt(m[1], 10, 64)
	return n, err == nil
}

// parseAB reads ab's summary. ab counts a request cut by the server
// (connection closed or reset before a whole answer) as a "Length"
// failure, and a reset also as a "Receive" failure, so Receive is not added
// again; connect failures are retried by ab and each counts as a failed
// attempt.
// setFailures keeps the failure kinds that occurred and adds them up.
func (r *loadResult) setFailures(kinds map[string]int64) {
	for k, v := range kinds {
		if v == 0 {
			delete(kinds, k)
			continue
		}
		r.Failed += v
	}
	r.ByKind = kinds
}

func parseAB(out string) (loadResult, error) {
	var r loadResult
	field := func(name string) (string, bool) {
		re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + `:\s+(.+)$`)
		m := re.FindStringSubmatch(out)
		if m == nil {
			return "", false
		}
		return strings.TrimSpace(m[1]), true
	}
	complete, ok := field("Complete requests")
	if !ok {
		return r, errors.New("ab printed no summary")
	}
	completeN, _ := strconv.ParseInt(complete, 10, 64)
	kinds := map[string]int64{}
	if m := regexp.MustCompile(`\(Connect: (\d+), Receive: (\d+), Length: (\d+), Exceptions: (\d+)\)`).FindStringSubmatch(out); m != nil {
		n := func(i int) int64 { v, _ := strconv.ParseInt(m[i], 10, 64); return v }
		kinds["connect"], kinds["read"], kinds["exception"] = n(1), n(3), n(4)
	}
	if s, ok := field("Non-2xx responses"); ok {
		kinds["status"], _ = strconv.ParseInt(s, 10, 64)
	}
	r.setFailures(kinds)
	r.OK = max(completeN-kinds["read"]-kinds["status"], 0)
	r.Requests = r.OK + r.Failed
	if s, ok := field("Time taken for tests"); ok {
		secs, _ := strconv.ParseFloat(strings.Fields(s)[0], 64)
		r.Duration = time.Duration(secs * float64(time.Second))
	}
	if r.Duration > 0 {
		r.RPS = float64(r.OK) / r.Duration.Seconds()
	}
	pct := func(p string) time.Duration {
		m := regexp.MustCompile(`(?m)^\s+` + p + `%\s+(\d+)`).FindStringSubmatch(out)
		if m == nil {
			return 0
		}
		ms, _ := strconv.Atoi(m[1])
		return time.Duration(ms) * time.Millisecond
	}
	r.P50, r.P99 = pct("50"), pct("99")
	return r, nil
}

// abTimeline reads ab's -g file (a line per request: its start in whole
// seconds and its total time in ms) into answers and p99 per second.
func abTimeline(rd io.Reader, start time.Time) ([]point, time.Time) {
	base := start.Truncate(time.Second)
	bySec := map[int][]time.Duration{}
	sc := bufio.NewScanner(rd)
	for sc.Scan() {
		f := strings.Split(sc.Text(), "\t")
		if len(f) < 6 {
			continue
		}
		sec, err1 := strconv.ParseInt(f[1], 10, 64)
		ms, err2 := strconv.ParseInt(f[4], 10, 64)
		if err1 != nil || err2 != nil {
			continue // the header
		}
		i := int(sec - base.Unix())
		bySec[i] = append(bySec[i], time.Duration(ms)*time.Millisecond)
	}
	return timelineOf(bySec), base
}

func timelineOf(bySec map[int][]time.Duration) []point {
	var secs []int
	for s := range bySec {
		secs = append(secs, s)
	}
	slices.Sort(secs)
	var out []point
	for _, s := range secs {
		l := bySec[s]
		slices.Sort(l)
		out = append(out, point{Second: s, OK: int64(len(l)), P99: l[len(l)*99/100]})
	}
	return out
}

// --- wrk ---------------------------------------------------------------------

type wrkLoader struct{}

func (wrkLoader) name() string { return toolWrk }

// wrkArgs: two threads (the machine's cores), keep-alive connections, a
// fixed time (wrk has no request count), a 10 s request timeout like the
// Go generator's.
func wrkArgs(spec loadSpec) []string {
	return []string{"-t2", "-c", strconv.Itoa(spec.Concurrency), "-d", fmt.Sprintf("%.0fs", math.Ceil(spec.Duration.Seconds())),
		"--timeout", "10s", "--latency", "http://" + spec.Addr + "/"}
}

func (wrkLoader) run(ctx context.Context, spec loadSpec, progress *atomic.Int64) (loadResult, error) {
	if spec.Duration <= 0 || !spec.KeepAlive {
		return loadResult{}, errors.New("wrk runs keep-alive loads for a duration")
	}
	cmd := exec.CommandContext(ctx, "wrk", wrkArgs(spec)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	opens0, counted := tcpActiveOpens()
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return loadResult{}, fmt.Errorf("start wrk: %w", err)
	}
	done := make(chan struct{})
	go func() {
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
				progress.Store(int64(progressScale * float64(time.Since(start)) / float64(spec.Duration)))
			}
		}
	}()
	err := cmd.Wait()
	close(done)
	if err != nil {
		return loadResult{}, fmt.Errorf("wrk: %w: %s", err, out.String())
	}
	r, err := parseWrk(out.String())
	r.Tool, r.Command = toolWrk, "wrk "+strings.Join(wrkArgs(spec), " ")
	if opens1, ok := tcpActiveOpens(); counted && ok && opens1 > opens0 {
		r.Dials = opens1 - opens0
	}
	return r, err
}

// tcpActiveOpens reads the TCP connections opened by this network
// namespace so far (ActiveOpens of /proc/net/snmp): across a wrk load it
// counts wrk's dials, which wrk does not tell, as nothing else here dials
// TCP meanwhile (upgrades go by signals and unix control sockets).
func tcpActiveOpens() (int64, bool) {
	b, err := os.ReadFile("/proc/net/snmp")
	if err != nil {
		return 0, false
	}
	return parseActiveOpens(string(b))
}

// parseActiveOpens finds ActiveOpens in /proc/net/snmp's text: a "Tcp:"
// line of names, then one of values.
func parseActiveOpens(snmp string) (int64, bool) {
	var names []string
	for line := range strings.Lines(snmp) {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] != "Tcp:" {
			continue
		}
		if names == nil {
			names = f
			continue
		}
		i := slices.Index(names, "ActiveOpens")
		if i < 0 || i >= len(f) {
			return 0, false
		}
		n, err := strconv.ParseInt(f[i], 10, 64)
		return n, err == nil
	}
	return 0, false
}

// parseWrk reads wrk's summary. wrk counts a request on a connection the
// server closed without an answer as a read error.
func parseWrk(out string) (loadResult, error) {
	var r loadResult
	m := regexp.MustCompile(`(\d+) requests in ([\d.]+)(us|ms|s|m)`).FindStringSubmatch(out)
	if m == nil {
		return r, fmt.Errorf("wrk printed no summary: %q", out)
	}
	total, _ := strconv.ParseInt(m[1], 10, 64)
	r.Duration = parseWrkDur(m[2] + m[3])
	kinds := map[string]int64{}
	if m := regexp.MustCompile(`Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)`).FindStringSubmatch(out); m != nil {
		for i, k := range []string{"connect", "read", "write", "timeout"} {
			kinds[k], _ = strconv.ParseInt(m[i+1], 10, 64)
		}
	}
	if m := regexp.MustCompile(`Non-2xx or 3xx responses: (\d+)`).FindStringSubmatch(out); m != nil {
		kinds["status"], _ = strconv.ParseInt(m[1], 10, 64)
	}
	r.setFailures(kinds)
	// wrk's request count holds the non-2xx answers; socket errors are
	// requests that got no answer.
	r.OK = max(total-kinds["status"], 0)
	r.Requests = r.OK + r.Failed
	if r.Duration > 0 {
		r.RPS = float64(r.OK) / r.Duration.Seconds()
	}
	pct := func(p string) time.Duration {
		m := regexp.MustCompile(`(?m)^\s+` + p + `%\s+([\d.]+(?:us|ms|s|m))`).FindStringSubmatch(out)
		if m == nil {
			return 0
		}
		return parseWrkDur(m[1])
	}
	r.P50, r.P99 = pct("50"), pct("99")
	return r, nil
}

func parseWrkDur(s string) time.Duration {
	for _, u := range []struct {
		suffix string
		unit   time.Duration
	}{{"us", time.Microsecond}, {"ms", time.Millisecond}, {"s", time.Second}, {"m", time.Minute}} {
		if v, ok := strings.CutSuffix(s, u.suffix); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				return 0
			}
			return time.Duration(f * float64(u.unit))
		}
	}
	return 0
}
