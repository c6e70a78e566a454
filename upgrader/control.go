package upgrader

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"time"

	"github.com/gohandoff/handoff/control"
	"github.com/oklog/run"
)

// listenControl opens the control socket, inherited like any listener.
// The first generation removes a stale socket file left by a killed run;
// New has checked by then that no instance holds the PID file.
func (u *Upgrader) listenControl() error {
	path := u.opts.ControlSocket
	if !u.HasParent() {
		if fi, err := os.Lstat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
			if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
				c.Close()
				return fmt.Errorf("upgrader: control socket %s is in use by another instance", path)
			}
			os.Remove(path)
		}
	}
	ln, err := u.tf.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("upgrader: control socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return fmt.Errorf("upgrader: control socket: %w", err)
	}
	u.ctlLn = ln
	return nil
}

func (u *Upgrader) closeControl() {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.ctlLn != nil {
		u.ctlLn.Close()
	}
}

// serveControl answers control requests until the socket is closed, then
// waits for the requests in progress.
//
// Only the serving generation answers: a new generation shares the socket
// with the one that started it, and accepts nothing on it until it is
// ready (or must stop), so that a status or a stop sent meanwhile reaches
// the generation that serves, and waits in the socket's queue for it.
func (u *Upgrader) serveControl(done <-chan struct{}) {
	if u.ppid != 0 {
		select {
		case <-u.ready:
		case <-u.exit:
			return
		case <-done:
			return
		}
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		conn, err := u.ctlLn.Accept()
		if err != nil {
			return
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer conn.Close()
			u.handleControl(conn, done)
		}()
	}
}

func (u *Upgrader) handleControl(conn net.Conn, done <-chan struct{}) {
	w := control.NewWriter(conn)
	req, ok := u.readControlRequest(conn, w)
	if !ok {
		return
	}
	// A request this generation accepted in the moment between its
	// handover and the close of its socket belongs to the new generation:
	// a stop is passed on to it, anything else is sent back to be asked
	// again, when only the new generation answers.
	if succ := u.handedOverTo(); succ > 0 {
		if req.Cmd == control.CmdStop {
			u.requestStop("via", "control socket")
			w.Progress("stop", fmt.Sprintf("pid %d draining, passed on to the new generation pid %d", os.Getpid(), succ))
			w.Final(control.Message{Status: u.status(), Stopping: []int{os.Getpid(), succ}}, nil)
			return
		}
		w.Final(control.Message{HandedOver: succ}, fmt.Errorf("pid %d has handed over to pid %d: ask again", os.Getpid(), succ))
		return
	}
	switch req.Cmd {
	case control.CmdStatus:
		w.Final(control.Message{Status: u.status()}, nil)
	case control.CmdUpgrade:
		u.controlUpgrade(conn, w)
	case control.CmdRestartWorkers:
		u.log.Info("rolling restart requested", "via", "control socket")
		// Each replacement's wait is bounded by the upgrade timeout.
		n, err := u.roll(context.Background(), func(msg string) { w.Progress("worker", msg) })
		w.Final(control.Message{Msg: fmt.Sprintf("%d of %d workers replaced", n, u.opts.Workers), Status: u.status()}, err)
	case control.CmdStop:
		u.controlStop(w)
	}
}

// readControlRequest reads and parses a control request from a peer it
// accepts; otherwise it answers why not and reports false.
func (u *Upgrader) readControlRequest(conn net.Conn, w *control.Writer) (control.Request, bool) {
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	r := bufio.NewReaderSize(conn, control.MaxRequestSize+1)
	line, err := r.ReadSlice('\n')
	// The peer is checked once its request is read: refused before, it
	// could fail to write to the closed connection and never read why.
	if perr := checkPeer(conn); perr != nil {
		u.log.Warn("control request refused", "err", perr)
		w.Final(control.Message{}, perr)
		return control.Request{}, false
	}
	if err != nil {
		if errors.Is(err, bufio.ErrBufferFull) {
			err = fmt.Errorf("request exceeds %d bytes", control.MaxRequestSize)
		}
		w.Final(control.Message{}, fmt.Errorf("read request: %w", err))
		return control.Request{}, false
	}
	conn.SetReadDeadline(time.Time{})
	req, err := control.ParseRequest(line)
	if err != nil {
		u.log.Warn("bad control request", "err", err)
		w.Final(control.Message{}, err)
		return control.Request{}, false
	}
	return req, true
}

// controlUpgrade runs an upgrade asked on the control socket, streaming
// its progress, and then the old generation's drain.
func (u *Upgrader) controlUpgrade(conn net.Conn, w *control.Writer) {
	u.log.Info("upgrade requested", "via", "control socket")
	ctx, cancel := context.WithTimeout(context.Background(), u.upgradeWait())
	defer cancel()
	res, err := u.upgrade(ctx, func(step, msg string) { w.Progress(step, msg) })
	wire := control.UpgradeResult(res)
	m := control.Message{Upgrade: &wire}
	var ue *UpgradeError
	if errors.As(err, &ue) {
		m.Stderr = ue.Stderr
	}
	if w.Final(m, err) == nil && err == nil {
		u.streamDrain(conn, w)
	}
}

// controlStop stops the service as asked on the control socket, and
// answers with every process that stops.
func (u *Upgrader) controlStop(w *control.Writer) {
	stopping := []int{os.Getpid()}
	if u.requestStop("via", "control socket") {
		w.Progress("stop", fmt.Sprintf("pid %d draining, timeout %s", os.Getpid(), u.opts.DrainTimeout))
	} else {
		w.Progress("stop", fmt.Sprintf("pid %d stops once the upgrade in progress has ended, with the new generation", os.Getpid()))
		// The upgrade holds the phase lock until its outcome is set:
		// the reply names the new generation too, if there is one.
		u.phaseMu.Lock()
		u.phaseMu.Unlock()
		if succ := u.handedOverTo(); succ > 0 {
			stopping = append(stopping, succ)
		}
	}
	// The old generations still draining stop too, each at its own
	// deadline: the stop waits for them all.
	stopping = append(stopping, u.drainingPIDs()...)
	w.Final(control.Message{Status: u.status(), Stopping: stopping}, nil)
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
		State:      u.phase.get().String(),
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
		st.Rollback = u.pool.rolledBack()
	}
	st.Generations = generations(control.GenerationStatus{PID: st.PID, Generation: st.Generation, Version: st.Version, State: st.State}, draining)
	return st
}

// addControlActor serves the control socket, if there is one.
func (u *Upgrader) addControlActor(g *run.Group) {
	if u.ctlLn == nil {
		return
	}
	done := make(chan struct{})
	g.Add(func() error {
		u.serveControl(done)
		<-done
		return nil
	}, func(error) {
		u.closeControl()
		close(done)
	})
}
