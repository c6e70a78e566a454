package upgrader

import (
	"errors"
	"net"
	"net/http"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/gohandoff/handoff/internal/connpass"
)

// Handing an HTTPServer's keep-alive connections to the next generation.
//
// Every HTTPServer that may hand over listens on a connpass.Receiver for
// the connections of the generation before it: in goroutine mode at an
// address the state file names with the ready, in a worker process at one
// named by the service, the server's sockets, the generation and the pid
// (workerConnPassing). When it drains after an upgrade, each plain
// HTTP/1.1 connection goes to the new generation, which serves it as if
// it had accepted it: the client sees neither a close nor a Connection:
// close.
//
// A connection moves at a request boundary, from the goroutine serving it
// (trackedConn.Read calls tryPass before its first read after a request)
// and only when net/http holds no byte of it, or only the one byte of its
// background read, which goes along. A connection waiting for its next
// request is interrupted (passIdle) to get there. Bytes still in the
// kernel's buffer travel with the socket. A response during the drain
// keeps its connection open once, so that it moves at its next boundary;
// so does each one served while the window of connections waiting on the
// hand-over is full (passWindow).
//
// What cannot move drains as before, with the reason in the log: TLS (and
// so HTTP/2) connections, NoHandOver, a connection the HandOver hook
// keeps, no receiver in the new generation, or channels that all failed.

// connPassing links a pool's HTTPServers to the generation they serve: in
// goroutine mode the Upgrader, in a worker process its worker side.
//
// Each is asked with the key of the server's listeners (serverKey): a
// connection goes only to the server of the next generation that serves
// the same sockets, never to another HTTPServer of the same program.
type connPassing struct {
	// addr is where this generation's receiver for key listens; "" for
	// a fresh address, which publish then records.
	addr    func(key string) string
	publish func(key, addr string)
	// successor returns the receivers for key of the generation serving
	// after this one, none if it is this one or has none.
	successor func(key string) []connTarget
}

// senders are a draining server's channels to the next generation's
// receivers, used in turn so that worker processes share the load.
type senders struct {
	mu   sync.Mutex
	snds []*connpass.Sender
	next int
	// dial opens channels to the generation after this one that is still
	// there: when a next generation ends its own drain (upgrades
	// overlap), the channels go to the one after it.
	dial      func() []*connpass.Sender
	redialled int
}

// channelsPerReceiver is how many channels a draining server opens to each
// receiver. Each carries one message at a time, of up to connpass.MaxBatch
// connections: the cap on connections in flight to a receiver is their
// product.
const channelsPerReceiver = 4

// passWindow is how many of a draining server's connections may wait in
// its channels at once (sent, or queued to be). A connection that comes to
// a request boundary when the window is full is not parked: it serves its
// next request here and tries again at the boundary after, and one that
// waits idle is brought back by passIdle once there is room. So at most
// passWindow clients wait on the hand-over while the rest are served,
// however many connections the drain moves.
const passWindow = channelsPerReceiver * connpass.MaxBatch

// maxRedials bounds how often a drain looks for a newer generation once
// its channels are gone.
const maxRedials = 3

// pick returns the next channel, or nil if none is left.
func (ss *senders) pick() *connpass.Sender {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if len(ss.snds) == 0 && ss.dial != nil && ss.redialled < maxRedials {
		ss.redialled++
		ss.snds = ss.dial()
	}
	if len(ss.snds) == 0 {
		return nil
	}
	ss.next = (ss.next + 1) % len(ss.snds)
	return ss.snds[ss.next]
}

// drop closes a channel that failed and reports how many are left, and
// whether this call dropped it: the connections queued on a channel fail
// together, and each drops it.
func (ss *senders) drop(snd *connpass.Sender) (left int, dropped bool) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	snd.Close()
	n := len(ss.snds)
	ss.snds = slices.DeleteFunc(ss.snds, func(s *connpass.Sender) bool { return s == snd })
	return len(ss.snds), len(ss.snds) < n
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

// setupPassing, on a pool that passes connections, starts this server's
// receiver (stopped at the drain) and prepares its senders for the drain.
// It runs once, in setup.
func (s *HTTPServer) setupPassing(w *Worker) {
	s.passTo = func() *senders { return nil }
	s.passLog = w.Logger
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
	key := serverKey(w.Listeners)
	dial := func() []*connpass.Sender {
		var snds []*connpass.Sender
		for _, t := range pass.successor(key) {
			for range channelsPerReceiver {
				snd, err := connpass.Dial(t.addr, t.pid)
				if err != nil {
					w.Logger.Warn("cannot hand connections over to a process of the new generation", "new_pid", t.pid, "err", err)
					break
				}
				snds = append(snds, snd)
			}
		}
		return snds
	}
	s.passTo = sync.OnceValue(func() *senders {
		snds := dial()
		if len(snds) == 0 {
			s.noPass = "no successor takes connections (a final stop, or a new generation without an HTTPServer)"
			return nil
		}
		return &senders{snds: snds, dial: dial}
	})
	s.startReceiving(w, pass, key)
}

// startReceiving starts this server's receiver of the previous
// generation's connections, published under key.
func (s *HTTPServer) startReceiving(w *Worker, pass *connPassing, key string) {
	addr := ""
	if pass.addr != nil {
		addr = pass.addr(key)
	}
	recv, err := connpass.Listen(addr, func(err error) {
		w.Logger.Warn("connections from the previous generation refused", "err", err)
	})
	if err != nil {
		w.Logger.Warn("cannot take connections over from a previous generation", "err", err)
		return
	}
	s.recv, s.recvDone = recv, make(chan struct{})
	if pass.publish != nil {
		pass.publish(key, recv.Address())
	}
	// The receiver serves on through this generation's own drain: a
	// connection an older generation passes meanwhile goes on to the next
	// one at its first request boundary, and nothing is refused while
	// generations overlap. stopReceiving ends it with the drain.
	go func() {
		defer close(s.recvDone)
		s.Server.Serve(trackedListener{Listener: recv, plain: true, inbound: true, idle: idleTimeout(s.Server), pass: s.tryPass})
	}()
}

// idleTimeout is how long srv lets a connection wait for its next request:
// IdleTimeout, or ReadTimeout without one, as net/http does.
func idleTimeout(srv *http.Server) time.Duration {
	if srv.IdleTimeout > 0 {
		return srv.IdleTimeout
	}
	return srv.ReadTimeout
}

// stopReceiving closes the receiver once the drain is otherwise over and
// waits for its accept loop; it reports whether there was one (then the
// connections it took meanwhile must drain too).
func (s *HTTPServer) stopReceiving() bool {
	if s.recv == nil {
		return false
	}
	s.recv.Close()
	<-s.recvDone
	return true
}

// passing reports whether this draining server hands its connections to
// the next generation: then a response keeps its connection open.
func (s *HTTPServer) passing() bool {
	return s.passTo != nil && s.passTo() != nil && !s.passFailed.Load()
}

// passIdle brings back the connections waiting for their next request, so
// that each goroutine serving one hands it over (trackedConn.Read).
// Connections busy with a request go over at their next request boundary.
// It brings back no more than the window has room for.
func (s *HTTPServer) passIdle() {
	if !s.passing() {
		return
	}
	room := passWindow - int(s.inPass.Load())
	s.mu.Lock()
	defer s.mu.Unlock()
	for c, ci := range s.conns {
		if room <= 0 {
			return
		}
		if ci.state == http.StateIdle || ci.state == http.StateNew {
			if t := trackedOf(c); t != nil && t.interrupt() {
				room--
			}
		}
	}
}

// enterPass takes a place in the window for one connection, if there is
// one; leavePass gives it back.
func (s *HTTPServer) enterPass() bool {
	if s.inPass.Add(1) > passWindow {
		s.inPass.Add(-1)
		return false
	}
	return true
}

func (s *HTTPServer) leavePass() { s.inPass.Add(-1) }

// tryPass hands c to the next generation if this server drains into one;
// it runs in the goroutine serving c, at a request boundary with nothing
// read ahead. It reports whether c is gone (the next generation has it,
// or may have it: then this generation must not serve it).
func (s *HTTPServer) tryPass(c *trackedConn) bool {
	if !s.draining() || !s.passing() || (s.HandOver != nil && !s.HandOver(c)) {
		return false
	}
	sc, ok := c.Conn.(syscall.Conn)
	if !ok {
		return false
	}
	if !s.enterPass() {
		// Not now: served here once more, kept open, and tried again.
		c.drainServed.Store(0)
		return false
	}
	defer s.leavePass()
	ss := s.passTo()
	for {
		snd := ss.pick()
		if snd == nil {
			if !s.passFailed.Swap(true) {
				s.passLog.Warn("no newer generation takes connections any more: the others drain here", "passed", s.passed.Load())
			}
			return false
		}
		c.mu.Lock()
		held := c.passHeld
		c.mu.Unlock()
		err := snd.Send(sc, held)
		if err == nil || errors.Is(err, connpass.ErrUnconfirmed) {
			s.passed.Add(1)
			s.pool.addPassed(1)
			if err != nil && !s.passFailed.Swap(true) {
				// A new generation that stalls that long is not sent
				// more, on any channel or a redialled one: the
				// connections not yet moved drain here.
				s.passLog.Warn("a connection handed over was not acknowledged: the new generation may hold it, this one lets go; the others drain here", "passed", s.passed.Load(), "err", err)
			}
			return true
		}
		if left, dropped := ss.drop(snd); dropped {
			s.passLog.Info("a channel to a newer generation ended: the next one is tried", "passed", s.passed.Load(), "channels_left", left, "err", err)
		}
	}
}

// keepOpen reports whether a response during the drain may leave its
// connection open, to go over to the next generation at its next request
// boundary: once per connection, so that one that cannot move (its reader
// holds a pipelined request) still gets Connection: close on the next.
func (s *HTTPServer) keepOpen(r *http.Request) bool {
	t, _ := r.Context().Value(trackedKey{}).(*trackedConn)
	return t != nil && t.plain && s.passing() && (s.HandOver == nil || s.HandOver(t)) && t.drainServed.Add(1) == 1
}

// trackedKey keys a request's trackedConn in its context.
type trackedKey struct{}

// logNoPass tells, at the start of a drain with connections open, why they
// drain here.
func (s *HTTPServer) logNoPass(w *Worker) {
	if s.passing() || s.noPass == "" {
		return
	}
	if n := s.openConns(); n > 0 {
		w.Logger.Info("keep-alive connections drain here: "+s.noPass, "open", n)
	}
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

// handedOver reports whether c went to the next generation: closed here,
// but not cut.
func handedOver(c net.Conn) bool {
	t := trackedOf(c)
	if t == nil {
		return false
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.moved
}
