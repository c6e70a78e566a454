package upgrader

import (
	"errors"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
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

// connPassing links a pool's HTTPServers to the generation they serve: in
// goroutine mode the Upgrader, in a worker process its worker side.
type connPassing struct {
	// addr is where this generation's receiver listens; "" for a fresh
	// address, which publish then records.
	addr    string
	publish func(addr string)
	// successor returns the receivers of the generation serving after
	// this one, none if it is this one or has none.
	successor func() []connTarget
}

// connTarget is a receiver of the next generation, and its process.
type connTarget struct {
	addr string
	pid  int
}

// senders are a draining server's channels to the next generation's
// receivers, used in turn so that worker processes share the load.
type senders struct {
	mu   sync.Mutex
	snds []*connpass.Sender
	next int
}

// pick returns the next channel, or nil if none is left.
func (ss *senders) pick() *connpass.Sender {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if len(ss.snds) == 0 {
		return nil
	}
	ss.next = (ss.next + 1) % len(ss.snds)
	return ss.snds[ss.next]
}

// drop closes a channel that failed and reports how many are left.
func (ss *senders) drop(snd *connpass.Sender) int {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	snd.Close()
	ss.snds = slices.DeleteFunc(ss.snds, func(s *connpass.Sender) bool { return s == snd })
	return len(ss.snds)
}

func (ss *senders) close() {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	for _, snd := range ss.snds {
		snd.Close()
	}
	ss.snds = nil
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
// receiver (stopped at the drain) and prepares its senders for the drain.
// It runs once, in setup.
func (s *HTTPServer) setupPassing(w *Worker) {
	s.passTo = func() *senders { return nil }
	pass := w.pool.pass
	switch {
	case !connpass.Supported:
		s.noPass = "handing connections over needs Linux"
	case s.NoHandOver:
		s.noPass = "HTTPServer.NoHandOver"
	case s.tls:
		s.noPass = "TLS connections are not handed over"
	case pass == nil && w.pool.procID >= 0:
		s.noPass = "this worker process's master hands no connections over"
	}
	if pass == nil || s.noPass != "" {
		return // one that hands none over takes none over either
	}
	s.passTo = sync.OnceValue(func() *senders {
		targets := pass.successor()
		if len(targets) == 0 {
			s.noPass = "no successor takes connections (a final stop, or a new generation without an HTTPServer)"
			return nil
		}
		ss := &senders{}
		for _, t := range targets {
			snd, err := connpass.Dial(t.addr, t.pid)
			if err != nil {
				w.Logger.Warn("cannot hand connections over to a process of the new generation", "new_pid", t.pid, "err", err)
				continue
			}
			ss.snds = append(ss.snds, snd)
		}
		if len(ss.snds) == 0 {
			s.noPass = "the new generation's receivers cannot be reached"
			return nil
		}
		return ss
	})
	recv, err := connpass.Listen(pass.addr, func(err error) {
		w.Logger.Warn("connections from the previous generation refused", "err", err)
	})
	if err != nil {
		w.Logger.Warn("cannot take connections over from a previous generation", "err", err)
		return
	}
	s.recv = recv
	if pass.publish != nil {
		pass.publish(recv.Address())
	}
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
	ss := s.passTo()
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
		snd := ss.pick()
		if snd == nil {
			return
		}
		gone, err := t.handOver(snd.Send)
		if gone {
			s.passed.Add(1)
			w.pool.addPassed(1)
		}
		if err != nil {
			left := ss.drop(snd)
			w.Logger.Warn("handing a connection over to the new generation failed", "passed", s.passed.Load(), "channels_left", left, "err", err)
			if left == 0 {
				s.passFailed.Store(true)
				w.Logger.Warn("no channel to the new generation left: the other connections drain here")
				return
			}
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
	if ss := s.passTo(); ss != nil {
		ss.close()
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
func (u *Upgrader) successorConns() []connTarget {
	if u.state == nil {
		return nil
	}
	st, err := u.state.read()
	if err != nil || st.PID == os.Getpid() || st.Conns == "" {
		return nil
	}
	return []connTarget{{addr: st.Conns, pid: st.PID}}
}

// connsPrefix begins the addresses the worker processes of this service
// receive connections on, "" where connections do not move.
func (u *Upgrader) connsPrefix() string {
	if !connpass.Supported || u.state == nil {
		return ""
	}
	id := u.state.id()
	if id == "" {
		return ""
	}
	return "@handoff-conns-" + id
}

// workerConnPassing is a worker process's link to its generation's
// passing: it receives on PREFIX-gGEN-PID and, at its drain, hands its
// connections to the workers of the next generation, in turn.
func (u *Upgrader) workerConnPassing() *connPassing {
	prefix := u.worker.conns
	if prefix == "" || !connpass.Supported {
		return nil
	}
	return &connPassing{
		addr: fmt.Sprintf("%s-g%d-%d", prefix, u.gen, os.Getpid()),
		successor: func() []connTarget {
			next := fmt.Sprintf("%s-g%d-", prefix, u.gen+1)
			addrs, err := connpass.Lookup(next)
			if err != nil {
				u.log.Warn("cannot find the new generation's workers to hand connections over to", "err", err)
				return nil
			}
			var ts []connTarget
			for _, a := range addrs {
				if pid, err := strconv.Atoi(strings.TrimPrefix(a, next)); err == nil {
					ts = append(ts, connTarget{addr: a, pid: pid})
				}
			}
			return ts
		},
	}
}
