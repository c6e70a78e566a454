package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"runtime/debug"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/gohandoff/handoff/control"
	"github.com/gohandoff/handoff/internal/proc"
	"github.com/gohandoff/handoff/pidfile"
	"github.com/urfave/cli/v2"
)

// version is stamped at build time with -ldflags "-X main.version=...".
var version = ""

func buildVersion() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}

// usageError marks errors in how the CLI was called (exit code 2).
type usageError struct{ error }

func (e usageError) Unwrap() error { return e.error }

func onUsageError(_ *cli.Context, err error, _ bool) error { return usageError{err} }

// Flags are built for each App: urfave/cli keeps parse state in them.

func pidfileFlag() cli.Flag {
	return &cli.StringFlag{
		Name:    "pidfile",
		Usage:   "PID file of the service; its control socket is next to it",
		EnvVars: []string{"HANDOFF_PIDFILE"},
		Value:   "run/hello.pid",
	}
}

func jsonFlag() cli.Flag {
	return &cli.BoolFlag{Name: "json", Usage: "print JSON for scripts", EnvVars: []string{"HANDOFF_JSON"}}
}

func timeoutFlag() cli.Flag {
	return &cli.DurationFlag{
		Name: "timeout", Usage: "give up waiting after `DUR`", Value: 2 * time.Minute, EnvVars: []string{"HANDOFF_TIMEOUT"},
	}
}

func newApp(stdout, stderr io.Writer) *cli.App {
	app := &cli.App{
		Name:           "handoff",
		Usage:          "zero-downtime reloads for network servers",
		Version:        buildVersion(),
		Writer:         stdout,
		ErrWriter:      stderr,
		OnUsageError:   onUsageError,
		ExitErrHandler: func(*cli.Context, error) {},
		CommandNotFound: func(c *cli.Context, name string) {
			fmt.Fprintf(stderr, "handoff: unknown command %q; see 'handoff --help'\n", name)
		},
		Flags:  logFlags(),
		Before: setupLogging,
		Commands: []*cli.Command{
			{
				Name:      "reload",
				Usage:     "upgrade the service to the binary now on disk and wait until the new generation is ready",
				UsageText: "handoff reload [--pidfile PATH] [--timeout DUR] [--json] [--follow | --no-follow]",
				Description: "Exits 0 once the new generation is ready, non-zero with the reason when it is not (the old\n" +
					"generation then goes on serving). On a terminal, or with --follow, it then shows the old\n" +
					"generation's drain until it is over; elsewhere (scripts, ExecReload=) it returns at ready.\n" +
					"The exit code is decided at ready either way.",
				Flags: []cli.Flag{pidfileFlag(), jsonFlag(), timeoutFlag(), &cli.BoolFlag{
					Name: "follow", Usage: "after ready, follow the old generation's drain until it is over (default on a terminal)",
					EnvVars: []string{"HANDOFF_FOLLOW"},
				}, &cli.BoolFlag{
					Name: "no-follow", Usage: "return once the new generation is ready, even on a terminal",
					EnvVars: []string{"HANDOFF_NO_FOLLOW"},
				}},
				Action: reload,
			},
			{
				Name:      "status",
				Usage:     "show the running generation, its listeners and workers",
				UsageText: "handoff status [--pidfile PATH] [--json]",
				Flags:     []cli.Flag{pidfileFlag(), jsonFlag()},
				Action:    status,
			},
			{
				Name:      "stop",
				Usage:     "stop the service gracefully and wait until it has exited",
				UsageText: "handoff stop [--pidfile PATH] [--timeout DUR]",
				Flags:     []cli.Flag{pidfileFlag(), timeoutFlag()},
				Action:    stop,
			},
			verifyCommand(),
			restartWorkersCommand(),
		},
	}
	for _, c := range app.Commands {
		c.OnUsageError = onUsageError
		action := c.Action
		c.Action = func(c *cli.Context) error {
			if c.NArg() > 0 {
				return usageError{fmt.Errorf("unexpected argument %q", c.Args().First())}
			}
			if c.IsSet("timeout") && c.Duration("timeout") <= 0 {
				return usageError{fmt.Errorf("invalid value %s for flag --timeout: must be positive", c.Duration("timeout"))}
			}
			if c.String("pidfile") == "" {
				return usageError{errors.New("flag --pidfile is empty")}
			}
			return action(c)
		}
	}
	app.Commands = append(app.Commands, runCommand())
	app.Action = func(c *cli.Context) error {
		if c.NArg() > 0 {
			return usageError{fmt.Errorf("unknown command %q", c.Args().First())}
		}
		return cli.ShowAppHelp(c)
	}
	return app
}

func request(c *cli.Context, cmd string, progress func(control.Message)) (control.Message, error) {
	pidfile := c.String("pidfile")
	ctx := c.Context
	if c.IsSet("timeout") || cmd != control.CmdStatus {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.Duration("timeout"))
		defer cancel()
	} else {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
	}
	return control.Do(ctx, control.SocketPath(pidfile), control.Request{Cmd: cmd}, progress)
}

// reload exits 0 once the new generation is ready; on a terminal or with
// --follow it then shows the old generation's drain until it is over (or
// --timeout).
func reload(c *cli.Context) error {
	ctx, cancel := context.WithTimeout(c.Context, c.Duration("timeout"))
	defer cancel()
	v := newReloadView(c.App.Writer, c.App.ErrWriter, c.Bool("json"))
	log := logger(c)
	show := func(m control.Message) {
		log.Debug("control message", "step", m.Step, "final", m.Final, "msg", m.Msg)
		v.show(m)
	}
	req, socket := control.Request{Cmd: control.CmdUpgrade}, control.SocketPath(c.String("pidfile"))
	var m control.Message
	var err error
	follow := isTerminal(c.App.Writer)
	if c.IsSet("follow") {
		follow = c.Bool("follow")
	}
	if c.Bool("no-follow") {
		follow = false
	}
	if !follow {
		m, err = control.Do(ctx, socket, req, show)
		if m.Final {
			show(m)
		}
	} else {
		m, err = control.Follow(ctx, socket, req, show)
	}
	if err != nil {
		switch {
		case errors.Is(err, control.ErrNoService):
			return fmt.Errorf("reload: %w", err)
		case errors.Is(err, control.ErrNotSent):
			return fmt.Errorf("reload not asked, nothing changed: %w", err)
		case !m.Final && errors.Is(err, context.DeadlineExceeded):
			return exitError{code: ExitInProgress, err: fmt.Errorf("reload still in progress after --timeout %s: no verdict yet, the service goes on with the upgrade; 'handoff status' says when it is over (upgrade_in_progress)", c.Duration("timeout"))}
		}
		return reloadError{err: err, stderr: m.Stderr}
	}
	if follow && !v.drained && v.drainSeen {
		if ctx.Err() != nil {
			v.note("stopped following the old generation's drain at --timeout; it goes on")
		} else {
			v.note("the old generation closed the connection before its drain ended")
		}
	}
	return nil
}

// ExitInProgress is handoff reload's exit code when its --timeout passed
// before the upgrade had an outcome: the upgrade goes on in the service,
// and neither success nor failure is known yet.
const ExitInProgress = 3

// exitError is an error with an exit code of its own.
type exitError struct {
	code int
	err  error
}

func (e exitError) Error() string { return e.err.Error() }

func (e exitError) Unwrap() error { return e.err }

// reloadError is a failed reload: one line saying why, then the new
// generation's last lines of stderr if it printed any.
type reloadError struct {
	err    error
	stderr []string
}

func (e reloadError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "reload failed, the old generation goes on serving: %v", e.err)
	if len(e.stderr) > 0 {
		b.WriteString("\n  last lines of the new generation's stderr:")
		for _, l := range e.stderr {
			b.WriteString("\n  | " + l)
		}
	}
	return b.String()
}

func (e reloadError) Unwrap() error { return e.err }

func status(c *cli.Context) error {
	m, err := request(c, control.CmdStatus, nil)
	if err != nil {
		return err
	}
	st := m.Status
	if c.Bool("json") {
		enc := json.NewEncoder(c.App.Writer)
		enc.SetIndent("", "  ")
		return enc.Encode(st)
	}
	tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "pid\t%d\n", st.PID)
	fmt.Fprintf(tw, "generation\t%d\n", st.Generation)
	fmt.Fprintf(tw, "version\t%s\n", st.Version)
	fmt.Fprintf(tw, "state\t%s\n", st.State)
	fmt.Fprintf(tw, "uptime\t%s\n", st.Uptime.Round(time.Second))
	fmt.Fprintf(tw, "listeners\t%s\n", strings.Join(st.Listeners, " "))
	if n := len(st.Generations) - 1; n > 0 {
		fmt.Fprintf(tw, "draining\t%d old generations\n", n)
	} else if st.ParentPID != 0 && len(st.Generations) == 0 { // a service from before Generations
		fmt.Fprintf(tw, "draining\tprevious generation pid %d\n", st.ParentPID)
	}
	if st.LastError != "" {
		fmt.Fprintf(tw, "last upgrade error\t%s\n", st.LastError)
	}
	if st.Rollback != "" {
		fmt.Fprintf(tw, "ROLLED BACK\t%s\n", st.Rollback)
	}
	fmt.Fprintf(tw, "workers\t%d\n", len(st.Workers))
	tw.Flush()
	if len(st.Generations) > 0 {
		tw = tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "\nGENERATION\tPID\tVERSION\tSTATE\tLEFT\tDRAIN DEADLINE")
		for _, g := range st.Generations {
			left, deadline := "-", "-"
			if !g.DrainDeadline.IsZero() {
				unit := g.Unit
				if g.Left == 1 {
					unit = strings.TrimSuffix(unit, "s")
				}
				left = fmt.Sprintf("%d %s", g.Left, unit)
				deadline = fmt.Sprintf("%s (in %s)", g.DrainDeadline.Local().Format(time.TimeOnly), max(time.Until(g.DrainDeadline), 0).Round(time.Second))
			}
			fmt.Fprintf(tw, "%d\t%d\t%s\t%s\t%s\t%s\n", g.Generation, g.PID, g.Version, g.State, left, deadline)
		}
		tw.Flush()
	}
	if len(st.Workers) > 0 {
		tw = tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "\nWORKER\tPID\tSTATE\tRESTARTS\tUPTIME\tLAST ERROR")
		for _, w := range st.Workers {
			pid := "-"
			if w.PID != 0 {
				pid = fmt.Sprint(w.PID)
			}
			fmt.Fprintf(tw, "%d\t%s\t%s\t%d\t%s\t%s\n", w.ID, pid, w.State, w.Restarts, w.Uptime.Round(time.Second), firstLine(w.LastErr))
		}
		tw.Flush()
	}
	return nil
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	return s
}

// stop asks the service to stop and waits for the processes it says stop:
// the serving generation, and the new one if an upgrade was in progress.
// The PID file is not trusted for that: it may be stale or bogus.
func stop(c *cli.Context) error {
	pidPath := c.String("pidfile")
	start := time.Now()
	m, err := request(c, control.CmdStop, nil)
	if err != nil {
		return err
	}
	pids := m.Stopping
	if len(pids) == 0 && m.Status != nil { // a service from before Stopping
		pids = []int{m.Status.PID}
	}
	if len(pids) == 0 {
		return errors.New("the service's reply to stop names no process")
	}
	if filePIDs, err := pidfile.Read(pidPath); err == nil && len(filePIDs) == 1 && !slices.Contains(pids, filePIDs[0]) {
		logger(c).Warn("the pid file names another process than the service", "path", pidPath, "pid_file", filePIDs[0], "service_pid", pids[0])
	}
	deadline := time.Now().Add(c.Duration("timeout"))
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for _, pid := range pids {
		for proc.Alive(pid) {
			if time.Now().After(deadline) {
				return fmt.Errorf("pid %d still running after %s", pid, c.Duration("timeout"))
			}
			select {
			case <-tick.C:
			case <-c.Context.Done():
				return c.Context.Err()
			}
		}
	}
	also := ""
	if len(pids) > 1 {
		also = fmt.Sprintf(", with pid %s", strings.Trim(strings.Join(strings.Fields(fmt.Sprint(pids[1:])), ", "), "[]"))
	}
	fmt.Fprintf(c.App.Writer, "stopped: pid %d exited after %d ms%s\n", pids[0], time.Since(start).Milliseconds(), also)
	return nil
}
