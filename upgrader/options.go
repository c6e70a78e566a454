package upgrader

import (
	"context"
	"log/slog"
	"net"
	"os"
	"runtime"
	"time"

	"github.com/gohandoff/handoff/control"
)

// Options control an Upgrader. The zero value works: no PID file, no
// control socket, GOMAXPROCS workers and the default timeouts.
type Options struct {
	// PIDFile, if set, is written atomically with the pid of a generation
	// once it is ready: the path for kill -HUP and systemd's PIDFile=.
	PIDFile string
	// ControlSocket is the unix socket the handoff CLI talks to. It
	// defaults to the PID file's path with ".sock" for ".pid"; without a
	// PID file there is none unless it is set.
	ControlSocket string
	// Workers is the number of workers in the pool; default GOMAXPROCS.
	Workers int
	// UpgradeTimeout bounds how long a new generation may take to be
	// ready before it is killed and the upgrade fails.
	UpgradeTimeout time.Duration
	// DrainTimeout bounds how long a generation finishes its accepted work
	// after it stopped accepting; what is left then is cut.
	DrainTimeout time.Duration
	// Version is reported in logs and status.
	Version string
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// ListenConfig is used for sockets not inherited from a parent.
	ListenConfig *net.ListenConfig
	// SocketMode, SocketUser and SocketGroup are the mode (default
	// 0666, as systemd's SocketMode= and nginx) and owner (a name or a
	// numeric id; empty: this process's) of the unix socket files the
	// first generation creates; a later one inherits them as they are
	// (unixsock.go).
	SocketMode  os.FileMode
	SocketUser  string
	SocketGroup string

	// WorkerMode is GoroutineWorkers (the default) or ProcessWorkers.
	// See procpool.go and doc.go for process mode.
	WorkerMode WorkerMode
	// WorkerCommand, in process mode, is the program each worker process
	// runs, with its arguments. By default it is this executable, re-run
	// with the same arguments in the worker role: its New and Listen
	// return the sockets inherited from the master, and Serve runs the
	// WorkerFunc.
	WorkerCommand []string
	// WorkersPIDFile, in process mode, lists the live worker processes,
	// one pid a line, rewritten atomically on every change. It defaults
	// to the PID file's path with ".workers.pid" for ".pid".
	WorkersPIDFile string
	// WorkerReadyDelay, if positive, makes a worker process ready once it
	// has stayed up that long, for programs that cannot send READY=1 on
	// NOTIFY_SOCKET. Notification is better: it says the worker serves.
	WorkerReadyDelay time.Duration
	// Watch, if set, runs beside the workers from Serve in the master
	// until ctx is done, to upgrade u on events of its own: upgrader/watch
	// upgrades on file changes (Watch: watch.Paths("config/")). An error
	// it returns ends the generation.
	Watch func(ctx context.Context, u *Upgrader) error
	// Probation, if positive, is how long after an upgrade the previous
	// generation, once drained, stands by: if the new generation dies
	// meanwhile without having been asked to stop, the previous one
	// starts its own build again on the sockets (probation.go). An
	// upgrade asked during the probation waits for its end.
	Probation time.Duration
	// KernelSteering, in process mode on Linux, gives each worker process
	// TCP sockets of its own in one SO_REUSEPORT group per address and
	// steers new connections in the kernel to ready workers only; a
	// retiring worker is signalled once the kernel says it holds no
	// connection (steering.go). Workers need no drain code and no accept
	// gate. Where it cannot work (not Linux, a non-TCP socket, a
	// probation), one log line says so and workers share the sockets.
	// It sets the ListenConfig when that is nil.
	KernelSteering bool
	// MaxDraining caps the old generations still draining at once
	// (default DefaultMaxDraining). An upgrade never waits for older
	// generations to finish draining (overlap.go); going past the cap
	// either ends the oldest at once, its connections cut, or refuses the
	// upgrade, as MaxDrainingPolicy says.
	MaxDraining int
	// MaxDrainingPolicy is DrainingKillOldest (the default) or
	// DrainingRefuse.
	MaxDrainingPolicy string
}

// fillDefaults gives every option left zero its default.
func (o *Options) fillDefaults() {
	if o.UpgradeTimeout <= 0 {
		o.UpgradeTimeout = DefaultUpgradeTimeout
	}
	if o.DrainTimeout <= 0 {
		o.DrainTimeout = DefaultDrainTimeout
	}
	if o.Workers <= 0 {
		o.Workers = runtime.GOMAXPROCS(0)
	}
	if o.ControlSocket == "" && o.PIDFile != "" {
		o.ControlSocket = control.SocketPath(o.PIDFile)
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.WorkerMode == "" {
		o.WorkerMode = GoroutineWorkers
	}
	if o.MaxDraining <= 0 {
		o.MaxDraining = DefaultMaxDraining
	}
	if o.MaxDrainingPolicy == "" {
		o.MaxDrainingPolicy = DrainingKillOldest
	}
	if o.KernelSteering && o.ListenConfig == nil {
		o.ListenConfig = steerListenConfig()
	}
	if o.WorkersPIDFile == "" && o.PIDFile != "" {
		o.WorkersPIDFile = workersPIDFile(o.PIDFile)
	}
}
