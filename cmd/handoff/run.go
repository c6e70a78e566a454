package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"

	"github.com/gohandoff/handoff/internal/logging"
	"github.com/gohandoff/handoff/servicecli"
	"github.com/gohandoff/handoff/upgrader"
	"github.com/gohandoff/handoff/upgrader/watch"
	"github.com/urfave/cli/v2"
)

// runCommand makes handoff itself the master of a program in any language:
// it owns the sockets, runs the program as worker processes that inherit
// them by the socket-activation convention, and upgrades, rolls, respawns
// and stops them like a service built on the upgrader library.
func runCommand() *cli.Command {
	return &cli.Command{
		Name:  "run",
		Usage: "run COMMAND as worker processes on sockets handoff owns, with zero-downtime reloads",
		UsageText: "handoff run --listen tcp://127.0.0.1:8080 [--listen unix:///path.sock|udp://HOST:PORT ...] --workers N --pidfile PATH\n" +
			"             [--ready notify|delay:DUR] [--watch PATH ...] -- COMMAND [ARGS...]",
		Description: "The workers get the sockets as fds 3, 4, ... with LISTEN_FDS, LISTEN_FDNAMES and LISTEN_PID set\n" +
			"(sd_listen_fds(3)); a Node.js server listens with server.listen({fd: 3}). A worker is ready when it\n" +
			"sends READY=1 to $NOTIFY_SOCKET (sd_notify(3)), or with --ready delay:DUR once it has stayed up DUR.\n" +
			"Its stdin is a pipe from handoff: EOF there means the master is gone.\n\n" +
			"SIGHUP (or handoff reload): a new handoff master, from the binary now on disk, takes the sockets\n" +
			"over and starts fresh workers from COMMAND, which may have been replaced; the old master drains\n" +
			"its workers once all the new ones are ready. SIGUSR2 (or handoff restart-workers): a rolling\n" +
			"restart of the workers. SIGTERM (or handoff stop): drain and exit.",
		OnUsageError: onUsageError,
		Flags: []cli.Flag{
			&cli.StringSliceFlag{Name: "listen", Usage: "socket to serve, tcp://HOST:PORT, unix:///PATH or udp://HOST:PORT (repeatable)", EnvVars: []string{"HANDOFF_LISTEN"}},
			&cli.StringFlag{Name: "socket-mode", Usage: "`mode` of the unix socket files (as systemd's SocketMode=)", Value: "0666", EnvVars: []string{"HANDOFF_SOCKET_MODE"}},
			&cli.StringFlag{Name: "socket-user", Usage: "owner `user` of the unix socket files (as systemd's SocketUser=)", EnvVars: []string{"HANDOFF_SOCKET_USER"}},
			&cli.StringFlag{Name: "socket-group", Usage: "owner `group` of the unix socket files (as systemd's SocketGroup=)", EnvVars: []string{"HANDOFF_SOCKET_GROUP"}},
			&cli.IntFlag{Name: "workers", Usage: "number of worker processes", Value: runtime.NumCPU(), EnvVars: []string{"HANDOFF_WORKERS"}},
			&cli.StringFlag{Name: "pidfile", Usage: "PID file `path` of the master; the control socket and the workers PID file are next to it", EnvVars: []string{"HANDOFF_PIDFILE"}},
			&cli.StringFlag{Name: "workers-pidfile", Usage: "workers PID file `path` (default: the PID file's with .workers.pid)", EnvVars: []string{"HANDOFF_WORKERS_PIDFILE"}},
			&cli.StringFlag{Name: "ready", Usage: "how a worker tells it is ready: notify (READY=1 on NOTIFY_SOCKET) or delay:DUR", Value: "notify", EnvVars: []string{"HANDOFF_READY"}},
			&cli.StringSliceFlag{Name: "watch", Usage: "upgrade when this file or folder changes (repeatable; for development)", EnvVars: []string{"HANDOFF_WATCH"}},
			&cli.DurationFlag{Name: "upgrade-timeout", Usage: "how long a new master and its workers may take to be ready", Value: upgrader.DefaultUpgradeTimeout, EnvVars: []string{"HANDOFF_UPGRADE_TIMEOUT"}},
			&cli.DurationFlag{Name: "drain-timeout", Usage: "how long a worker may take to finish its requests after SIGTERM", Value: upgrader.DefaultDrainTimeout, EnvVars: []string{"HANDOFF_DRAIN_TIMEOUT"}},
			&cli.IntFlag{Name: "max-draining", Usage: "how many old masters may still drain at once; an upgrade never waits for them", Value: upgrader.DefaultMaxDraining, EnvVars: []string{"HANDOFF_MAX_DRAINING"}},
			&cli.StringFlag{Name: "max-draining-policy", Usage: "past --max-draining: kill-oldest (end the oldest at once, its connections cut) or refuse (refuse the upgrade)", Value: upgrader.DrainingKillOldest, EnvVars: []string{"HANDOFF_MAX_DRAINING_POLICY"}},
			&cli.DurationFlag{Name: "probation", Usage: "after an upgrade, how long the old master stands by to restore itself if the new one dies (0: off)", EnvVars: []string{"HANDOFF_PROBATION"}},
			&cli.StringFlag{Name: "log-format", Usage: "log `format`: text or json", Value: "text", EnvVars: []string{"HANDOFF_LOG_FORMAT"}},
			&cli.StringFlag{Name: "log-level", Usage: "log `level`: debug, info, warn or error", Value: "info", EnvVars: []string{"HANDOFF_LOG_LEVEL"}},
		},
		Action: runMaster,
	}
}

type listenSpec struct{ network, addr string }

// parseListen parses tcp://HOST:PORT (tcp4, tcp6 too), unix:///PATH and
// udp://HOST:PORT (udp4, udp6).
func parseListen(s string) (listenSpec, error) {
	if _, rest, ok := strings.Cut(s, "://"); !ok || rest == "" {
		return listenSpec{}, fmt.Errorf("invalid value %q for flag --listen: want tcp://HOST:PORT, unix:///PATH or udp://HOST:PORT", s)
	}
	a, err := servicecli.ParseAddr(s)
	if err != nil {
		return listenSpec{}, fmt.Errorf("invalid value %q for flag --listen: %w", s, err)
	}
	return listenSpec{a.Network, a.Address}, nil
}

// packet reports whether l is a datagram socket, for ListenPacket.
func (l listenSpec) packet() bool { return strings.HasPrefix(l.network, "udp") }

// socketOptions checks --socket-mode, --socket-user and --socket-group.
func socketOptions(c *cli.Context) (os.FileMode, error) {
	m, perr := strconv.ParseUint(c.String("socket-mode"), 8, 32)
	if perr != nil || m == 0 || m > 0o777 {
		return 0, fmt.Errorf("invalid value %q for flag --socket-mode: want an octal mode such as 0660", c.String("socket-mode"))
	}
	if err := servicecli.CheckOwner(c.String("socket-user"), c.String("socket-group")); err != nil {
		return 0, fmt.Errorf("flag --socket-user/--socket-group: %w", err)
	}
	return os.FileMode(m), nil
}

func runMaster(c *cli.Context) error {
	argv := c.Args().Slice()
	if len(argv) == 0 {
		return usageError{errors.New("missing COMMAND: handoff run [flags] -- COMMAND [ARGS...]")}
	}
	if _, err := exec.LookPath(argv[0]); err != nil {
		return usageError{fmt.Errorf("COMMAND %q: %w", argv[0], err)}
	}
	if len(c.StringSlice("listen")) == 0 {
		return usageError{errors.New("flag --listen is required")}
	}
	var listens []listenSpec
	for _, s := range c.StringSlice("listen") {
		l, err := parseListen(s)
		if err != nil {
			return usageError{err}
		}
		listens = append(listens, l)
	}
	socketMode, err := socketOptions(c)
	if err != nil {
		return usageError{err}
	}
	if c.String("pidfile") == "" {
		return usageError{errors.New("flag --pidfile is required")}
	}
	if n := c.Int("workers"); n < 1 {
		return usageError{fmt.Errorf("invalid value %d for flag --workers: must be at least 1", n)}
	}
	readyDelay, err := upgrader.ParseReady(c.String("ready"))
	if err != nil {
		return usageError{fmt.Errorf("flag --ready: %w", err)}
	}
	for _, name := range []string{"upgrade-timeout", "drain-timeout"} {
		if c.Duration(name) <= 0 {
			return usageError{fmt.Errorf("invalid value %s for flag --%s: must be positive", c.Duration(name), name)}
		}
	}
	if n := c.Int("max-draining"); n < 1 {
		return usageError{fmt.Errorf("invalid value %d for flag --max-draining: must be at least 1", n)}
	}
	if p := c.String("max-draining-policy"); p != upgrader.DrainingKillOldest && p != upgrader.DrainingRefuse {
		return usageError{fmt.Errorf("invalid value %q for flag --max-draining-policy: want %s or %s", p, upgrader.DrainingKillOldest, upgrader.DrainingRefuse)}
	}
	if c.Duration("probation") < 0 {
		return usageError{fmt.Errorf("invalid value %s for flag --probation: must not be negative", c.Duration("probation"))}
	}
	for _, p := range c.StringSlice("watch") {
		if _, err := os.Stat(p); err != nil {
			return usageError{fmt.Errorf("flag --watch: %w", err)}
		}
	}
	log, err := logging.New(c.App.ErrWriter, c.String("log-format"), c.String("log-level"))
	if err != nil {
		return usageError{fmt.Errorf("flag --log-format/--log-level: %w", err)}
	}

	upg, err := upgrader.New(upgrader.Options{
		PIDFile:           c.String("pidfile"),
		Workers:           c.Int("workers"),
		WorkerMode:        upgrader.ProcessWorkers,
		WorkerCommand:     argv,
		WorkersPIDFile:    c.String("workers-pidfile"),
		WorkerReadyDelay:  readyDelay,
		Watch:             watch.Paths(c.StringSlice("watch")...),
		UpgradeTimeout:    c.Duration("upgrade-timeout"),
		DrainTimeout:      c.Duration("drain-timeout"),
		Probation:         c.Duration("probation"),
		KernelSteering:    true,
		MaxDraining:       c.Int("max-draining"),
		MaxDrainingPolicy: c.String("max-draining-policy"),
		Version:           buildVersion(),
		Logger:            log,
		SocketMode:        socketMode,
		SocketUser:        c.String("socket-user"),
		SocketGroup:       c.String("socket-group"),
	})
	if err != nil {
		return err
	}
	defer upg.Stop()
	for _, l := range listens {
		if l.packet() {
			_, err = upg.ListenPacket(l.network, l.addr)
		} else {
			_, err = upg.Listen(l.network, l.addr)
		}
		if err != nil {
			return err
		}
	}
	return upg.Serve(c.Context, nil)
}
