package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/gohandoff/handoff/control"
	"github.com/gohandoff/handoff/internal/load"
	"github.com/gohandoff/handoff/internal/verify"
	"github.com/urfave/cli/v2"
)

// upgradeTimeout bounds one upgrade triggered by verify, drain included.
const upgradeTimeout = 2 * time.Minute

// verifyCommand returns the verify command; newApp wraps its Action, so
// every app gets a command of its own.
func verifyCommand() *cli.Command {
	return &cli.Command{
		Name:  "verify",
		Usage: "prove zero downtime on the running service: load it, upgrade it under the load, count every failed request",
		UsageText: "handoff verify --url URL [--pidfile PATH] [--upgrades N] [--concurrency N] [--duration DUR] [--keepalive] [--json]\n\n" +
			"Exits 0 when every request got a 2xx answer and every upgrade succeeded, 1 otherwise.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "url", Usage: "http://HOST:PORT/PATH to load (plain HTTP/1.1)", EnvVars: []string{"HANDOFF_URL"}},
			pidfileFlag(),
			&cli.IntFlag{Name: "upgrades", Usage: "upgrades spread through the load", Value: 5, EnvVars: []string{"HANDOFF_UPGRADES"}},
			&cli.IntFlag{Name: "concurrency", Usage: "clients, each with one request in flight", Value: 200, EnvVars: []string{"HANDOFF_CONCURRENCY"}},
			&cli.DurationFlag{Name: "duration", Usage: "how long to load the service", Value: 30 * time.Second, EnvVars: []string{"HANDOFF_DURATION"}},
			&cli.BoolFlag{Name: "keepalive", Usage: "reuse connections instead of one connection per request", EnvVars: []string{"HANDOFF_KEEPALIVE"}},
			jsonFlag(),
		},
		Action: verifyAction,
	}
}

// verifyTarget checks the --url flag and returns the address and path
// (with its query) to load.
func verifyTarget(raw string) (addr, path string, err error) {
	if raw == "" {
		return "", "", errors.New("flag --url is required")
	}
	u, err := url.Parse(raw)
	if err != nil {
		return "", "", fmt.Errorf("invalid value %q for flag --url: %w", raw, err)
	}
	if u.Scheme != "http" {
		return "", "", fmt.Errorf("invalid value %q for flag --url: want an http:// URL", raw)
	}
	if u.Hostname() == "" {
		return "", "", fmt.Errorf("invalid value %q for flag --url: no host", raw)
	}
	port := u.Port()
	if port == "" {
		port = "80"
	}
	path = u.RequestURI()
	return net.JoinHostPort(u.Hostname(), port), path, nil
}

func verifyAction(c *cli.Context) error {
	addr, path, err := verifyTarget(c.String("url"))
	if err != nil {
		return usageError{err}
	}
	switch n, d := c.Int("concurrency"), c.Duration("duration"); {
	case c.Int("upgrades") < 0 || c.Int("upgrades") > 1000:
		return usageError{fmt.Errorf("invalid value %d for flag --upgrades: want 0 to 1000", c.Int("upgrades"))}
	case n < 1 || n > 100000:
		return usageError{fmt.Errorf("invalid value %d for flag --concurrency: want 1 to 100000", n)}
	case d <= 0:
		return usageError{fmt.Errorf("invalid value %s for flag --duration: must be positive", d)}
	}
	pidfile := c.String("pidfile")
	m, err := control.Do(c.Context, control.SocketPath(pidfile), control.Request{Cmd: control.CmdStatus}, nil)
	if err != nil {
		return fmt.Errorf("no running service to verify: %w", err)
	}
	cfg := verify.Config{
		Load: load.Config{
			Addr:        addr,
			Path:        path,
			Concurrency: c.Int("concurrency"),
			KeepAlive:   c.Bool("keepalive"),
		},
		Duration: c.Duration("duration"),
		Upgrades: c.Int("upgrades"),
		Trigger:  verify.ControlTrigger(pidfile),
	}
	cfg.Trigger = withTimeout(cfg.Trigger, upgradeTimeout)
	if !c.Bool("json") {
		conns := "a new connection per request"
		if cfg.Load.KeepAlive {
			conns = "keep-alive connections"
		}
		fmt.Fprintf(c.App.Writer, "verifying %s: pid %d, generation %d; %d clients on %s for %s, %d upgrades\n",
			c.String("url"), m.Status.PID, m.Status.Generation, cfg.Load.Concurrency, conns, cfg.Duration, cfg.Upgrades)
	}
	rep := verify.Run(c.Context, cfg)
	if c.Bool("json") {
		enc := json.NewEncoder(c.App.Writer)
		enc.SetIndent("", "  ")
		enc.Encode(rep)
	} else {
		printVerdict(c.App.Writer, rep)
	}
	if rep.Failed() {
		return verdictError(rep)
	}
	return nil
}

func withTimeout(t verify.Trigger, d time.Duration) verify.Trigger {
	return func(ctx context.Context) (verify.Upgrade, error) {
		ctx, cancel := context.WithTimeout(ctx, d)
		defer cancel()
		return t(ctx)
	}
}

// printVerdict writes a report a person reads in a few seconds.
func printVerdict(w io.Writer, rep verify.Report) {
	r := rep.Load
	for i, u := range rep.Upgrades {
		fmt.Fprintf(w, "upgrade %d", i+1)
		if u.Err != "" && u.At == 0 {
			fmt.Fprintf(w, ": FAILED: %s\n", u.Err)
			continue
		}
		fmt.Fprintf(w, " at %5.1fs: ", u.At.Seconds())
		if u.Err != "" {
			fmt.Fprintf(w, "FAILED after %d ms: %s\n", u.Ready.Milliseconds(), u.Err)
			continue
		}
		fmt.Fprintf(w, "pid %d → %d, generation %d, ready in %d ms, old generation gone after %d ms",
			u.OldPID, u.NewPID, u.Generation, u.Ready.Milliseconds(), u.Gone.Milliseconds())
		if n, _, p99 := r.Window(u.At, u.At+u.Gone); n > 0 {
			fmt.Fprintf(w, "; meanwhile %d requests, p99 %s", n, fmtDur(p99))
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintf(w, "requests %d, ok %d, failed %d%s\n", r.Requests, r.OK, r.Failed, kinds(r.ByKind))
	fmt.Fprintf(w, "requests/s %.0f, latency p50 %s, p99 %s, max %s", r.RPS(), fmtDur(r.P50), fmtDur(r.P99), fmtDur(r.Max))
	if p99, ok := worstUpgradeP99(rep); ok {
		fmt.Fprintf(w, ", p99 through the upgrades %s", fmtDur(p99))
	}
	fmt.Fprintln(w)
	for _, e := range r.Errors {
		fmt.Fprintf(w, "  %s\n", e)
	}
	if rep.Failed() {
		fmt.Fprintln(w, "FAIL")
		return
	}
	fmt.Fprintf(w, "PASS: no failed request through %d upgrades\n", len(rep.Upgrades))
}

// worstUpgradeP99 is the highest p99 latency of the requests that started
// while an upgrade ran.
func worstUpgradeP99(rep verify.Report) (time.Duration, bool) {
	var worst time.Duration
	found := false
	for _, u := range rep.Upgrades {
		if u.Err != "" {
			continue
		}
		if n, _, p99 := rep.Load.Window(u.At, u.At+u.Gone); n > 0 {
			worst, found = max(worst, p99), true
		}
	}
	return worst, found
}

func kinds(byKind map[string]int64) string {
	if len(byKind) == 0 {
		return ""
	}
	var ks []string
	for k, n := range byKind {
		ks = append(ks, fmt.Sprintf("%s %d", k, n))
	}
	slices.Sort(ks)
	return " (" + strings.Join(ks, ", ") + ")"
}

func fmtDur(d time.Duration) string {
	switch {
	case d >= time.Second:
		return d.Round(time.Millisecond).String()
	case d >= time.Millisecond:
		return d.Round(10 * time.Microsecond).String()
	}
	return d.Round(time.Microsecond).String()
}

func verdictError(rep verify.Report) error {
	failedUps := 0
	for _, u := range rep.Upgrades {
		if u.Err != "" {
			failedUps++
		}
	}
	r := rep.Load
	lost := r.Requests - r.OK
	return fmt.Errorf("verify failed: %d of %d requests failed%s, %d of %d upgrades failed", lost, r.Requests, kinds(r.ByKind), failedUps, len(rep.Upgrades))
}
