package upgrader

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cloudflare/tableflip"
	"github.com/gohandoff/handoff/control"
	"github.com/gohandoff/handoff/internal/proc"
)

// Defaults for the zero Options.
const (
	DefaultUpgradeTimeout = 60 * time.Second
	DefaultDrainTimeout   = 30 * time.Second
)

// tableflipParentEnv is tableflip's marker of a process started by an
// upgrade. It is read once by New and removed, so that nothing the
// application spawns inherits it.
const tableflipParentEnv = "TABLEFLIP_HAS_PARENT_7DIU3"

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

// UpgradeError is returned by Upgrade when the new generation could not
// be started, exited or was killed before it was ready. The generation
// that tried goes on serving.
type UpgradeError struct {
	// Err says why in one line: the new generation's exit status, the
	// upgrade timeout, or why it could not be started.
	Err error
	// Stderr holds the new generation's last lines of stderr, at most
	// StderrTailLines.
	Stderr []string
}

func (e *UpgradeError) Error() string { return e.Err.Error() }

func (e *UpgradeError) Unwrap() error { return e.Err }

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

// Upgrader runs one generation of a service: it owns the listeners, which
// it inherits from the previous generation and passes to the next, the
// pool of workers, the PID file and the control socket.
//
// Only one Upgrader may exist in a process.
type Upgrader struct {
	opts    Options
	log     *slog.Logger
	tf      handover
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
	phaseMu   sync.Mutex   // held while an upgrade's outcome sets the phase
	phase     atomic.Value // string
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
	// kept: the sockets kept for the stand-by, copied once (keepOnce) by
	// the first of stopAccepting and the drain, before either closes the
	// listeners.
	kept     *keptSockets
	keepOnce sync.Once

	worker  *workerSide // set in a worker process
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
func New(opts Options) (*Upgrader, error) { return newUpgrader(opts, tableflipHandover) }

func newUpgrader(opts Options, startHandover newHandover) (*Upgrader, error) {
	if opts.UpgradeTimeout <= 0 {
		opts.UpgradeTimeout = DefaultUpgradeTimeout
	}
	if opts.DrainTimeout <= 0 {
		opts.DrainTimeout = DefaultDrainTimeout
	}
	if opts.Workers <= 0 {
		opts.Workers = runtime.GOMAXPROCS(0)
	}
	if opts.ControlSocket == "" && opts.PIDFile != "" {
		opts.ControlSocket = control.SocketPath(opts.PIDFile)
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.WorkerMode == "" {
		opts.WorkerMode = GoroutineWorkers
	}
	if opts.MaxDraining <= 0 {
		opts.MaxDraining = DefaultMaxDraining
	}
	if opts.MaxDrainingPolicy == "" {
		opts.MaxDrainingPolicy = DrainingKillOldest
	}
	if opts.KernelSteering && opts.ListenConfig == nil {
		opts.ListenConfig = steerListenConfig()
	}
	if opts.WorkersPIDFile == "" && opts.PIDFile != "" {
		opts.WorkersPIDFile = workersPIDFile(opts.PIDFile)
	}
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
	hasParent := os.Getenv(tableflipParentEnv) != ""
	if err := checkPaths(opts); err != nil {
		return nil, err
	}
	if !hasParent && opts.PIDFile != "" {
		if err := checkPIDDir(opts.PIDFile); err != nil {
			return nil, err
		}
		if err := checkPIDPath(opts.PIDFile); err != nil {
			return nil, err
		}
		if opts.WorkerMode == ProcessWorkers && opts.WorkersPIDFile != "" {
			if err := checkPIDPath(opts.WorkersPIDFile); err != nil {
				return nil, err
			}
		}
		gen := 1
		if restored {
			gen = restoredGen
		}
		if err := checkNotRunning(opts.PIDFile, opts.Logger.With("pid", os.Getpid(), "generation", gen)); err != nil {
			return nil, err
		}
	}

	tf, err := startHandover(tableflip.Options{
		UpgradeTimeout: opts.UpgradeTimeout,
		ListenConfig:   opts.ListenConfig,
	}, hasParent)
	if err != nil {
		return nil, fmt.Errorf("upgrader: %w", err)
	}
	os.Unsetenv(tableflipParentEnv)
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
	u.phase.Store("starting")
	if err := u.loadState(); err != nil {
		u.Stop()
		return nil, err
	}
	if restored {
		u.gen = restoredGen
	}
	u.log = opts.Logger.With("pid", os.Getpid(), "generation", u.gen)
	if restored {
		u.log.Warn("restored: the previous generation started this build again after the new one died on probation")
	}
	if u.sd, err = newSystemd(tf, hasParent); err != nil {
		tf.Stop()
		return nil, err
	}
	u.inheritStderr()
	if u.ppid != 0 {
		u.log.Info("new generation starting", "parent_pid", u.ppid, "version", opts.Version)
		go u.watchParent()
	} else {
		close(u.link)
		close(u.parent)
		u.log.Info("starting", "version", opts.Version)
	}
	if opts.ControlSocket != "" {
		if err := u.listenControl(); err != nil {
			u.Stop() // in a new generation, leaves the inherited sockets alone
			return nil, err
		}
	}
	return u, nil
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

// listen returns the socket for network and addr: passed by systemd,
// inherited from the previous generation, or created.
func (u *Upgrader) listen(network, addr string) (net.Listener, error) {
	if err := u.claim(network, addr); err != nil {
		return nil, err
	}
	ln, err := u.activatedListener(network, addr)
	if err == nil && ln == nil {
		if isUnixPath(network, addr) {
			ln, err = u.listenUnix(network, addr)
		} else {
			ln, err = u.tf.Listen(network, addr)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("upgrader: listen on %s %s: %w", network, addr, err)
	}
	return ln, nil
}

// Listen returns a listener inherited from the previous generation, or
// creates it. Call it before Serve, for every listener the service needs.
func (u *Upgrader) Listen(network, addr string) (net.Listener, error) {
	var ln net.Listener
	var err error
	if u.worker != nil {
		ln, err = u.worker.listen(network, addr)
		if err != nil {
			err = fmt.Errorf("upgrader: listen on %s %s: %w", network, addr, err)
		}
	} else {
		ln, err = u.listen(network, addr)
	}
	if err != nil {
		return nil, err
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	u.lns = append(u.lns, ln)
	if c, ok := ln.(syscall.Conn); ok {
		u.socks = append(u.socks, sockRef{name: fdName(network, addr), addr: addr, conn: c})
	}
	u.addrs = append(u.addrs, network+"://"+ln.Addr().String())
	return ln, nil
}

// ListenPacket returns a packet conn inherited from the previous
// generation, or creates it. Call it before Serve.
func (u *Upgrader) ListenPacket(network, addr string) (net.PacketConn, error) {
	var pc net.PacketConn
	var err error
	if u.worker != nil {
		pc, err = u.worker.listenPacket(network, addr)
	} else if err = u.claim(network, addr); err != nil {
		return nil, err
	} else if pc, err = u.activatedPacketConn(network, addr); err == nil && pc == nil {
		pc, err = u.tf.ListenPacket(network, addr)
	}
	if err != nil {
		return nil, fmt.Errorf("upgrader: listen on %s %s: %w", network, addr, err)
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	u.pcs = append(u.pcs, pc)
	if c, ok := pc.(syscall.Conn); ok {
		u.socks = append(u.socks, sockRef{name: fdName(network, addr), addr: addr, conn: c})
	}
	u.addrs = append(u.addrs, network+"://"+pc.LocalAddr().String())
	return pc, nil
}

// claim refuses a second socket for the same network and address: the
// next generation finds each socket by the address it was asked with, so
// two sockets on "127.0.0.1:0" would be mixed up there.
func (u *Upgrader) claim(network, addr string) error {
	u.mu.Lock()
	defer u.mu.Unlock()
	key := network + " " + addr
	if slices.Contains(u.claimed, key) {
		return fmt.Errorf("upgrader: listen on %s %s: a socket was already asked for with this address; the next generation finds sockets by the address they were asked with, so give each a distinct one", network, addr)
	}
	u.claimed = append(u.claimed, key)
	return nil
}

// Ready returns a channel closed once this generation is ready: every
// worker serves, the PID file is written and the previous generation was
// told to drain.
func (u *Upgrader) Ready() <-chan struct{} { return u.ready }

// Stop ends this generation gracefully: a running upgrade is abandoned and
// Serve drains the pool and returns. Stop returns once the sockets this
// process must clean up (its unix sockets, unless a new generation took
// them over) are removed. It is safe to call more than once.
func (u *Upgrader) Stop() {
	if u.worker != nil {
		u.worker.stop()
		return
	}
	u.mu.Lock()
	if u.ppid != 0 && !u.isReady {
		// tableflip would unlink the unix sockets this new generation
		// inherited, the control socket among them, while the previous
		// generation goes on serving on them: leave them to the OS,
		// which closes them when this process exits.
		u.abortOnce.Do(func() { close(u.abort) })
		u.mu.Unlock()
		return
	}
	u.tf.Stop()
	u.mu.Unlock()
	<-u.tf.Exit()
}

// markReady publishes this generation once its pool is ready.
func (u *Upgrader) markReady() error {
	select {
	case <-u.abort:
		return ErrStopping
	default:
	}
	u.publishWorkers(true)
	if u.opts.PIDFile != "" {
		if err := writePIDFile(u.opts.PIDFile, os.Getpid()); err != nil {
			return err
		}
	}
	if err := u.writeState(time.Time{}); err != nil {
		return err
	}
	// Ordered against Stop: a new generation is either aborted before it
	// told its parent it is ready, or ready.
	u.mu.Lock()
	select {
	case <-u.abort:
		u.mu.Unlock()
		return ErrStopping
	default:
	}
	u.restoreStderr()
	if err := u.tf.Ready(); err != nil {
		u.mu.Unlock()
		return fmt.Errorf("upgrader: report ready to parent pid %d: %w", u.ppid, err)
	}
	u.isReady = true
	u.readyAt = time.Now()
	u.phase.Store("ready")
	close(u.ready)
	close(u.gate)
	u.mu.Unlock()
	u.openWorkers()
	if u.ppid != 0 {
		u.countReadyAfterUpgrade(u.upgradeStart)
	}
	u.log.Info("ready", "addrs", strings.Join(u.addrs, ","), "workers", u.opts.Workers, "startup", time.Since(u.started).Round(time.Millisecond))
	u.closeUnusedActivated()
	u.sdReady()
	return nil
}

// writeState tells the next or previous generation who this one is, and
// passes on the service's counters.
func (u *Upgrader) writeState(upgradeStart time.Time) error {
	u.absorbDrains()
	u.mu.Lock()
	st := u.statsToPassLocked()
	u.mu.Unlock()
	return u.state.write(genState{Generation: u.gen, PID: os.Getpid(), Version: u.opts.Version, FirstStart: u.first,
		UpgradeStart: upgradeStart, Stats: st})
}

// watchParent closes link once the previous generation has ended
// tableflip's parent link, which it does right after its handover (see
// endParentLink), and parent once it has exited, after its drain.
func (u *Upgrader) watchParent() {
	defer close(u.parent)
	err := u.tf.WaitForParent(context.Background())
	close(u.link)
	if err != nil {
		u.log.Warn("previous generation ended its link abnormally", "parent_pid", u.ppid, "err", err)
	}
	if proc.Alive(u.ppid) {
		u.log.Info("previous generation let go of this one: it drains on, and upgrades may start", "parent_pid", u.ppid)
		proc.WaitGone(context.Background(), u.ppid)
	}
	u.log.Info("previous generation exited", "parent_pid", u.ppid)
}

// UpgradeResult describes an upgrade: the pids of the old and the new
// generation, the new one's generation and version, and how long it took
// to be ready. Its fields are those of control.UpgradeResult, the wire
// form the control socket sends.
type UpgradeResult struct {
	OldPID     int
	NewPID     int
	Generation int
	Version    string
	Duration   time.Duration
}

// Upgrade starts the next generation from the executable at this
// process's path, which may have been replaced, and waits until it is
// ready or has failed. Once it succeeds, this generation drains and Serve
// returns. On failure this generation goes on serving and the error is an
// *UpgradeError, with the new generation's last lines of stderr.
//
// Only one upgrade runs at a time: a call during another one returns
// ErrUpgradeInProgress. An upgrade never waits for older generations to
// finish draining: they drain on, each to its own deadline, up to
// Options.MaxDraining of them (overlap.go). With a probation, a call made
// while the previous generation stands by waits, bounded by ctx, until the
// probation is over.
func (u *Upgrader) Upgrade(ctx context.Context) (UpgradeResult, error) {
	if u.worker != nil {
		return UpgradeResult{OldPID: os.Getpid()}, errWorkerUpgrade
	}
	return u.upgrade(ctx, func(string, string) {})
}

func (u *Upgrader) upgrade(ctx context.Context, progress func(step, msg string)) (UpgradeResult, error) {
	res := UpgradeResult{OldPID: os.Getpid()}
	if !u.upgrading.CompareAndSwap(false, true) {
		if u.rolling.Load() {
			return res, ErrRollInProgress
		}
		return res, ErrUpgradeInProgress
	}
	defer u.upgrading.Store(false)
	// The end first: a generation that handed over or stops is ready
	// too, and a select would pick either at random.
	select {
	case <-u.exit:
		if u.phase.Load() == "draining" {
			return res, ErrUpgraded
		}
		return res, ErrStopping
	default:
	}
	select {
	case <-u.ready:
	default:
		return res, ErrNotReady
	}
	if err := u.waitLink(ctx, progress); err != nil {
		return res, err
	}
	if err := u.checkDrainingCap(); err != nil {
		u.log.Warn("upgrade refused", "err", err)
		return res, err
	}
	start := time.Now()
	if err := u.writeState(start); err != nil {
		return res, err
	}
	exe := os.Args[0]
	progress("start", "starting new generation from "+exe)
	u.log.Info("upgrade starting", "exe", exe)
	// Exit() is closed as soon as tf.Upgrade returns: hold phaseMu until
	// the phase says whether this generation drains after an upgrade or
	// stops, which drain reads.
	u.phaseMu.Lock()
	u.setPhase("upgrading")
	u.sdReloading()
	u.publishWorkers(false)
	relay := u.captureStderr()
	mark, unmark := markTree()
	err := u.tfUpgrade()
	unmark()
	if err != nil {
		u.killTree(mark, err)
	}
	tail := relay.finish(err != nil)
	took := time.Since(start)
	phase := "draining"
	if err != nil {
		phase = "ready"
		u.publishWorkers(true)
	}
	var st genState
	var serr error
	if err == nil {
		// Before the phase lock is let go: the drain, which waits for
		// it, must find the successor (probation.go).
		st, serr = u.state.read()
		u.mu.Lock()
		u.successor, u.successorAt = st.PID, time.Now()
		u.mu.Unlock()
	}
	stopAfter := u.setPhase(phase)
	u.phaseMu.Unlock()
	if err != nil {
		var result string
		result, err = u.explain(err, took, tail)
		if errors.Is(err, ErrStopping) {
			u.log.Info("upgrade abandoned: stopping", "duration", took.Round(time.Millisecond))
			return res, err
		}
		if result != "" {
			u.countFailedUpgrade(result)
		}
		var ue *UpgradeError
		if errors.As(err, &ue) {
			u.reclaimPIDFile()
		}
		u.mu.Lock()
		u.lastError = err.Error()
		u.mu.Unlock()
		u.log.Error("upgrade failed, this generation goes on serving", "err", err, "duration", took.Round(time.Millisecond))
		u.sdUpgradeFailed(err)
		if stopAfter {
			u.Stop()
		}
		return res, err
	}
	if serr != nil {
		u.log.Warn("new generation ready but its state is unreadable", "err", serr)
	}
	res.NewPID, res.Generation, res.Version, res.Duration = st.PID, st.Generation, st.Version, took
	u.stopAccepting()
	u.sdUpgraded(st.PID)
	u.log.Info("upgrade done, draining", "new_pid", st.PID, "new_generation", st.Generation, "duration", took.Round(time.Millisecond))
	progress("ready", fmt.Sprintf("new generation pid %d ready in %d ms", st.PID, took.Milliseconds()))
	if stopAfter && st.PID > 0 {
		u.log.Info("stopping the new generation too, as asked during the upgrade", "new_pid", st.PID)
		if err := terminate(st.PID); err != nil {
			u.log.Error("cannot stop the new generation", "new_pid", st.PID, "err", err)
		}
	}
	return res, nil
}

// tfUpgrade runs tableflip's upgrade. Our link channel closes when
// tableflip's WaitForParent returns, which can be a moment before
// tableflip's own loop has seen the parent link end and refuses with
// "parent hasn't exited": that refusal is retried for up to a second.
func (u *Upgrader) tfUpgrade() error {
	deadline := time.Now().Add(time.Second)
	for {
		err := u.tf.Upgrade()
		if err == nil || err.Error() != "parent hasn't exited" || time.Now().After(deadline) {
			return err
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// setPhase sets the phase and, leaving "upgrading", reports (and forgets)
// whether a stop was asked during the upgrade.
func (u *Upgrader) setPhase(phase string) (stopAfter bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.phase.Store(phase)
	stopAfter, u.stopAfter = u.stopAfter, false
	return stopAfter
}

// requestStop stops this generation gracefully, as SIGTERM and the control
// socket ask; by says how, as a log key and value. During an upgrade it
// only notes the request and returns false: the upgrade ends first, so
// that a new generation is never killed once it may serve, and then both
// generations drain and exit. A second request during the upgrade
// abandons it.
func (u *Upgrader) requestStop(by ...any) (now bool) {
	u.mu.Lock()
	if u.phase.Load() == "upgrading" && !u.stopAfter {
		u.stopAfter = true
		u.mu.Unlock()
		u.log.Info("stop requested during an upgrade: both generations stop once it has ended", by...)
		return false
	}
	succ := 0
	if u.phase.Load() == "draining" {
		succ = u.successor
	}
	u.mu.Unlock()
	if succ > 0 {
		// Asked of this generation after its handover: the service is the
		// new generation now.
		u.log.Info("stop requested after the handover: passed on to the new generation", append(by, "new_pid", succ)...)
		if err := terminate(succ); err != nil {
			u.log.Error("cannot stop the new generation", "new_pid", succ, "err", err)
		}
		return true
	}
	u.log.Info("stopping", by...)
	u.Stop()
	return true
}

// handedOverTo returns the pid of the new generation once this one has
// handed over to it, 0 before.
func (u *Upgrader) handedOverTo() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.phase.Load() != "draining" {
		return 0
	}
	return u.successor
}

// reclaimPIDFile writes this process's pid back into the PID file after a
// failed upgrade, in case the new generation wrote its own and then died.
func (u *Upgrader) reclaimPIDFile() {
	if u.opts.PIDFile == "" {
		return
	}
	if pids, err := readPIDFile(u.opts.PIDFile); err == nil && len(pids) == 1 && pids[0] == os.Getpid() {
		return
	}
	if err := writePIDFile(u.opts.PIDFile, os.Getpid()); err != nil {
		u.log.Error("pid file does not name the serving generation and cannot be rewritten", "err", err)
		return
	}
	u.log.Warn("pid file rewritten with the serving generation's pid", "path", u.opts.PIDFile)
}

// childRe matches tableflip's errors about the new process; compiled
// on first use, not at every start.
var childRe = sync.OnceValue(func() *regexp.Regexp {
	return regexp.MustCompile(`^(?:new )?child pid=(\d+) (exited|timed out)(?:: (.*))?$`)
})

// explain turns tableflip's errors into an operator's message: a one-line
// *UpgradeError when the new generation failed, with its last lines of
// stderr, and the result label of handoff_upgrades_total; or one of the
// sentinel errors and no label.
func (u *Upgrader) explain(err error, took time.Duration, tail []string) (result string, _ error) {
	msg := err.Error()
	switch msg {
	case "terminating":
		return "", ErrStopping
	case "upgrade in progress":
		return "", ErrUpgradeInProgress
	case "already upgraded":
		return "", ErrUpgraded
	case "process is not ready yet":
		return "", ErrNotReady
	}
	took = took.Round(time.Millisecond)
	var why error
	result = resultError
	if m := childRe().FindStringSubmatch(msg); m != nil {
		pid, status := m[1], m[3]
		result = resultExited
		switch {
		case m[2] == "timed out":
			result = resultTimeout
			why = fmt.Errorf("upgrader: upgrade failed: new generation pid %s timed out: not ready within the upgrade timeout of %s, killed", pid, u.opts.UpgradeTimeout)
		case status == "":
			why = fmt.Errorf("upgrader: upgrade failed: new generation pid %s exited with exit status 0 before it was ready, after %s", pid, took)
		case strings.HasPrefix(status, "signal: "):
			why = fmt.Errorf("upgrader: upgrade failed: new generation pid %s was killed by %s before it was ready, after %s", pid, status, took)
		default:
			why = fmt.Errorf("upgrader: upgrade failed: new generation pid %s exited with %s before it was ready, after %s", pid, status, took)
		}
	} else if cause, ok := strings.CutPrefix(msg, "can't start child: can't start process "+os.Args[0]+": "); ok {
		cause = strings.TrimPrefix(cause, fmt.Sprintf("exec: %q: ", os.Args[0]))
		why = fmt.Errorf("upgrader: upgrade failed: cannot start the new generation from %s: %s%s", os.Args[0], cause, execHint(cause))
	} else {
		why = fmt.Errorf("upgrader: upgrade failed: %w", err)
	}
	return result, &UpgradeError{Err: why, Stderr: tail}
}

// execHint says in words what an exec error usually means.
func execHint(cause string) string {
	switch {
	case strings.HasSuffix(cause, "exec format error"):
		return " (not an executable for this machine: built for another architecture, truncated or corrupt)"
	case strings.HasSuffix(cause, "permission denied"):
		return " (the file is not executable)"
	}
	return ""
}

// Status returns a snapshot of this generation.
func (u *Upgrader) status() *control.Status {
	draining := u.liveDraining()
	u.mu.Lock()
	defer u.mu.Unlock()
	st := &control.Status{
		PID:        os.Getpid(),
		Generation: u.gen,
		Version:    u.opts.Version,
		Started:    u.started,
		Uptime:     time.Since(u.started).Round(time.Millisecond),
		State:      u.phase.Load().(string),
		Listeners:  append([]string(nil), u.addrs...),
		LastError:  u.lastError,

		UpgradeInProgress: u.upgrading.Load() && !u.rolling.Load(),
	}
	select {
	case <-u.parent:
	default:
		st.ParentPID = u.ppid
	}
	if u.pool != nil {
		st.Workers = u.pool.status()
		st.Rollback = rollbackOf(u.pool)
	}
	st.Generations = generations(control.GenerationStatus{PID: st.PID, Generation: st.Generation, Version: st.Version, State: st.State}, draining)
	return st
}
