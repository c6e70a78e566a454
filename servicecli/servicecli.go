// Package servicecli is the command line of a service on the upgrader, as
// the examples use it: the flags every such service has (--listen,
// --pidfile, --workers, timeouts, logs), their checks before anything
// starts, the upgrader.Options they ask for, and the exit status (2 for a
// bad command line, naming the flag). A program copied out of examples/
// builds with it outside this module.
package servicecli

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/user"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/gohandoff/handoff/internal/logging"
	"github.com/gohandoff/handoff/upgrader"
)

// usageError marks a bad command line.
type usageError struct{ error }

func (e usageError) Unwrap() error { return e.error }

// Usage marks err as a bad command line: Main exits with status 2.
func Usage(err error) error { return usageError{err} }

// Main runs run with the command line's arguments and exits: 0 on
// success or -h, 2 on a usage error, 1 on any other, printed after name.
func Main(name string, run func(args []string) error) {
	err := run(os.Args[1:])
	if err == nil || errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
	var ue usageError
	if errors.As(err, &ue) || errors.Is(err, upgrader.ErrInvalidOptions) {
		os.Exit(2)
	}
	os.Exit(1)
}

// Version returns the version stamped at build time with -ldflags "-X
// main.version=...", else the module's version, else "dev".
func Version(stamped string) string {
	if stamped != "" {
		return stamped
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}

// Flags are the flags of every example service. Parse fills Addrs and
// Log.
type Flags struct {
	// Listen holds the --listen values, repeatable; Addrs their parse.
	// AllowUDP, set before Parse, accepts udp:// for a datagram service.
	Listen         listenList
	Addrs          []Addr
	AllowUDP       bool
	SocketMode     string
	SocketUser     string
	SocketGroup    string
	PIDFile        string
	Workers        int
	WorkerMode     string
	WorkersPIDFile string
	Ready          string
	UpgradeTimeout time.Duration
	DrainTimeout   time.Duration
	Probation      time.Duration
	MaxDraining    int
	DrainingPolicy string
	LogFormat      string
	LogLevel       string
	ShowVersion    bool
	Log            *slog.Logger

	readyDelay    time.Duration
	socketMode    os.FileMode
	defaultListen string
	fs            *flag.FlagSet
}

// listenList is a repeatable flag; the service's default holds until the
// first value given.
type listenList []string

func (l *listenList) String() string { return strings.Join(*l, ",") }
func (l *listenList) Set(s string) error {
	*l = append(*l, s)
	return nil
}

// Register defines the shared flags on fs, with the service's default
// address and PID file. A service defines its own flags on fs after.
func Register(fs *flag.FlagSet, listen, pidfile string) *Flags {
	f := &Flags{fs: fs, defaultListen: listen}
	fs.Var(&f.Listen, "listen", "`address` to serve on (repeatable; default "+listen+"): HOST:PORT or tcp://HOST:PORT, unix:///PATH, udp://HOST:PORT where the service takes datagrams, or systemd:NAME for the socket systemd passed with that FileDescriptorName=")
	fs.StringVar(&f.SocketMode, "socket-mode", "0666", "`mode` of the unix socket files the service creates (as systemd's SocketMode=)")
	fs.StringVar(&f.SocketUser, "socket-user", "", "owner `user` (name or uid) of the unix socket files (as systemd's SocketUser=; default: the service's)")
	fs.StringVar(&f.SocketGroup, "socket-group", "", "owner `group` (name or gid) of the unix socket files (as systemd's SocketGroup=; default: the service's)")
	fs.StringVar(&f.PIDFile, "pidfile", pidfile, "PID file `path`; the control socket is next to it")
	fs.IntVar(&f.Workers, "workers", runtime.GOMAXPROCS(0), "number of workers")
	fs.StringVar(&f.WorkerMode, "worker-mode", string(upgrader.GoroutineWorkers), "`mode` of the workers: goroutine or process (--workers of them)")
	fs.StringVar(&f.WorkersPIDFile, "workers-pidfile", "", "worker PID file `path` in process mode (default: the PID file's with .workers.pid)")
	fs.StringVar(&f.Ready, "ready", "notify", "how a worker process tells it is ready: notify or delay:DUR")
	fs.DurationVar(&f.UpgradeTimeout, "upgrade-timeout", upgrader.DefaultUpgradeTimeout, "how long a new generation may take to be ready")
	fs.DurationVar(&f.DrainTimeout, "drain-timeout", upgrader.DefaultDrainTimeout, "how long the old generation may take to finish its work")
	fs.IntVar(&f.MaxDraining, "max-draining", upgrader.DefaultMaxDraining, "how many old generations may still drain at once; an upgrade never waits for them")
	fs.StringVar(&f.DrainingPolicy, "max-draining-policy", upgrader.DrainingKillOldest, "past -max-draining: kill-oldest (end the oldest at once, its connections cut) or refuse (refuse the upgrade)")
	fs.DurationVar(&f.Probation, "probation", 0, "after an upgrade, how long the old generation stands by to restore its build if the new one dies (0: off)")
	fs.StringVar(&f.LogFormat, "log-format", "text", "log `format`: text or json")
	fs.StringVar(&f.LogLevel, "log-level", "info", "log `level`: debug, info, warn or error")
	fs.BoolVar(&f.ShowVersion, "version", false, "print the version and exit")
	return f
}

// Parse parses args and checks every shared flag, so that a bad command
// line starts nothing. It returns a usage error naming the culprit, or
// flag.ErrHelp once it printed the usage for -h.
func (f *Flags) Parse(args []string) error {
	f.fs.SetOutput(io.Discard)
	if err := f.fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			f.fs.SetOutput(os.Stdout)
			fmt.Printf("Usage: %s [flags]\n", f.fs.Name())
			f.fs.PrintDefaults()
			return err
		}
		return Usage(err)
	}
	if f.fs.NArg() > 0 {
		return Usage(fmt.Errorf("unexpected argument %q", f.fs.Arg(0)))
	}
	if len(f.Listen) == 0 {
		f.Listen = listenList{f.defaultListen}
	}
	f.Addrs = f.Addrs[:0]
	for _, s := range f.Listen {
		a, err := ParseAddr(s)
		if err == nil && a.Packet() && !f.AllowUDP {
			err = fmt.Errorf("%s serves streams, not datagrams: give tcp://, unix:// or systemd:", f.fs.Name())
		}
		if err != nil {
			return Usage(fmt.Errorf("invalid value %q for flag -listen: %w", s, err))
		}
		if slices.Contains(f.Addrs, a) {
			return Usage(fmt.Errorf("invalid value %q for flag -listen: given twice", s))
		}
		f.Addrs = append(f.Addrs, a)
	}
	mode, err := strconv.ParseUint(f.SocketMode, 8, 32)
	if err != nil || mode == 0 || mode > 0o777 {
		return Usage(fmt.Errorf("invalid value %q for flag -socket-mode: want an octal mode such as 0660", f.SocketMode))
	}
	f.socketMode = os.FileMode(mode)
	if err := CheckOwner(f.SocketUser, f.SocketGroup); err != nil {
		return Usage(fmt.Errorf("flag -socket-user/-socket-group: %w", err))
	}
	switch {
	case f.Workers < 1:
		return Usage(fmt.Errorf("invalid value %d for flag -workers: must be at least 1", f.Workers))
	case f.WorkerMode != string(upgrader.GoroutineWorkers) && f.WorkerMode != string(upgrader.ProcessWorkers):
		return Usage(fmt.Errorf("invalid value %q for flag -worker-mode: want goroutine or process", f.WorkerMode))
	case f.UpgradeTimeout <= 0:
		return Usage(fmt.Errorf("invalid value %s for flag -upgrade-timeout: must be positive", f.UpgradeTimeout))
	case f.DrainTimeout <= 0:
		return Usage(fmt.Errorf("invalid value %s for flag -drain-timeout: must be positive", f.DrainTimeout))
	case f.MaxDraining < 1:
		return Usage(fmt.Errorf("invalid value %d for flag -max-draining: must be at least 1", f.MaxDraining))
	case f.DrainingPolicy != upgrader.DrainingKillOldest && f.DrainingPolicy != upgrader.DrainingRefuse:
		return Usage(fmt.Errorf("invalid value %q for flag -max-draining-policy: want %s or %s", f.DrainingPolicy, upgrader.DrainingKillOldest, upgrader.DrainingRefuse))
	case f.Probation < 0:
		return Usage(fmt.Errorf("invalid value %s for flag -probation: must not be negative", f.Probation))
	}
	d, err := upgrader.ParseReady(f.Ready)
	if err != nil {
		return Usage(fmt.Errorf("flag -ready: %w", err))
	}
	f.readyDelay = d
	log, err := logging.New(os.Stderr, f.LogFormat, f.LogLevel)
	if err != nil {
		return Usage(fmt.Errorf("flag -log-format/-log-level: %w", err))
	}
	f.Log = log
	return nil
}

// An Addr is one --listen value: the network and address to pass to
// Upgrader.Listen, or to ListenPacket if Packet.
type Addr struct{ Network, Address string }

// Packet reports whether a is a datagram socket (udp).
func (a Addr) Packet() bool { return strings.HasPrefix(a.Network, "udp") }

// ParseAddr parses a --listen value: HOST:PORT or tcp://HOST:PORT (tcp4,
// tcp6 too), unix:///PATH, udp://HOST:PORT (udp4, udp6), systemd:NAME.
func ParseAddr(s string) (Addr, error) {
	scheme, rest, ok := strings.Cut(s, "://")
	if !ok {
		if err := CheckAddr(s); err != nil {
			return Addr{}, err
		}
		return Addr{"tcp", s}, nil
	}
	switch scheme {
	case "tcp", "tcp4", "tcp6", "udp", "udp4", "udp6":
		if strings.HasPrefix(rest, "systemd:") {
			return Addr{}, fmt.Errorf("want %s://HOST:PORT", scheme)
		}
		if err := CheckAddr(rest); err != nil {
			return Addr{}, fmt.Errorf("want %s://HOST:PORT: %w", scheme, err)
		}
	case "unix":
		if !strings.HasPrefix(rest, "/") {
			return Addr{}, errors.New("want an absolute path, unix:///PATH")
		}
	default:
		return Addr{}, fmt.Errorf("scheme %q is none of tcp, unix, udp", scheme)
	}
	return Addr{scheme, rest}, nil
}

// CheckOwner checks that the --socket-user and --socket-group exist, names
// or numeric ids.
func CheckOwner(usr, group string) error {
	if usr != "" {
		if _, err := strconv.Atoi(usr); err != nil {
			if _, err := user.Lookup(usr); err != nil {
				return fmt.Errorf("socket user %q: %w", usr, err)
			}
		}
	}
	if group != "" {
		if _, err := strconv.Atoi(group); err != nil {
			if _, err := user.LookupGroup(group); err != nil {
				return fmt.Errorf("socket group %q: %w", group, err)
			}
		}
	}
	return nil
}

// CheckAddr checks a host:port address with a numeric port, or
// systemd:NAME for a socket passed by systemd under that name.
func CheckAddr(addr string) error {
	if name, ok := strings.CutPrefix(addr, "systemd:"); ok {
		if name == "" {
			return errors.New("systemd: needs the socket's FileDescriptorName")
		}
		return nil
	}
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return fmt.Errorf("port %q is not a number from 0 to 65535", port)
	}
	return nil
}

// Options returns the upgrader options the flags ask for.
func (f *Flags) Options(version string) upgrader.Options {
	return upgrader.Options{
		PIDFile:           f.PIDFile,
		Workers:           f.Workers,
		WorkerMode:        upgrader.WorkerMode(f.WorkerMode),
		WorkersPIDFile:    f.WorkersPIDFile,
		WorkerReadyDelay:  f.readyDelay,
		UpgradeTimeout:    f.UpgradeTimeout,
		Probation:         f.Probation,
		DrainTimeout:      f.DrainTimeout,
		MaxDraining:       f.MaxDraining,
		MaxDrainingPolicy: f.DrainingPolicy,
		Version:           version,
		Logger:            f.Log,
		SocketMode:        f.socketMode,
		SocketUser:        f.SocketUser,
		SocketGroup:       f.SocketGroup,
	}
}

// ListenAll opens every --listen socket on upg, in the order given:
// streams with Listen, datagrams with ListenPacket. It returns the
// datagram sockets, for their buffer sizes.
func (f *Flags) ListenAll(upg *upgrader.Upgrader) ([]net.PacketConn, error) {
	var pcs []net.PacketConn
	for _, a := range f.Addrs {
		if a.Packet() {
			pc, err := upg.ListenPacket(a.Network, a.Address)
			if err != nil {
				return nil, err
			}
			pcs = append(pcs, pc)
		} else if _, err := upg.Listen(a.Network, a.Address); err != nil {
			return nil, err
		}
	}
	return pcs, nil
}
