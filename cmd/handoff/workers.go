package main

import (
	"fmt"
	"time"

	"github.com/gohandoff/handoff/control"
	"github.com/urfave/cli/v2"
)

// restartWorkersCommand is a rolling restart of the worker processes of a
// service in process mode.
func restartWorkersCommand() *cli.Command {
	return &cli.Command{
		Name:  "restart-workers",
		Usage: "replace the worker processes one at a time, each once its replacement is ready (like SIGUSR2)",
		Description: "For each worker in turn, start its replacement, wait until it is ready, then drain the old one.\n" +
			"Never fewer workers ready than configured. If a replacement fails to become ready, the roll stops,\n" +
			"the workers not yet replaced keep serving, and the command exits non-zero with the reason.",
		UsageText: "handoff restart-workers [--pidfile PATH] [--timeout DUR]",
		Flags: []cli.Flag{pidfileFlag(), &cli.DurationFlag{
			Name: "timeout", Usage: "give up waiting after `DUR`", Value: 10 * time.Minute, EnvVars: []string{"HANDOFF_TIMEOUT"},
		}},
		Action: restartWorkers,
	}
}

func restartWorkers(c *cli.Context) error {
	start := time.Now()
	m, err := request(c, control.CmdRestartWorkers, func(m control.Message) {
		fmt.Fprintf(c.App.Writer, "%6d ms  %s\n", time.Since(start).Milliseconds(), m.Msg)
	})
	if err != nil {
		return fmt.Errorf("restart-workers failed: %w", err)
	}
	fmt.Fprintf(c.App.Writer, "restarted: %s in %d ms\n", m.Msg, time.Since(start).Milliseconds())
	return nil
}
