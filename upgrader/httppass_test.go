//go:build linux

package upgrader

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gohandoff/handoff/internal/connpass"
)

// passPair is two generations of an HTTPServer in this process: old passes
// its connections to new's receiver when it drains.
type passPair struct {
	oldLn, newLn net.Listener
	oldP, newP   *pool
	oldS, newS   *HTTPServer
	release      chan struct{} // closed to let old's slow requests finish
}

func startPassPair(t *testing.T, newReceives bool) *passPair {
	t.Helper()
	pp := &passPair{release: make(chan struct{})}
	var addr string
	mk := func(name string) (*HTTPServer, net.Listener) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		return &HTTPServer{Server: &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/slow" {
				<-pp.release
			}
			io.WriteString(w, name)
		})}}, ln
	}
	pp.newS, pp.newLn = mk("new")
	pp.newP = newPool(1, pp.newS.Worker, []net.Listener{pp.newLn}, nil, discardLogger(), nil)
	if newReceives {
		pp.newP.pass = &connPassing{publish: func(_, a string) { addr = a }, successor: func(string) []connTarget { return nil }}
	}
	pp.newP.start()
	<-pp.newP.ready()
	pp.oldS, pp.oldLn = mk("old")
	pp.oldP = newPool(1, pp.oldS.Worker, []net.Listener{pp.oldLn}, nil, discardLogger(), nil)
	// The two listen on different ports, so their keys differ: this
	// pair's passing ignores the key (TestConnsByServerKey tests it).
	pp.oldP.pass = &connPassing{publish: func(string, string) {}, successor: func(string) []connTarget {
		if addr == "" {
			return nil
		}
		return []connTarget{{addr: addr, pid: os.Getpid()}}
	}}
	pp.oldP.start()
	<-pp.oldP.ready()
	t.Cleanup(func() {
		select {
		case <-pp.release:
		default:
			close(pp.release)
		}
		pp.oldP.drain(context.Background())
		pp.newP.drain(context.Background())
	})
	return pp
}

// getOn sends a GET on c and returns the response's body and whether it
// closes the connection.
func getOn(t *testing.T, c net.Conn, br *bufio.Reader, path string) (string, bool) {
	t.Helper()
	if _, err := io.WriteString(c, "GET "+path+" HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatalf("write: %v", err)
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("read response: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return string(b), resp.Close
}

func dialKeepAlive(t *testing.T, ln net.Listener) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(30 * time.Second))
	return c, bufio.NewReader(c)
}

// TestHTTPDrainPassesIdleConns: a keep-alive connection waiting for its
// next request when its generation drains is handed to the next one,
// which answers that next request on the same connection; the client
// never sees a close.
func TestHTTPDrainPassesIdleConns(t *testing.T) {
	pp := startPassPair(t, true)
	c, br := dialKeepAlive(t, pp.oldLn)
	if body, closes := getOn(t, c, br, "/"); body != "old" || closes {
		t.Fatalf("before the drain: %q close=%v, want old and kept open", body, closes)
	}
	if err := pp.oldP.drain(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := pp.oldS.passed.Load(); n != 1 {
		t.Errorf("old generation passed %d connections, want 1", n)
	}
	for range 3 {
		if body, closes := getOn(t, c, br, "/"); body != "new" || closes {
			t.Fatalf("after the drain: %q close=%v, want new on the same connection, kept open", body, closes)
		}
	}
}

// TestHTTPDrainPassesConnAfterItsRequest: a request in flight when the
// drain begins is answered by the old generation without Connection:
// close, and its connection then serves the next request from the new.
func TestHTTPDrainPassesConnAfterItsRequest(t *testing.T) {
	pp := startPassPair(t, true)
	c, br := dialKeepAlive(t, pp.oldLn)
	if _, err := io.WriteString(c, "GET /slow HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	waitStates(t, pp.oldS, http.StateActive, 1)
	drained := make(chan error, 1)
	go func() { drained <- pp.oldP.drain(context.Background()) }()
	waitDraining(t, pp.oldS)
	close(pp.release)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "old" || resp.Close {
		t.Fatalf("request in flight: %q close=%v, want old's answer, the connection kept open", b, resp.Close)
	}
	if err := <-drained; err != nil {
		t.Fatal(err)
	}
	if body, closes := getOn(t, c, br, "/"); body != "new" || closes {
		t.Fatalf("next request: %q close=%v, want new, kept open", body, closes)
	}
}

// TestHTTPDrainWithoutReceiverClosesAsBefore: with no receiver in the new
// generation the drain is what it was: a request on an idle connection
// during the drain is answered with Connection: close, and nothing moves.
func TestHTTPDrainWithoutReceiverClosesAsBefore(t *testing.T) {
	pp := startPassPair(t, false)
	c, br := dialKeepAlive(t, pp.oldLn)
	if body, closes := getOn(t, c, br, "/"); body != "old" || closes {
		t.Fatalf("before the drain: %q close=%v", body, closes)
	}
	drained := make(chan error, 1)
	go func() { drained <- pp.oldP.drain(context.Background()) }()
	waitDraining(t, pp.oldS)
	if body, closes := getOn(t, c, br, "/"); body != "old" || !closes {
		t.Errorf("during the drain: %q close=%v, want old's answer with Connection: close", body, closes)
	}
	if err := <-drained; err != nil {
		t.Fatal(err)
	}
	if n := pp.oldS.passed.Load(); n != 0 {
		t.Errorf("passed %d connections with no receiver", n)
	}
}

// waitDraining waits until s's drain has begun.
func waitDraining(t *testing.T, s *HTTPServer) {
	t.Helper()
	select {
	case <-s.drainC:
	case <-time.After(10 * time.Second):
		t.Fatal("the drain never began")
	}
}

// interruptConn is a connection whose Read blocks until a read deadline in
// the past is set, then returns what then says: the interleavings of
// handOver, driven one by one.
type interruptConn struct {
	net.Conn
	mu        sync.Mutex
	deadlines []time.Time
	interrupt chan struct{} // closed by a deadline in the past
	then      []readResult  // what each Read returns once interrupted
	reads     int
}

type readResult struct {
	data string
	err  error
}

func newInterruptConn(then ...readResult) *interruptConn {
	return &interruptConn{interrupt: make(chan struct{}), then: then}
}

func (c *interruptConn) Read(b []byte) (int, error) {
	<-c.interrupt
	c.mu.Lock()
	defer c.mu.Unlock()
	r := c.then[min(c.reads, len(c.then)-1)]
	c.reads++
	return copy(b, r.data), r.err
}

func (c *interruptConn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.deadlines = append(c.deadlines, t)
	if t.Equal(aLongTimeAgo) {
		select {
		case <-c.interrupt:
		default:
			close(c.interrupt)
		}
	}
	return nil
}

func (c *interruptConn) SyscallConn() (syscall.RawConn, error) { return nil, errors.New("no socket") }

// idleTracked is a trackedConn over ic as net/http leaves an idle
// connection: its idle deadline set, its first read since then in
// progress with the whole buffer (size), pass asked at each boundary. The
// read's result arrives on the returned channel.
func idleTracked(t *testing.T, ic *interruptConn, size int, pass func(*trackedConn) bool) (*trackedConn, <-chan readResult) {
	t.Helper()
	c := &trackedConn{Conn: ic, plain: true, pass: pass}
	c.waiting()
	c.SetReadDeadline(time.Now().Add(time.Minute))
	out := make(chan readResult, 1)
	go func() {
		b := make([]byte, size)
		n, err := c.Read(b)
		out <- readResult{string(b[:n]), err}
	}()
	end := time.Now().Add(10 * time.Second)
	for {
		c.mu.Lock()
		in := c.inRead
		c.mu.Unlock()
		if in || len(out) > 0 {
			return c, out
		}
		if time.Now().After(end) {
			t.Fatal("the read never began")
		}
		time.Sleep(time.Millisecond) // the reader goroutine starting, bounded
	}
}

// passAfter is a pass hook that refuses until draining is closed (the
// drain has not begun), then answers with result, counting its calls.
type passAfter struct {
	draining chan struct{}
	result   bool
	mu       sync.Mutex
	calls    int
}

func (p *passAfter) pass(*trackedConn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.draining:
		p.calls++
		return p.result
	default:
		return false
	}
}

// TestHandOverInterleavings: the goroutine serving a connection hands it
// over itself, at a request boundary with nothing read ahead; a waiting
// read is brought back to do so; a byte that came first keeps the
// connection here, with net/http's own deadline back; a failed hand-over
// lets the read go on.
func TestHandOverInterleavings(t *testing.T) {
	timeout := readResult{err: os.ErrDeadlineExceeded}
	t.Run("at the boundary, before reading", func(t *testing.T) {
		p := &passAfter{draining: closedChan(), result: true}
		ic := newInterruptConn(readResult{data: "never read"})
		c, out := idleTracked(t, ic, netHTTPReadBuf, p.pass)
		if r := <-out; r.err != io.EOF || r.data != "" {
			t.Fatalf("net/http's read got %q, %v; want EOF, so that it closes its copy", r.data, r.err)
		}
		ic.mu.Lock()
		reads := ic.reads
		ic.mu.Unlock()
		if reads != 0 {
			t.Errorf("%d reads of the socket before the hand-over, want none", reads)
		}
		if n, err := c.Read(make([]byte, netHTTPReadBuf)); n != 0 || err != io.EOF {
			t.Errorf("a read after the move: %d, %v; want EOF", n, err)
		}
	})
	t.Run("waiting read brought back", func(t *testing.T) {
		p := &passAfter{draining: make(chan struct{}), result: true}
		ic := newInterruptConn(timeout)
		c, out := idleTracked(t, ic, netHTTPReadBuf, p.pass)
		close(p.draining)
		if !c.interrupt() {
			t.Fatal("interrupt refused a waiting first read")
		}
		if r := <-out; r.err != io.EOF {
			t.Fatalf("net/http's read got %q, %v; want EOF after the hand-over", r.data, r.err)
		}
		if p.calls != 1 {
			t.Errorf("pass asked %d times, want once", p.calls)
		}
	})
	t.Run("a byte came first", func(t *testing.T) {
		p := &passAfter{draining: make(chan struct{}), result: true}
		ic := newInterruptConn(readResult{data: "G"})
		c, out := idleTracked(t, ic, netHTTPReadBuf, p.pass)
		close(p.draining)
		c.interrupt()
		if r := <-out; r.data != "G" || r.err != nil {
			t.Fatalf("net/http's read got %q, %v; want the byte", r.data, r.err)
		}
		if p.calls != 0 {
			t.Errorf("pass asked %d times after a byte was read, want never", p.calls)
		}
		ic.mu.Lock()
		last := ic.deadlines[len(ic.deadlines)-1]
		ic.mu.Unlock()
		if last.Equal(aLongTimeAgo) || last.IsZero() {
			t.Errorf("read deadline left at %v, want net/http's idle deadline back", last)
		}
	})
	t.Run("hand-over failed", func(t *testing.T) {
		p := &passAfter{draining: make(chan struct{}), result: false}
		ic := newInterruptConn(timeout, readResult{data: "GET"})
		c, out := idleTracked(t, ic, netHTTPReadBuf, p.pass)
		close(p.draining)
		c.interrupt()
		if r := <-out; r.data != "GET" || r.err != nil {
			t.Fatalf("net/http's read got %q, %v; want the read to go on and get the request", r.data, r.err)
		}
		if p.calls != 1 {
			t.Errorf("pass asked %d times, want once", p.calls)
		}
	})
	t.Run("read ahead", func(t *testing.T) {
		// A read for less than the whole buffer: net/http holds bytes.
		p := &passAfter{draining: closedChan(), result: true}
		ic := newInterruptConn(readResult{data: "T"})
		c, out := idleTracked(t, ic, netHTTPReadBuf-1, p.pass)
		if c.interrupt() {
			t.Fatal("interrupted a read whose reader holds bytes read ahead")
		}
		ic.SetReadDeadline(aLongTimeAgo) // let the read end
		if r := <-out; r.data != "T" || p.calls != 0 {
			t.Fatalf("read %q with %d hand-overs asked, want the byte and none", r.data, p.calls)
		}
	})
}

// TestHTTPDrainHandOverHookKeeps: a connection the HandOver hook refuses
// stays and drains as one that cannot move.
func TestHTTPDrainHandOverHookKeeps(t *testing.T) {
	pp := startPassPair(t, true)
	asked := make(chan net.Conn, 100)
	pp.oldS.HandOver = func(c net.Conn) bool { asked <- c; return false }
	pp.oldS.IdleGrace = time.Millisecond
	c, br := dialKeepAlive(t, pp.oldLn)
	if body, _ := getOn(t, c, br, "/"); body != "old" {
		t.Fatalf("before the drain: %q", body)
	}
	if err := pp.oldP.drain(context.Background()); err != nil {
		t.Fatal(err)
	}
	if len(asked) == 0 {
		t.Error("the hook was never asked")
	}
	if n := pp.oldS.passed.Load(); n != 0 {
		t.Errorf("passed %d connections the hook refused", n)
	}
	if _, err := br.ReadByte(); err != io.EOF {
		t.Errorf("the refused connection after the drain: %v, want closed by the old generation", err)
	}
}

// deadlineConn records its read deadlines; its reads return one byte.
type deadlineConn struct {
	net.Conn
	deadlines []time.Time
}

func (c *deadlineConn) SetReadDeadline(t time.Time) error {
	c.deadlines = append(c.deadlines, t)
	return nil
}

func (c *deadlineConn) Read(b []byte) (int, error) { return copy(b, "G"), nil }

// TestInboundConnWaitsAsIdle: a connection taken over from the previous
// generation was idle there, so until its first byte it waits under the
// server's idle timeout (none here), not under the header timeout net/http
// sets on a new connection at once; the header timeout runs from the
// first byte.
func TestInboundConnWaitsAsIdle(t *testing.T) {
	for _, idle := range []time.Duration{0, time.Hour} {
		dc := &deadlineConn{}
		c := &trackedConn{Conn: dc, plain: true, idle: idle, awaitFirst: true}
		c.waiting()
		c.SetReadDeadline(time.Now().Add(10 * time.Second)) // net/http's ReadHeaderTimeout
		got := dc.deadlines[0]
		if idle == 0 && !got.IsZero() || idle > 0 && time.Until(got) < idle-time.Minute {
			t.Fatalf("idle timeout %v: deadline before the first byte in %v, want the idle timeout", idle, time.Until(got))
		}
		c.Read(make([]byte, netHTTPReadBuf))
		if len(dc.deadlines) != 2 {
			t.Fatalf("deadlines %v: the header timeout was not set at the first byte", dc.deadlines)
		}
		if d := time.Until(dc.deadlines[1]); d <= 0 || d > 10*time.Second {
			t.Errorf("header deadline in %v after the first byte, want about 10s", d)
		}
		c.SetReadDeadline(time.Time{}) // later ones pass through
		if !dc.deadlines[2].IsZero() {
			t.Error("a deadline after the first byte was changed")
		}
	}
}

// TestHTTPDrainReceiverGoneMidway: the new generation's receiver goes away
// after it took one connection (the new generation died during the
// hand-over): the others, whose requests were in flight, stay with the old
// generation, which answers them and their next requests (with
// Connection: close), and nothing is lost.
func TestHTTPDrainReceiverGoneMidway(t *testing.T) {
	pp := startPassPair(t, true)
	idle, idleBr := dialKeepAlive(t, pp.oldLn)
	if body, _ := getOn(t, idle, idleBr, "/"); body != "old" {
		t.Fatalf("before the drain: %q", body)
	}
	type client struct {
		c  net.Conn
		br *bufio.Reader
	}
	var busy []client
	for range 2 {
		c, br := dialKeepAlive(t, pp.oldLn)
		if _, err := io.WriteString(c, "GET /slow HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		busy = append(busy, client{c, br})
	}
	waitStates(t, pp.oldS, http.StateIdle, 1)
	waitStates(t, pp.oldS, http.StateActive, 2)
	drained := make(chan error, 1)
	go func() { drained <- pp.oldP.drain(context.Background()) }()
	end := time.Now().Add(10 * time.Second)
	for pp.oldS.passed.Load() < 1 {
		if time.Now().After(end) {
			t.Fatal("the idle connection never went over")
		}
		time.Sleep(time.Millisecond) // the drain's first round, bounded
	}
	if body, closes := getOn(t, idle, idleBr, "/"); body != "new" || closes {
		t.Errorf("the connection that went over: %q close=%v, want new, kept open", body, closes)
	}
	pp.newS.recv.Close() // the new generation dies
	close(pp.release)
	for i, c := range busy {
		resp, err := http.ReadResponse(c.br, nil)
		if err != nil {
			t.Fatalf("busy client %d: %v", i, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(b) != "old" {
			t.Errorf("busy client %d: %q, want old's answer", i, b)
		}
		body, closes := getOn(t, c.c, c.br, "/")
		if body != "old" || !closes {
			t.Errorf("busy client %d, next request: %q close=%v; want old's answer with Connection: close", i, body, closes)
		}
	}
	if !pp.oldS.passFailed.Load() {
		t.Error("the drain did not see the channel fail")
	}
	if n := pp.oldS.passed.Load(); n != 1 {
		t.Errorf("passed %d connections, want the 1 before the receiver went", n)
	}
	if err := <-drained; err != nil {
		t.Fatal(err)
	}
}

// waitStates waits until s tracks n connections in state st.
func waitStates(t *testing.T, s *HTTPServer, st http.ConnState, n int) {
	t.Helper()
	end := time.Now().Add(10 * time.Second)
	for {
		s.mu.Lock()
		got := 0
		for _, ci := range s.conns {
			if ci.state == st {
				got++
			}
		}
		s.mu.Unlock()
		if got == n {
			return
		}
		if time.Now().After(end) {
			t.Fatalf("%d connections %s, want %d", got, st, n)
		}
		time.Sleep(time.Millisecond) // polling the server's table, bounded
	}
}

// TestHandOverWithBackgroundByte: a client that sends its next request as
// soon as it has the answer can beat net/http's background read to its
// end: that read takes the request's first byte, which net/http then
// holds at the boundary (it asks for all but one byte of its buffer). The
// connection goes over with that byte; bytes read ahead any other way
// keep it here.
func TestHandOverWithBackgroundByte(t *testing.T) {
	for _, tc := range []struct {
		name   string
		bg     bool // the background read got a byte
		size   int  // net/http's read at the boundary
		passed bool
	}{
		{name: "background byte", bg: true, size: netHTTPReadBuf - 1, passed: true},
		{name: "one byte read ahead, none in the background", size: netHTTPReadBuf - 1},
		{name: "background byte and more read ahead", bg: true, size: netHTTPReadBuf - 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ic := newInterruptConn(readResult{data: "GET / HTTP/1.1\r\n\r\n"}, readResult{data: "G"}, readResult{data: "ET / HTTP/1.1\r\n\r\n"})
			close(ic.interrupt) // reads return at once
			var held []byte
			asked, draining := 0, false
			c := &trackedConn{Conn: ic, plain: true, pass: func(c *trackedConn) bool {
				if !draining {
					return false
				}
				asked++
				held = c.passHeld
				return true
			}}
			c.waiting()                          // New
			c.Read(make([]byte, netHTTPReadBuf)) // the first request, before the drain
			draining = true
			if tc.bg {
				c.Read(make([]byte, 1)) // the background read, during the handler
			}
			c.waiting() // Idle
			n, err := c.Read(make([]byte, tc.size))
			if tc.passed {
				if asked != 1 || string(held) != "G" || err != io.EOF || n != 0 {
					t.Fatalf("asked %d, held %q, read %d, %v; want handed over with the byte G", asked, held, n, err)
				}
				if !c.started.Load() {
					t.Error("a request whose first byte is held was not taken as begun")
				}
				return
			}
			if asked != 0 || err != nil {
				t.Fatalf("asked %d, read %d, %v; want the connection kept and read on", asked, n, err)
			}
		})
	}
}

// TestHTTPDrainPassesNewConn: a connection accepted that has sent nothing
// yet when the drain begins goes over too, and the new generation answers
// its first request.
func TestHTTPDrainPassesNewConn(t *testing.T) {
	pp := startPassPair(t, true)
	c, br := dialKeepAlive(t, pp.oldLn)
	waitStates(t, pp.oldS, http.StateNew, 1)
	if err := pp.oldP.drain(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := pp.oldS.passed.Load(); n != 1 {
		t.Errorf("passed %d connections, want the new one", n)
	}
	if body, closes := getOn(t, c, br, "/"); body != "new" || closes {
		t.Fatalf("first request: %q close=%v, want new, kept open", body, closes)
	}
}

// TestConnsByServerKey: a generation with two HTTPServers on different
// sockets publishes a receiver for each, and a draining server finds only
// the one that serves its own sockets, whatever the order of its
// listeners.
func TestConnsByServerKey(t *testing.T) {
	lnA, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lnA.Close()
	lnB, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lnB.Close()
	keyA, keyAB, keyBA := serverKey([]net.Listener{lnA}), serverKey([]net.Listener{lnA, lnB}), serverKey([]net.Listener{lnB, lnA})
	if keyA == keyAB || keyAB != keyBA {
		t.Fatalf("keys: A %s, A+B %s, B+A %s; want A apart, the order not to matter", keyA, keyAB, keyBA)
	}
	u, _ := probationUpgrader(t, 0)
	u.publishConns(keyA, "@a")
	u.publishConns(keyAB, "@ab")
	if err := u.writeState(time.Time{}); err != nil {
		t.Fatal(err)
	}
	if got := u.successorConns(keyA); len(got) != 0 {
		t.Errorf("successorConns in the generation that wrote them = %+v, want none: it must not hand connections to itself", got)
	}
	// As the previous generation sees it: another pid serves.
	if err := u.state.update(func(st *genState) { st.PID = os.Getpid() + 1 }); err != nil {
		t.Fatal(err)
	}
	for key, want := range map[string]string{keyA: "@a", keyAB: "@ab", "other": ""} {
		got := u.successorConns(key)
		if want == "" && len(got) != 0 || want != "" && (len(got) != 1 || got[0].addr != want || got[0].pid != os.Getpid()+1) {
			t.Errorf("successorConns(%s) = %+v, want %q", key, got, want)
		}
	}
}

// TestSendersRedial: a drain whose channels are all gone looks for a newer
// generation again, at most maxRedials times, and never while a channel
// is left.
func TestSendersRedial(t *testing.T) {
	dials := 0
	ss := &senders{dial: func() []*connpass.Sender { dials++; return nil }}
	for range maxRedials + 2 {
		if ss.pick() != nil {
			t.Fatal("picked a channel where none is")
		}
	}
	if dials != maxRedials {
		t.Errorf("redialled %d times, want %d", dials, maxRedials)
	}
	dials = 0
	ss = &senders{snds: []*connpass.Sender{{}}, dial: func() []*connpass.Sender { dials++; return nil }}
	if ss.pick() == nil || dials != 0 {
		t.Errorf("with a channel left: picked nil or redialled (%d)", dials)
	}
}

// TestHTTPDrainStopsAtUnconfirmed: once a connection handed over goes
// unacknowledged (a new generation alive but stalled past
// connpass.AckTimeout), the drain hands nothing more over: not on that
// channel, nor on one redialled to the same stalled process. The next
// connection stays here.
func TestHTTPDrainStopsAtUnconfirmed(t *testing.T) {
	defer func(d time.Duration) { connpass.AckTimeout = d }(connpass.AckTimeout)
	connpass.AckTimeout = 200 * time.Millisecond
	addr := fmt.Sprintf("@handoff-conns-test-stalled-%d", os.Getpid())
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: addr, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var mu sync.Mutex
	var channels []*net.UnixConn
	defer func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range channels {
			c.Close()
		}
	}()
	go func() { // a receiver that takes every message and never answers
		for {
			c, err := ln.AcceptUnix()
			if err != nil {
				return
			}
			mu.Lock()
			channels = append(channels, c)
			mu.Unlock()
			go io.Copy(io.Discard, c)
		}
	}()
	dial := func() []*connpass.Sender {
		snd, err := connpass.Dial(addr, os.Getpid())
		if err != nil {
			t.Error(err)
			return nil
		}
		return []*connpass.Sender{snd}
	}
	ss := &senders{snds: dial(), dial: dial}
	defer ss.close()
	drainC := make(chan struct{})
	close(drainC)
	s := &HTTPServer{drainC: drainC, passTo: func() *senders { return ss }, passLog: discardLogger(), pool: &pool{}}
	conn := func() *trackedConn {
		_, server := tcpPair(t)
		return &trackedConn{Conn: server, plain: true}
	}
	if !s.tryPass(conn()) {
		t.Fatal("the first connection, handed over unacknowledged, stayed")
	}
	if s.tryPass(conn()) {
		t.Error("a connection went to a new generation that left the last one unacknowledged")
	}
	if s.passing() {
		t.Error("the drain still hands over after an unacknowledged connection")
	}
	mu.Lock()
	defer mu.Unlock()
	if len(channels) != 1 {
		t.Errorf("%d channels opened to the stalled receiver, want 1: no redial", len(channels))
	}
}

// TestSendersDropOnce: of the connections whose Sends failed together on
// one channel, only the first to drop it is told it did (and logs it).
func TestSendersDropOnce(t *testing.T) {
	recv, err := connpass.Listen("", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer recv.Close()
	var snds []*connpass.Sender
	for range 2 {
		snd, err := connpass.Dial(recv.Address(), os.Getpid())
		if err != nil {
			t.Fatal(err)
		}
		snds = append(snds, snd)
	}
	ss := &senders{snds: slices.Clone(snds)}
	defer ss.close()
	if left, dropped := ss.drop(snds[0]); left != 1 || !dropped {
		t.Errorf("first drop: %d left, dropped %v; want 1 left, dropped", left, dropped)
	}
	if left, dropped := ss.drop(snds[0]); left != 1 || dropped {
		t.Errorf("second drop of the same channel: %d left, dropped %v; want 1 left, not dropped", left, dropped)
	}
}

// TestKeepOpen: during a drain that hands over, a response leaves its
// plain connection open once, so that it moves at its next boundary; the
// next response, a connection the HandOver hook keeps, a TLS connection,
// and a drain that hands nothing over say Connection: close.
func TestKeepOpen(t *testing.T) {
	req := func(c *trackedConn) *http.Request {
		r := httptest.NewRequest("GET", "/", nil)
		return r.WithContext(context.WithValue(r.Context(), trackedKey{}, c))
	}
	passing := &senders{snds: []*connpass.Sender{{}}}
	s := &HTTPServer{passTo: func() *senders { return passing }}
	plain := &trackedConn{plain: true}
	if !s.keepOpen(req(plain)) {
		t.Error("the first response during the drain closes its connection")
	}
	if s.keepOpen(req(plain)) {
		t.Error("the second response on a connection that did not move keeps it open")
	}
	if s.keepOpen(req(&trackedConn{})) {
		t.Error("a TLS connection's response keeps it open")
	}
	if s.keepOpen(httptest.NewRequest("GET", "/", nil)) {
		t.Error("a request with no tracked connection keeps it open")
	}
	s.HandOver = func(net.Conn) bool { return false }
	if s.keepOpen(req(&trackedConn{plain: true})) {
		t.Error("a connection the HandOver hook keeps is left open")
	}
	s.HandOver = nil
	s.passTo = func() *senders { return nil }
	if s.keepOpen(req(&trackedConn{plain: true})) {
		t.Error("a drain that hands nothing over leaves a connection open")
	}
}

// TestHandedOverNotCut: a connection closed here during the drain with a
// request begun (the byte its background read took) is cut, unless it
// went over to the next generation with that byte.
func TestHandedOverNotCut(t *testing.T) {
	for _, moved := range []bool{true, false} {
		drainC := make(chan struct{})
		close(drainC)
		s := &HTTPServer{drainC: drainC, pool: &pool{}, conns: make(map[net.Conn]connInfo)}
		c := &trackedConn{plain: true}
		c.started.Store(true)
		c.moved = moved
		s.conns[c] = connInfo{state: http.StateIdle}
		s.track(c, http.StateClosed)
		if got, want := s.pool.cutCount(), map[bool]int64{true: 0, false: 1}[moved]; got != want {
			t.Errorf("moved %v: %d cut, want %d", moved, got, want)
		}
	}
	if handedOver(nil) {
		t.Error("a connection that is not tracked counts as handed over")
	}
}

// TestIdleTimeout: a connection taken over waits for its first byte as
// long as the server lets an idle one wait: IdleTimeout, else ReadTimeout.
func TestIdleTimeout(t *testing.T) {
	for _, tc := range []struct {
		idle, read, want time.Duration
	}{
		{idle: 5 * time.Second, read: 3 * time.Second, want: 5 * time.Second},
		{idle: 0, read: 3 * time.Second, want: 3 * time.Second},
		{idle: 0, read: 0, want: 0},
	} {
		if got := idleTimeout(&http.Server{IdleTimeout: tc.idle, ReadTimeout: tc.read}); got != tc.want {
			t.Errorf("IdleTimeout %s, ReadTimeout %s: %s, want %s", tc.idle, tc.read, got, tc.want)
		}
	}
}

// TestHTTPDrainWindowFull: a connection that comes to a request boundary
// while the hand-over's window is full is not parked: the old generation
// answers its requests, keeping it open, and once there is room it moves
// and the new generation answers on the same connection.
func TestHTTPDrainWindowFull(t *testing.T) {
	pp := startPassPair(t, true)
	c, br := dialKeepAlive(t, pp.oldLn)
	if body, closes := getOn(t, c, br, "/"); body != "old" || closes {
		t.Fatalf("before the drain: %q close=%v, want old and kept open", body, closes)
	}
	pp.oldS.inPass.Store(int32(passWindow)) // others fill the window
	drained := make(chan error, 1)
	go func() { drained <- pp.oldP.drain(context.Background()) }()
	waitDraining(t, pp.oldS)
	for i := range 3 {
		if body, closes := getOn(t, c, br, "/"); body != "old" || closes {
			t.Fatalf("request %d with the window full: %q close=%v, want old's answer, kept open", i, body, closes)
		}
	}
	if n := pp.oldS.passed.Load(); n != 0 {
		t.Fatalf("passed %d with the window full, want 0", n)
	}
	pp.oldS.inPass.Store(0) // room again: the idle connection is brought back and moves
	select {
	case err := <-drained:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the drain did not end once the window had room")
	}
	if n := pp.oldS.passed.Load(); n != 1 {
		t.Errorf("passed %d, want 1", n)
	}
	if body, closes := getOn(t, c, br, "/"); body != "new" || closes {
		t.Fatalf("after the drain: %q close=%v, want new on the same connection, kept open", body, closes)
	}
}
