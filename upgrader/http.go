package upgrader

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gohandoff/handoff/internal/connpass"
)

// DefaultIdleGrace is how long a draining HTTP server leaves an idle
// keep-alive connection open for one more request before it closes it.
const DefaultIdleGrace = time.Second

// newConnGrace is how long a draining server waits for the first request
// of a connection that has sent nothing yet, as net/http does in Shutdown.
const newConnGrace = 5 * time.Second

// HTTPServer serves an http.Server from every worker of a pool and drains
// it without losing a request the kernel accepted. Its Worker method is the
// WorkerFunc to pass to Upgrader.Serve.
//
// A drain first stops accepting: the listeners are closed and every accept
// loop has returned. After an upgrade, on Linux, each plain HTTP/1.1
// connection then goes over to the new generation's HTTPServer of the same
// sockets at its next request boundary, its socket passed with SCM_RIGHTS
// (see httppass.go): the client never reconnects. A connection that cannot
// (TLS, NoHandOver, no receiver in the new generation) finishes its
// request with "Connection: close", an idle keep-alive connection gets
// IdleGrace to send
// one more request (answered the same way) before it is closed, a request
// whose first bytes have arrived is never taken for idle (its deadline is
// the server's own ReadHeaderTimeout, and one closed unanswered during the
// drain is counted as cut), and HTTP/2
// connections get a GOAWAY and finish their streams. What is still open at
// the drain timeout is cut, and the count is logged. Unlike calling
// http.Server.Shutdown alone, no request read after the drain began is
// dropped without an answer.
type HTTPServer struct {
	// Server is served by every worker. Its Handler and ConnState are
	// wrapped on first use; set them before. With a TLSConfig, the server
	// serves TLS (and HTTP/2) with the certificates in it.
	Server *http.Server
	// IdleGrace defaults to DefaultIdleGrace.
	IdleGrace time.Duration
	// HandOver, if set, is asked before a keep-alive connection moves to
	// the next generation at a drain; false keeps it here, to drain as a
	// connection that cannot move. What a handler stored for the
	// connection (ConnContext, ConnState) does not move with it: the
	// next generation sees the connection as newly accepted.
	HandOver func(c net.Conn) bool
	// NoHandOver drains every connection here, as before connections
	// moved: a response during the drain says Connection: close.
	NoHandOver bool

	init      sync.Once
	tls       bool
	serving   sync.WaitGroup
	drainC    <-chan struct{}
	drainOnce sync.Once
	drainErr  error

	pool *pool

	// Passing connections to the next generation (httppass.go).
	recv       *connpass.Receiver
	recvDone   chan struct{}   // closed when the receiver's accept loop returned
	passTo     func() *senders // dials the next generation once, nil if none
	passFailed atomic.Bool
	noPass     string // why connections drain here, if known
	passLog    *slog.Logger
	passed     atomic.Int64
	inPass     atomic.Int32 // connections in the window (passWindow)

	mu    sync.Mutex
	conns map[net.Conn]connInfo
}

type connInfo struct {
	state http.ConnState
	since time.Time
}

func (s *HTTPServer) setup(w *Worker) {
	s.init.Do(func() {
		if s.IdleGrace <= 0 {
			s.IdleGrace = DefaultIdleGrace
		}
		s.drainC = w.Draining()
		s.pool = w.pool
		// Decided once: serving sets TLSConfig for HTTP/2 as it starts.
		s.tls = s.Server.TLSConfig != nil
		s.conns = make(map[net.Conn]connInfo)
		w.pool.countConns(s.openConns)
		h := s.Server.Handler
		if h == nil {
			h = http.DefaultServeMux
		}
		s.Server.Handler = http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
			select {
			case <-s.drainC:
				if !s.keepOpen(r) {
					rw.Header().Set("Connection", "close")
				}
			default:
			}
			h.ServeHTTP(rw, r)
		})
		cc := s.Server.ConnContext
		s.Server.ConnContext = func(ctx context.Context, c net.Conn) context.Context {
			if cc != nil {
				ctx = cc(ctx, c)
			}
			if t, ok := c.(*trackedConn); ok {
				ctx = context.WithValue(ctx, trackedKey{}, t)
			}
			return ctx
		}
		hook := s.Server.ConnState
		s.Server.ConnState = func(c net.Conn, st http.ConnState) {
			s.track(c, st)
			if hook != nil {
				hook(c, st)
			}
		}
		s.setupPassing(w) // last: its receiver serves s.Server at once
	})
}

// openConns counts the connections open, for the drain's progress.
func (s *HTTPServer) openConns() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

func (s *HTTPServer) track(c net.Conn, st http.ConnState) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch st {
	case http.StateClosed, http.StateHijacked:
		ci, ok := s.conns[c]
		// Closed during the drain with a request begun and not read whole
		// (the server's own header timeout, or the client gave up): cut.
		if ok && st == http.StateClosed && ci.state != http.StateActive && requestBegun(c) && s.draining() && !handedOver(c) {
			s.pool.addCut(1)
		}
		delete(s.conns, c)
	default:
		if st == http.StateNew || st == http.StateIdle {
			if t := trackedOf(c); t != nil {
				t.waiting()
			}
		}
		s.conns[c] = connInfo{state: st, since: time.Now()}
	}
}

func (s *HTTPServer) draining() bool {
	select {
	case <-s.drainC:
		return true
	default:
		return false
	}
}

// Worker serves s.Server on every listener of w until the drain, then
// drains it. Workers of one pool share the server and its drain.
func (s *HTTPServer) Worker(ctx context.Context, w *Worker) error {
	if s.Server == nil {
		return errors.New("upgrader: HTTPServer.Server is nil")
	}
	s.setup(w)
	errc := make(chan error, len(w.Listeners))
	for _, ln := range w.Listeners {
		s.serving.Add(1)
		go func() {
			defer s.serving.Done()
			tl := trackedListener{Listener: ln, plain: !s.tls, pass: s.tryPass}
			if s.tls {
				errc <- s.Server.ServeTLS(tl, "", "")
			} else {
				errc <- s.Server.Serve(tl)
			}
		}()
	}
	w.Ready()
	var serveErr error
	for range w.Listeners {
		if err := <-errc; serveErr == nil {
			serveErr = err
		}
	}
	select {
	case <-w.Draining():
	default:
		return fmt.Errorf("http serve: %w", serveErr)
	}
	s.drainOnce.Do(func() { s.drainErr = s.drain(ctx, w) })
	return s.drainErr
}

func (s *HTTPServer) drain(ctx context.Context, w *Worker) error {
	s.serving.Wait() // every accept loop has returned: the set of conns only shrinks
	start := time.Now()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	defer s.logPassed(w, start)
	s.logNoPass(w)
	if !s.drainConns(ctx, w, start, tick.C) {
		return nil
	}
	if s.stopReceiving() && !s.drainConns(ctx, w, start, tick.C) {
		return nil // a connection passed on the way in drains like the others
	}
	// Only HTTP/2 connections may be left: Shutdown sends them GOAWAY and
	// waits for their streams.
	if err := s.Server.Shutdown(ctx); err != nil {
		cut := s.closeAll()
		w.pool.addCut(cut)
		s.Server.Close()
		w.Logger.Warn("drain timeout: connections cut", "cut", cut, "duration", time.Since(start).Round(time.Millisecond))
	}
	return nil
}

// drainConns hands over or closes the HTTP/1 connections until none is
// left, or cuts them at ctx's end: then it reports false.
func (s *HTTPServer) drainConns(ctx context.Context, w *Worker, start time.Time, tick <-chan time.Time) bool {
	for s.passIdle(); s.closeIdle(start) > 0; s.passIdle() {
		select {
		case <-ctx.Done():
			cut := s.closeAll()
			w.pool.addCut(cut)
			w.Logger.Warn("drain timeout: connections cut", "cut", cut, "duration", time.Since(start).Round(time.Millisecond))
			s.stopReceiving()
			s.Server.Close()
			return false
		case <-tick:
		}
	}
	return true
}

// closeIdle closes the HTTP/1 connections idle for longer than their grace,
// counted from the later of the drain's start and their last request, and
// returns how many HTTP/1 connections remain open.
func (s *HTTPServer) closeIdle(drainStart time.Time) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	left := 0
	for c, ci := range s.conns {
		// A new TLS connection may be in its handshake, which
		// ConnectionState would wait for, holding s.mu: it is not known
		// to be HTTP/2 yet anyway.
		if ci.state != http.StateNew && isHTTP2(c) {
			continue
		}
		since := ci.since
		if since.Before(drainStart) {
			since = drainStart
		}
		idle := (ci.state == http.StateIdle && now.Sub(since) >= s.IdleGrace) ||
			(ci.state == http.StateNew && now.Sub(since) >= newConnGrace)
		// A request that has begun to arrive (read in part, which net/http
		// does not tell until the whole header is there), or that no
		// goroutine has read yet (a starved server), makes the connection
		// busy, not idle: it is left to the server's own header timeout,
		// and to the drain timeout.
		if idle && !requestBegun(c) && !pendingInput(c) {
			c.Close()
			delete(s.conns, c)
			continue
		}
		left++
	}
	return left
}

func (s *HTTPServer) closeAll() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := len(s.conns)
	for c := range s.conns {
		c.Close()
		delete(s.conns, c)
	}
	return n
}

func isHTTP2(c net.Conn) bool {
	tc, ok := c.(*tls.Conn)
	return ok && tc.ConnectionState().NegotiatedProtocol == "h2"
}
