package main

import (
	"io"
	"log/slog"
	"os"

	"github.com/gohandoff/handoff/internal/logging"
	"github.com/urfave/cli/v2"
)

// logFlags are the CLI's global --log-format and --log-level, as hello has
// them: they shape the lines handoff logs on stderr (the control messages
// at debug level; the lines of commands that supervise processes).
func logFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "log-format", Usage: "log `FORMAT`: text or json", Value: "text", EnvVars: []string{"HANDOFF_LOG_FORMAT"}},
		&cli.StringFlag{Name: "log-level", Usage: "log `LEVEL`: debug, info, warn or error", Value: "warn", EnvVars: []string{"HANDOFF_LOG_LEVEL"}},
	}
}

const loggerKey = "logger"

// setupLogging builds the logger from the global flags; a bad value is a
// usage error.
func setupLogging(c *cli.Context) error {
	log, err := logging.New(c.App.ErrWriter, c.String("log-format"), c.String("log-level"))
	if err != nil {
		return usageError{err}
	}
	if c.App.Metadata == nil {
		c.App.Metadata = map[string]any{}
	}
	c.App.Metadata[loggerKey] = log.With("pid", os.Getpid())
	return nil
}

// logger returns the CLI's logger; it discards everything before the
// flags are parsed.
func logger(c *cli.Context) *slog.Logger {
	if log, ok := c.App.Metadata[loggerKey].(*slog.Logger); ok {
		return log
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}
