package upgrader

import (
	"errors"
	"net/http"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/gohandoff/handoff/internal/connpass"
)

// Handing an HTTPServer's keep-alive connections to the next generation.
//
// A generation of goroutine workers receives connections on a
// connpass.Receiver, whose address it publishes in the state file with
// its ready (connPassing.publish). When it drains after an upgrade, each
// HTTP/1.1 connection that waits for its next request is passed to the
// new generation, which serves it as if it had accepted it: the client
// sees neither a close nor a Connection: close. A response written during
// such a drain keeps the connection open, and the connection moves once
// it waits again.
//
// A connection moves only when net/http holds no byte of it: its serving
// goroutine is in the first read since the connection went idle (or
// new), asking for its whole buffer, so nothing was read ahead. handOver
// interrupts that read with a deadline in the past; if a byte came first,
// the connection stays and is served here. Bytes still in the kernel's
// buffer travel with the socket.
//
// What cannot move drains as before, with the reason in the log: TLS (and
// so HTTP/2) connections, process workers, no receiver in the new
// generation, or a channel that failed.

// connPassing links a goroutine pool's HTTPServers to the Upgrader.
type connPassing struct {
	// publish records this generation's receiver address.
	publish func(addr string)
	// successor returns the serving generation's receiver address and
	// pid, or "" if it is this generation or has none.
	successor func() (addr string, pid int)
}

// aLongTimeAgo interrupts a read at once.
var aLongTimeAgo = time.Unix(1, 0)

// handOver moves c with send if net/http holds no byte of it. It reports
// whether c is gone (the next generation has it, or may have it); send's
// error tells why it stays, or why it left unconfirmed.
func (c *trackedConn) handOver(send func(syscall.Conn) error) (gone bool, err error) {
	sc, ok := c.Conn.(syscall.Conn)
	if !ok {
		return false, nil
	}
	c.mu.Lock()
	if !c.plain || c.started.Load() || !c.inRead || !c.readFull || c.moving || c.moved {
		c.mu.Unlock()
		return false, nil
	}
	c.moving = true
	// Under mu: a Read that returns meanwhile restores net/http's
	// deadline after this one, never before.
	c.Conn.SetReadDeadline(aLongTimeAgo)
	for c.moving && !c.parked {
		c.condLocked().Wait()
	}
	if !c.moving {
		c.mu.Unlock()
		return false, nil // a byte came first
	}
	c.mu.Unlock()
	err = send(sc)
	gone = err == nil || errors.Is(err, connpass.ErrUnconfirmed)
	c.mu.Lock()
	c.moving, c.moved = false, gone
	c.condLocked().Broadcast()
	c.mu.Unlock()
	return gone, err
}

// setupPassing, on a pool that passes connections, starts this server's
// receiver (stopped at the drain) and prepares its sender for the drain.
// It runs once, in setup.
func (s *HTTPServer) setupPassing(w *Worker) {
	s.passTo = func() *connpass.Sender { return nil }
	pass := w.pool.pass
	switch {
	case !connpass.Supported:
		s.noPass = "handing connections over needs Linux"
	case s.NoHandOver:
		s.noPass = "HTTPServer.NoHandOver"
	case s.tls:
		s.noPass = "TLS connections are not handed over"
	case pass == nil && w.pool.procID >= 0:
		s.noPass = "connections of worker processes are not handed over"
	}
	if pass == nil || s.noPass != "" {
		return
	}
	// One that hands none over publishes no receiver either.
	s.passTo = sync.OnceValue(func() *connpass.Sender {
		addr, pid := pass.successor()
		if addr == "" {
			s.noPass = "no successor takes connections (a final stop, or a new generation without an HTTPServer)"
			return nil
		}
		snd, err := connpass.Dial(addr, pid)
		if err != nil {
			s.noPass = "the new generation's receiver cannot be reached"
			w.Logger.Warn("cannot hand connections over to the new generation: they drain here", "new_pid", pid, "err", err)
			return nil
		}
		return snd
	})
	recv, err := connpass.Listen(func(err error) {
		w.Logger.Warn("connections from the previous generation refused", "err", err)
	})
	if err != nil {
		w.Logger.Warn("cannot take connections over from a previous generation", "err", err)
		return
	}
	s.recv = recv
	pass.publish(recv.Address())
	s.serving.Add(1)
	go func() {
		defer s.serving.Done()
		idle := s.Server.IdleTimeout
		if idle <= 0 {
			idle = s.Server.ReadTimeout // net/http's own fallback
		}
		s.Server.Serve(trackedListener{Listener: recv, plain: true, inbound: true, idle: idle})
	}()
	go func() {
		<-s.drainC
		recv.Close()
	}()
}

// passing reports whether this draining server hands its connections to
// the next generation: then a response keeps its connection open.
func (s *HTTPServer) passing() bool {
	return s.passTo != nil && s.passTo() != nil && !s.passFailed.Load()
}

// passIdle hands over every connection that waits for a request and that
// net/http holds no byte of.
func (s *HTTPServer) passIdle(w *Worker) {
	if !s.passing() {
		return
	}
	snd := s.passTo()
	s.mu.Lock()
	var idle []*trackedConn
	for c, ci := range s.conns {
		if ci.state == http.StateIdle || ci.state == http.StateNew {
			if t := trackedOf(c); t != nil && t.plain {
				idle = append(idle, t)
			}
		}
	}
	s.mu.Unlock()
	for _, t := range idle {
		if s.HandOver != nil && !s.HandOver(t) {
			continue
		}
		gone, err := t.handOver(snd.Send)
		if gone {
			s.passed.Add(1)
			w.pool.addPassed(1)
		}
		if err != nil {
			s.passFailed.Store(true)
			snd.Close()
			w.Logger.Warn("handing connections over to the new generation failed: the rest drain here", "passed", s.passed.Load(), "err", err)
			return
		}
	}
}

// logNoPass tells, at the start of a drain with connections open, why they
// drain here.
func (s *HTTPServer) logNoPass(w *Worker) {
	if s.passing() || s.noPass == "" || s.openConns() == 0 {
		return
	}
	w.Logger.Info("keep-alive connections drain here: "+s.noPass, "open", s.openConns())
}

// logPassed tells how many connections the drain handed over.
func (s *HTTPServer) logPassed(w *Worker, start time.Time) {
	if n := s.passed.Load(); n > 0 {
		w.Logger.Info("connections handed over to the new generation", "passed", n, "duration", time.Since(start).Round(time.Millisecond))
	}
	if snd := s.passTo(); snd != nil && !s.passFailed.Load() {
		snd.Close()
	}
}

// publishConns records where this generation receives connections; the
// state file tells it with the ready.
func (u *Upgrader) publishConns(addr string) {
	u.mu.Lock()
	u.connsAddr = addr
	u.mu.Unlock()
}

// successorConns returns where the serving generation receives
// connections, if that is another generation than this one.
func (u *Upgrader) successorConns() (string, int) {
	if u.state == nil {
		return "", 0
	}
	st, err := u.state.read()
	if err != nil || st.PID == os.Getpid() || st.Conns == "" {
		return "", 0
	}
	return st.Conns, st.PID
}
