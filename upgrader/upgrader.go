package upgrader

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cloudflare/tableflip"
	"github.com/gohandoff/handoff/internal/handover"
	"github.com/gohandoff/handoff/internal/proc"
)

// Defaults for the zero Options.
const (
	DefaultUpgradeTimeout = 60 * time.Second
	DefaultDrainTimeout   = 30 * time.Second
)

// Errors callers branch on.
var (
	// ErrUpgradeInProgress: another upgrade has not finished yet.
	ErrUpgradeInProgress = errors.New("upgrader: upgrade in progress")
	// ErrUpgraded: this generation has handed over and is draining.
	ErrUpgraded = errors.New("upgrader: already upgraded, this generation is draining")
	// ErrStopping: this generation is stopping.
	ErrStopping = errors.New("upgrader: stopping")
	// ErrNotReady: this generation has not reported ready yet.
	ErrNotReady = errors.New("upgrader: not ready yet")
	// ErrInvalidOptions: the Options contradict themselves, such as two
	// of their paths naming the same file. New's error wraps it.
	ErrInvalidOptions = errors.New("upgrader: invalid options")
	// ErrRollInProgress: a rolling restart of the worker processes has
	// not finished yet.
	ErrRollInProgress = errors.New("upgrader: rolling restart of the workers in progress")
)

// Upgrader runs one generation of a service: it owns the listeners, which
// it inherits from the previous generation and passes to the next, the
// pool of workers, the PID file and the control socket.
//
// Only one Upgrader may exist in a process.
type Upgrader struct {
	opts    Options
	log     *slog.Logger
	tf      handover.Handover
	sd      *systemd
	state   *stateFile
	gen     int
	first   time.Time
	started time.Time
	ppid    int
	// upgradeStart is when the parent started the upgrade that started
	// this generation.
	upgradeStart time.Time
	drainSt      *drainState
	sigs         *signalSet // registered by New, handled by Serve
	stopSignals  atomic.Int32

	upgrading atomic.Bool
	phaseMu   sync.Mutex // held while an upgrade's outcome sets the phase
	phase     phaseState // moves only as phase.go allows
	ready     chan struct{}
	// link is closed when the previous generation has ended tableflip's
	// parent link: at once after its handover (overlap.go), or when it
	// exits. Until then tableflip refuses an upgrade.
	link      chan struct{}
	parent    chan struct{} // closed when the previous generation has exited
	exit      chan struct{} // closed when this generation must drain and exit
	abort     chan struct{} // closed when a new generation stops before it is ready
	abortOnce sync.Once
	gate      chan struct{} // closed once ready; see gatedListener
	force     chan struct{}
	forceOnce sync.Once
	// stopSignalAt is when the first stop signal came (UnixNano), 0 before.
	stopSignalAt atomic.Int64
	// endedAt is set once a newer generation ended this draining one at
	// once, over MaxDraining (overlap.go).
	endedAt atomic.Bool
	// After an upgrade with a probation: the successor and when it was
	// ready; standbyEnd is closed by a stop signal while standing by.
	successor   int
	successorAt time.Time
	standing    atomic.Bool
	standbyEnd  chan struct{}
	standbyOnce sync.Once
	// connsAddrs is where this generation's HTTPServers receive the
	// previous generation's connections, by serverKey (httppass.go).
	connsAddrs map[string]string
	// kept: the sockets kept for the stand-by, copied once (keepOnce) by
	// the first of stopAccepting and the drain, before either closes the
	// listeners.
	kept     *keptSockets
	keepOnce sync.Once

	role    role        // a worker process's (newWorker); nil in the master (see as)
	worker  *workerSide // a worker process's inheritance; nil in the master
	rolling atomic.Bool

	realStderr  *os.File // a new generation's inherited real stderr
	firstStderr *os.File // the first generation's stderr, before any relay
	relayStderr bool     // the next generation gets the real stderr to restore

	mu        sync.Mutex
	lns       []net.Listener
	pcs       []net.PacketConn
	socks     []sockRef
	addrs     []string
	ctlLn     net.Listener
	pool      workers
	admin     []adminServer
	claimed   []string // network and address of every socket asked for
	stats     stats
	lastError string
	isReady   bool // markReady has reported ready
	readyAt   time.Time
	stopAfter bool // a stop was asked during the upgrade in progress
}

// New starts a generation. In the first process of a service it checks
// that no other instance runs with the same PID file; in a process started
// by an upgrade it takes the listeners over from its parent.
func New(opts Options) (*Upgrader, error) { return newUpgrader(opts, handover.New) }

func newUpgrader(opts Options, startHandover newHandover) (*Upgrader, error) {
	opts.fillDefaults()
	go loadTimeZone()
	if w, gen, err := takeWorkerRole(); err != nil || w != nil {
		if err != nil {
			return nil, err
		}
		return newWorker(opts, w, gen), nil
	}
	restoredGen, restored, err := takeRestoreRole()
	if err != nil {
		return nil, err
	}
	hasParent := handover.HasParentEnv()
	if err := checkStart(opts, hasParent, restored, restoredGen); err != nil {
		return nil, err
	}
	tf, err := startHandover(tableflip.Options{
		UpgradeTimeout: opts.UpgradeTimeout,
		ListenConfig:   opts.ListenConfig,
	}, hasParent)
	if err != nil {
		return nil, fmt.Errorf("upgrader: %w", err)
	}
	os.Unsetenv(handover.ParentEnv) // nothing the application starts inherits it
	os.Unsetenv(treeEnv)

	u := &Upgrader{
		opts:    opts,
		tf:      tf,
		started: time.Now(),
		ready:   make(chan struct{}),
		link:    make(chan struct{}),
		parent:  make(chan struct{}),
		exit:    make(chan struct{}),
		abort:   make(chan struct{}),
		gate:    make(chan struct{}),
		force:   make(chan struct{}),
		drainSt: newDrainState(),
		sigs:    notifySignals(upgradeSignals, rollSignals, stopSignals),

		standbyEnd: make(chan struct{}),
	}
	go func() {
		defer close(u.exit)
		select {
		case <-tf.Exit():
		case <-u.abort:
		}
	}()
	if err := u.begin(restored, restoredGen, hasParent); err != nil {
		return nil, err
	}
	return u, nil
}

// checkStart checks the paths of opts and, for a first generation (not
// started by an upgrade: generation 1, or restoredGen if restored), its
// PID files.
func checkStart(opts Options, hasParent, restored bool, restoredGen int) error {
	if err := checkPaths(opts); err != nil {
		return err
	}
	if hasParent || opts.PIDFile == "" {
		return nil
	}
	gen := 1
	if restored {
		gen = restoredGen
	}
	return checkFirstStart(opts, gen)
}

// checkFirstStart checks, for a first generation (gen 1, or a restored
// one), that its PID files can be written and that no other instance
// runs on them.
func checkFirstStart(opts Options, gen int) error {
	if err := checkPIDDir(opts.PIDFile); err != nil {
		return err
	}
	if err := checkPIDPath(opts.PIDFile); err != nil {
		return err
	}
	if opts.WorkerMode == ProcessWorkers && opts.WorkersPIDFile != "" {
		if err := checkPIDPath(opts.WorkersPIDFile); err != nil {
			return err
		}
	}
	return checkNotRunning(opts.PIDFile, opts.Logger.With("pid", os.Getpid(), "generation", gen))
}

// begin takes the generation's state from the state file, sets up systemd
// and the stderr relay, follows the parent link and opens the control
// socket. On error the handover is stopped (in a new generation, leaving
// the inherited sockets alone).
func (u *Upgrader) begin(restored bool, restoredGen int, hasParent bool) error {
	var err error
	if err = u.loadState(); err != nil {
		u.Stop()
		return err
	}
	if restored {
		u.gen = restoredGen
	}
	u.log = u.opts.Logger.With("pid", os.Getpid(), "generation", u.gen)
	if restored {
		u.log.Warn("restored: the previous generation started this build again after the new one died on probation")
	}
	if u.sd, err = newSystemd(u.tf, hasParent); err != nil {
		u.tf.Stop()
		return err
	}
	u.inheritStderr()
	if u.ppid != 0 {
		u.log.Info("new generation starting", "parent_pid", u.ppid, "version", u.opts.Version)
		go u.watchParent()
	} else {
		close(u.link)
		close(u.parent)
		u.log.Info("starting", "version", u.opts.Version)
	}
	if u.opts.ControlSocket != "" {
		if err := u.listenControl(); err != nil {
			u.Stop()
			return err
		}
	}
	return nil
}

func (u *Upgrader) loadState() error {
	f, err := u.tf.File(stateName)
	if err != nil {
		return fmt.Errorf("upgrader: inherit state file: %w", err)
	}
	if f == nil {
		sf, err := newStateFile()
		if err != nil {
			return err
		}
		if err := u.tf.AddFile(stateName, sf.f); err != nil {
			sf.f.Close()
			return fmt.Errorf("upgrader: pass state file: %w", err)
		}
		u.state, u.gen, u.first = sf, 1, u.started
		return nil
	}
	u.state = &stateFile{f: f}
	st, err := u.state.read()
	if err != nil {
		return err
	}
	u.gen, u.first, u.ppid = st.Generation+1, st.FirstStart, st.PID
	u.upgradeStart = st.UpgradeStart
	if st.Stats != nil {
		u.stats = *st.Stats
	}
	return nil
}

// MaxWorkers bounds Options.Workers: far more would only exhaust memory
// (a hundred million goroutine workers crash the process at start).
const MaxWorkers = 100_000

// maxSocketPath is the longest path a unix socket can be bound to (Linux
// sun_path less its final NUL; macOS allows 103).
const maxSocketPath = 107

// checkPaths refuses options whose files would overwrite one another, a
// control socket path too long to bind, and too many workers.
func checkPaths(opts Options) error {
	if err := checkPolicy(opts.MaxDrainingPolicy); err != nil {
		return err
	}
	if opts.Workers > MaxWorkers {
		return fmt.Errorf("%w: %d workers, more than the %d allowed", ErrInvalidOptions, opts.Workers, MaxWorkers)
	}
	if n := len(opts.ControlSocket); n > maxSocketPath {
		return fmt.Errorf("%w: the control socket path %s is %d bytes, longer than the %d a unix socket takes: choose a shorter PID file path", ErrInvalidOptions, opts.ControlSocket, n, maxSocketPath)
	}
	paths := []struct{ flag, path string }{
		{"PID file", opts.PIDFile}, {"control socket", opts.ControlSocket},
	}
	if opts.WorkerMode == ProcessWorkers {
		paths = append(paths, struct{ flag, path string }{"workers PID file", opts.WorkersPIDFile})
	}
	for i, a := range paths {
		for _, b := range paths[i+1:] {
			if a.path != "" && b.path != "" && filepath.Clean(a.path) == filepath.Clean(b.path) {
				return fmt.Errorf("%w: the %s and the %s are both %s", ErrInvalidOptions, a.flag, b.flag, a.path)
			}
		}
	}
	return nil
}

func checkNotRunning(pidFile string, log *slog.Logger) error {
	pids, err := readPIDFile(pidFile)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return nil
	case err != nil:
		log.Warn("ignoring unreadable pid file", "path", pidFile, "err", err)
		return nil
	}
	for _, pid := range pids {
		if pid != os.Getpid() && proc.Alive(pid) {
			return fmt.Errorf("upgrader: already running as pid %d (pid file %s)", pid, pidFile)
		}
	}
	if len(pids) > 0 {
		log.Warn("taking over stale pid file", "path", pidFile, "stale_pid", pids[0])
	}
	return nil
}

// Generation is 1 in the first process of a service and grows by one with
// every upgrade.
func (u *Upgrader) Generation() int { return u.gen }

// HasParent reports whether this generation was started by an upgrade.
func (u *Upgrader) HasParent() bool { return u.tf != nil && u.tf.HasParent() }

// Logger returns the logger of this generation: the Options' logger with
// pid and generation. Use it for the application's own lines, e.g. with
// slog.SetDefault, so that every line says which generation wrote it.
func (u *Upgrader) Logger() *slog.Logger { return u.log }
