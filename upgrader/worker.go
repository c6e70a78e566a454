package upgrader

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-systemd/v22/activation"
	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/oklog/run"
)

// workerSide is what a worker process got from its master: the sockets
// by the socket-activation convention, the NOTIFY_SOCKET to report ready
// on, and the lifeline whose EOF says the master is gone.
type workerSide struct {
	id       int
	files    map[string]*os.File
	notify   string
	lifeline *os.File // nil where it cannot be watched
	stopC    chan struct{}
	stopOnce sync.Once
	// gate is closed when the master sends gateOpen on the lifeline: its
	// generation is ready, so this worker may accept (see gatedListener).
	gate     chan struct{}
	gateOnce sync.Once
	// conns is the prefix of the receivers' addresses of this service's
	// worker processes (connsEnv), "" if they hand over no connections.
	conns string
}

// gateOpen is the byte a master writes on a worker's lifeline once its
// generation is ready.
const gateOpen = 'G'

// takeWorkerRole reports whether this process was started as a worker by
// a handoff master and, if so, takes what the master passed and removes
// the variables that said so, so that nothing the worker starts sees them.
func takeWorkerRole() (*workerSide, int, error) {
	v, ok := os.LookupEnv(workerEnv)
	if !ok {
		return nil, 0, nil
	}
	os.Unsetenv(workerEnv)
	idS, genS, _ := strings.Cut(v, ":")
	id, err1 := strconv.Atoi(idS)
	gen, err2 := strconv.Atoi(genS)
	if err1 != nil || err2 != nil {
		return nil, 0, fmt.Errorf("upgrader: worker marker %s=%q is not ID:GENERATION", workerEnv, v)
	}
	w := &workerSide{id: id, files: make(map[string]*os.File), stopC: make(chan struct{}), gate: make(chan struct{})}
	if _, ok := os.LookupEnv("LISTEN_PID"); !ok {
		// The master starts its own executable without a shell: the
		// sockets it passed are this process's (see procSpec.command).
		os.Setenv("LISTEN_PID", strconv.Itoa(os.Getpid()))
	}
	if os.Getenv("LISTEN_FDS") != "" && os.Getenv("LISTEN_PID") != strconv.Itoa(os.Getpid()) {
		return nil, 0, fmt.Errorf("upgrader: worker %d: LISTEN_PID=%s is not this process (pid %d)", id, os.Getenv("LISTEN_PID"), os.Getpid())
	}
	for _, f := range activation.Files(true) {
		w.files[f.Name()] = f
	}
	w.notify = os.Getenv("NOTIFY_SOCKET")
	os.Unsetenv("NOTIFY_SOCKET")
	w.conns = os.Getenv(connsEnv)
	os.Unsetenv(connsEnv)
	lifeline, err := takeLifeline()
	if err != nil {
		return nil, 0, fmt.Errorf("upgrader: worker %d: %w", id, err)
	}
	w.lifeline = lifeline
	return w, gen, nil
}

// errWorkerUpgrade is Upgrade's error in a worker process, which has no
// listeners of its own to hand over.
var errWorkerUpgrade = errors.New("upgrader: Upgrade called in a worker process: only its master upgrades the service (send the master SIGHUP, or run handoff reload)")

// newWorker returns the Upgrader of a worker process: Listen and
// ListenPacket return the inherited sockets, and Serve runs the worker
// function until SIGTERM or the master's death.
func newWorker(opts Options, w *workerSide, gen int) *Upgrader {
	u := &Upgrader{
		opts:    opts,
		worker:  w,
		gen:     gen,
		started: time.Now(),
		ready:   make(chan struct{}),
		parent:  make(chan struct{}),
		force:   make(chan struct{}),
		exit:    make(chan struct{}),
		abort:   make(chan struct{}),
		gate:    make(chan struct{}),
		sd:      &systemd{}, // a worker's NOTIFY_SOCKET is its master's, used by workerReady
		drainSt: newDrainState(),
		sigs:    notifySignals(stopSignals, masterSignals),
	}
	u.role = workerRole{u: u, w: w}
	close(u.parent)
	u.opts.PIDFile, u.opts.ControlSocket, u.opts.Workers = "", "", 1
	u.log = opts.Logger.With("pid", os.Getpid(), "generation", gen, "worker", w.id)
	u.log.Info("worker starting", "version", opts.Version, "sockets", len(w.files))
	return u
}

// socket takes the inherited socket passed under the name of network and
// addr.
func (w *workerSide) socket(network, addr string) (*os.File, error) {
	name := fdName(network, addr)
	f, ok := w.files[name]
	if !ok {
		return nil, fmt.Errorf("upgrader: worker has no inherited socket %q (has %d)", name, len(w.files))
	}
	delete(w.files, name)
	return f, nil
}

func (w *workerSide) listen(network, addr string) (net.Listener, error) {
	f, err := w.socket(network, addr)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return net.FileListener(f)
}

func (w *workerSide) listenPacket(network, addr string) (net.PacketConn, error) {
	f, err := w.socket(network, addr)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return net.FilePacketConn(f)
}

func (w *workerSide) stop() { w.stopOnce.Do(func() { close(w.stopC) }) }

// serveWorker is Serve in a worker process: a pool of one goroutine runs
// fn over the inherited sockets; READY=1 goes to the master once it is
// ready; SIGTERM or SIGINT drain it, a second one cuts the drain short,
// and EOF on the lifeline (the master is gone) stops it at once.
func (u *Upgrader) serveWorker(ctx context.Context, fn WorkerFunc) error {
	w := u.worker
	// Accept only once the master's generation is ready: a new generation
	// that fails before, and its workers with it, takes no connection from
	// the queue the serving generation shares. Without a lifeline there is
	// no gate.
	var gate <-chan struct{}
	if w.lifeline != nil {
		gate = w.gate
	}
	p := newPool(1, fn, u.lns, u.pcs, u.log, gate)
	p.procID = w.id
	p.pass = u.workerConnPassing()
	u.mu.Lock()
	u.pool = p
	u.mu.Unlock()
	p.start()

	var g run.Group
	{
		g.Add(func() error {
			<-w.stopC
			return u.drain(p, nil)
		}, func(error) { u.Stop() })
	}
	addReadyActor(&g, u.workerReady, 0, nil, p.ready(), u.sigs.done)
	addSignalActor(&g, u.onWorkerSignal, u.sigs)
	u.addLifelineActor(&g)
	u.addContextActor(&g, ctx)
	err := g.Run()
	if err != nil {
		u.log.Error("worker failed", "err", err)
	} else {
		u.log.Info("worker exited")
	}
	return err
}

// addLifelineActor reads the worker's lifeline from its master: the
// master's word that the generation is ready opens the accept gate, and
// its end (the master is gone) stops the worker at once.
func (u *Upgrader) addLifelineActor(g *run.Group) {
	w := u.worker
	if w.lifeline == nil {
		return
	}
	done := make(chan struct{})
	g.Add(func() error {
		var b [64]byte
		for {
			n, err := w.lifeline.Read(b[:])
			if err == nil {
				if bytes.IndexByte(b[:n], gateOpen) >= 0 {
					w.gateOnce.Do(func() { close(w.gate) })
				}
				continue
			}
			select {
			case <-done:
				return nil
			default:
			}
			u.log.Error("master gone, worker stopping at once", "err", err)
			u.forceOnce.Do(func() { close(u.force) })
			u.Stop()
			<-done
			return nil
		}
	}, func(error) {
		close(done)
		w.lifeline.SetReadDeadline(time.Now())
	})
}

func (u *Upgrader) onWorkerSignal(sig os.Signal) {
	if !slices.Contains(stopSignals, sig) {
		u.log.Info("signal ignored by a worker: send it to the master", "signal", sig.String())
		return
	}
	select {
	case <-u.worker.stopC:
		if u.sameStop() {
			u.log.Info("stop signal again, taken as the same stop", "signal", sig.String())
			return
		}
		u.log.Warn("second stop signal, cutting the drain short", "signal", sig.String())
		u.forceOnce.Do(func() { close(u.force) })
	default:
		u.stopSignalAt.CompareAndSwap(0, time.Now().UnixNano())
		u.log.Info("stopping", "signal", sig.String())
		u.Stop()
	}
}

// workerReady tells the master this worker serves, with READY=1 on the
// NOTIFY_SOCKET it passed; the variable is set only for that call.
//
// The worker is ready in its own eyes (Ready, the phase) before it tells
// the master, so that once the master counts it ready, nothing the worker
// answers says it is still starting.
func (u *Upgrader) workerReady() error {
	if from, ok := u.phase.to(phaseReady); !ok {
		u.log.Debug("ready while no longer starting: phase kept", "phase", from)
	}
	close(u.ready)
	if ns := u.worker.notify; ns != "" {
		os.Setenv("NOTIFY_SOCKET", ns)
		if _, err := daemon.SdNotify(true, daemon.SdNotifyReady); err != nil {
			return fmt.Errorf("upgrader: report ready to the master on %s: %w", ns, err)
		}
	}
	u.log.Info("worker ready", "startup", time.Since(u.started).Round(time.Millisecond))
	return nil
}
