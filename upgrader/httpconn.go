package upgrader

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// trackedListener hands an HTTPServer its connections as trackedConns.
type trackedListener struct {
	net.Listener
	plain bool // not TLS: net/http reads the connection itself
	// inbound: the connections come from the previous generation
	// (httppass.go), idle; idle is the server's idle timeout.
	inbound bool
	idle    time.Duration
	// pass hands a connection to the next generation (httppass.go).
	pass func(*trackedConn) bool
}

func (l trackedListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &trackedConn{Conn: c, plain: l.plain, idle: l.idle, awaitFirst: l.inbound, pass: l.pass}, nil
}

// netHTTPReadBuf is the size of the buffered reader net/http reads a
// connection through. Once a connection is idle, it asks for 4 bytes of
// the next request; when its buffer still holds 1 to 3 bytes of it (sent
// together with the previous request), its read asks for the room left,
// less than the whole buffer: that says a request has begun although no
// new byte arrived. FuzzHTTPDrainEdge's pipelined seeds check it.
const netHTTPReadBuf = 4096

// trackedConn is a connection of an HTTPServer as net/http reads it. It
// sees a request begin to arrive, which net/http does not tell: ConnState
// stays New or Idle until a whole header has been read, so a drain that
// trusted it alone would close a connection whose request is half there.
type trackedConn struct {
	net.Conn
	// started: bytes of a request have arrived since the connection was
	// last New or Idle.
	started atomic.Bool
	// deadlines counts the read deadlines set since then. net/http sets
	// one when a connection goes idle and another once the first bytes of
	// the next request are there, which its reader may hold already (a
	// pipelined request): the second says a request has begun.
	deadlines atomic.Int32
	// plain: net/http reads this connection directly (no TLS between),
	// so the size of its first read after waiting tells what it holds.
	plain     bool
	firstRead atomic.Bool

	// The hand-over to the next generation (httppass.go). pass, set by
	// the listener, hands the connection over if its server drains into
	// a next generation; the rest is under mu.
	pass        func(*trackedConn) bool
	drainServed atomic.Int32 // requests answered here during a drain that hands over
	mu          sync.Mutex
	deadline    time.Time // the read deadline net/http set last
	inRead      bool      // a Read is in progress
	readFull    bool      // ...and it is the first since waiting, asking for the whole buffer: net/http holds no byte read ahead
	interrupted bool      // interrupt set a deadline in the past to bring that Read back
	moved       bool      // the connection is the next generation's now
	// net/http reads one byte in the background while a handler runs; a
	// byte it got there (bgGot) is what it holds at the next request
	// boundary (bgHeld, from waiting on), and goes over with the socket.
	bgByte   byte
	bgGot    bool
	bgHeld   bool
	passHeld []byte // what net/http holds at this boundary, for pass

	// A connection taken over from the previous generation was idle
	// there: until its first byte it waits under the server's idle
	// timeout, as an idle one does, not under the header timeout that
	// net/http gives a new connection at once (acceptedDeadlineLocked).
	idle       time.Duration
	awaitFirst bool
	headerFor  time.Duration // the header timeout net/http asked, from the first byte
}

// waiting marks the connection New or Idle: no request has begun yet.
func (c *trackedConn) waiting() {
	c.started.Store(false)
	c.deadlines.Store(0)
	c.firstRead.Store(true)
	c.mu.Lock()
	c.bgHeld, c.bgGot = c.bgGot, false
	c.mu.Unlock()
}

func (c *trackedConn) Read(b []byte) (int, error) {
	first := c.plain && c.firstRead.CompareAndSwap(true, false)
	passable, bg, moved := c.beginRead(len(b), first)
	if moved {
		return 0, io.EOF
	}
	for {
		// At a request boundary with nothing read ahead, the goroutine
		// serving the connection hands it over itself, before it reads:
		// no byte of the next request can be here, whatever the kernel
		// holds travels with the socket.
		if passable && (bg || !c.started.Load()) && c.pass(c) {
			c.mu.Lock()
			c.moved, c.inRead, c.readFull = true, false, false
			c.mu.Unlock()
			return 0, io.EOF // net/http closes its copy, without a reply
		}
		n, err := c.Conn.Read(b)
		if n > 0 {
			c.started.Store(true)
		}
		if c.endRead(b, n, err) {
			return n, err
		}
	}
}

// beginRead notes a read of size bytes, the first after a request if
// first, and reports whether the connection may be handed over before it
// (passable), whether it would go with the background read's byte (bg),
// and whether it went over already (moved).
func (c *trackedConn) beginRead(size int, first bool) (passable, bg, moved bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.moved {
		return false, false, true
	}
	// What net/http holds of the next request: nothing if it asks for its
	// whole buffer; the background read's byte if it asks for all but
	// one and that read got one (a request has begun, and may go over
	// with that byte); else bytes read ahead, which stay here.
	bg = first && size == netHTTPReadBuf-1 && c.bgHeld
	c.passHeld = nil
	if bg {
		c.passHeld = []byte{c.bgByte}
	}
	if first && size < netHTTPReadBuf && size >= netHTTPReadBuf-3 {
		c.started.Store(true)
	}
	c.inRead, c.readFull = true, first && (size == netHTTPReadBuf || bg)
	c.bgHeld = false
	return c.readFull && c.pass != nil, bg, false
}

// endRead notes what a read into b returned; false if it was brought back
// by interrupt with nothing read: then the caller hands over, or reads on.
func (c *trackedConn) endRead(b []byte, n int, err error) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(b) == 1 && n == 1 {
		c.bgByte, c.bgGot = b[0], true // net/http's background read
	}
	if n > 0 && c.awaitFirst {
		c.awaitFirst = false
		if c.headerFor > 0 {
			c.deadline = time.Now().Add(c.headerFor)
			c.Conn.SetReadDeadline(c.deadline)
		}
	}
	if c.interrupted {
		// Brought back by interrupt: net/http's own deadline again.
		c.interrupted = false
		c.Conn.SetReadDeadline(c.deadline)
		if n == 0 && errors.Is(err, os.ErrDeadlineExceeded) {
			return false
		}
	}
	c.inRead, c.readFull = false, false
	return true
}

// interrupt brings back a first read that waits for the next request, so
// that the goroutine serving the connection hands it over (see Read): the
// connections that were idle when the drain began. It reports whether it
// did.
func (c *trackedConn) interrupt() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.plain || c.pass == nil || !c.inRead || !c.readFull || c.interrupted || c.moved || c.started.Load() {
		return false
	}
	c.interrupted = true
	// Under mu: the Read, once back, restores net/http's deadline after
	// this one, never before.
	c.Conn.SetReadDeadline(aLongTimeAgo)
	return true
}

func (c *trackedConn) SetReadDeadline(t time.Time) error {
	if c.deadlines.Add(1) >= 2 {
		c.started.Store(true)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.awaitFirst {
		t = c.acceptedDeadlineLocked(t)
	}
	c.deadline = t
	return c.Conn.SetReadDeadline(t)
}

// acceptedDeadlineLocked turns the header deadline net/http sets on a
// connection taken over into the idle deadline until the first byte.
func (c *trackedConn) acceptedDeadlineLocked(t time.Time) time.Time {
	c.headerFor = 0
	if !t.IsZero() {
		c.headerFor = max(time.Until(t), time.Nanosecond)
	}
	if c.idle <= 0 {
		return time.Time{}
	}
	return time.Now().Add(c.idle)
}

// SyscallConn reaches the socket, for pendingInput.
func (c *trackedConn) SyscallConn() (syscall.RawConn, error) {
	sc, ok := c.Conn.(syscall.Conn)
	if !ok {
		return nil, errors.New("upgrader: connection has no socket")
	}
	return sc.SyscallConn()
}

// CloseWrite and ReadFrom keep what net/http does with a TCP connection:
// a half close before closing, sendfile for files.
func (c *trackedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

func (c *trackedConn) ReadFrom(r io.Reader) (int64, error) {
	if rf, ok := c.Conn.(io.ReaderFrom); ok {
		return rf.ReadFrom(r)
	}
	return io.Copy(c.Conn, r)
}

// trackedOf returns the trackedConn below c, or nil.
func trackedOf(c net.Conn) *trackedConn {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	t, _ := c.(*trackedConn)
	return t
}

// requestBegun reports whether a request has begun to arrive on c, which
// net/http still has New or Idle.
func requestBegun(c net.Conn) bool {
	t := trackedOf(c)
	return t != nil && t.started.Load()
}
