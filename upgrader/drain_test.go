//go:build linux

package upgrader

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"sync"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"golang.org/x/sys/unix"
)

// The drain's protections, each driven through its exact interleaving:
// no load, no window to hit by luck. A test here fails when the
// protection it names is removed (see docs/testing.md, mutation testing).

// heldConn is a server-side connection whose reads the test can hold: from
// the moment the server reports it idle, the goroutine serving it waits
// before reading, so a request the client sends meanwhile stays in the
// kernel's buffer while the connection's state is still Idle. It reports
// every peek at its socket (SyscallConn, which pendingInput uses) and its
// close.
type heldConn struct {
	*net.TCPConn
	mu      sync.Mutex
	hold    chan struct{} // non-nil while reads are held; closed to release
	peeked  chan struct{} // one value per SyscallConn call
	closed  chan struct{}
	closeMu sync.Once
}

func (c *heldConn) holdReads() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.hold == nil {
		c.hold = make(chan struct{})
	}
}

func (c *heldConn) releaseReads() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.hold != nil {
		close(c.hold)
		c.hold = nil
	}
}

func (c *heldConn) Read(b []byte) (int, error) {
	c.mu.Lock()
	hold := c.hold
	c.mu.Unlock()
	if hold != nil {
		select {
		case <-hold:
		case <-c.closed:
			return 0, net.ErrClosed
		}
	}
	return c.TCPConn.Read(b)
}

func (c *heldConn) SyscallConn() (syscall.RawConn, error) {
	select {
	case c.peeked <- struct{}{}:
	default:
	}
	return c.TCPConn.SyscallConn()
}

func (c *heldConn) Close() error {
	c.closeMu.Do(func() { close(c.closed) })
	return c.TCPConn.Close()
}

// heldListener hands out heldConns, each also sent on conns.
type heldListener struct {
	net.Listener
	conns chan *heldConn
}

func (l *heldListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	hc := &heldConn{TCPConn: c.(*net.TCPConn), peeked: make(chan struct{}, 1), closed: make(chan struct{})}
	l.conns <- hc
	return hc, nil
}

// kernelBytes is how many bytes wait in fd's receive buffer, asked of the
// kernel directly (not through pendingInput, which is under test).
func kernelBytes(t *testing.T, c *net.TCPConn) int {
	t.Helper()
	raw, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	var ierr error
	if err := raw.Control(func(fd uintptr) { n, ierr = unix.IoctlGetInt(int(fd), unix.SIOCINQ) }); err != nil {
		t.Fatal(err)
	}
	if ierr != nil {
		t.Fatalf("SIOCINQ: %v", ierr)
	}
	return n
}

// TestDrainKeepsIdleConnWhoseRequestWaitsInKernel is the idle/pending-input
// race: a keep-alive connection is Idle, its next request has arrived in
// the kernel's buffer, and the goroutine serving it has not read it yet.
// The drain, past the connection's idle grace, must take it as busy (it
// consults pendingInput) and the request must get its answer. Without the
// check the drain closes the connection under the request.
func TestDrainKeepsIdleConnWhoseRequestWaitsInKernel(t *testing.T) {
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := &heldListener{Listener: tcp, conns: make(chan *heldConn, 1)}
	idle := make(chan net.Conn, 1)
	srv := &HTTPServer{
		IdleGrace: time.Millisecond,
		Server: &http.Server{
			Handler: http.HandlerFunc(hello),
			// Called after the drain's own tracking, in the goroutine
			// serving the connection, before it reads again.
			ConnState: func(c net.Conn, st http.ConnState) {
				if st == http.StateIdle {
					heldOf(c).holdReads()
					idle <- c
				}
			},
		},
	}
	p := newPool(1, srv.Worker, []net.Listener{ln}, nil, discardLogger(), nil)
	p.start()
	<-p.ready()
	drained := make(chan error, 1)
	defer func() {
		p.drain(context.Background())
	}()

	client, err := net.Dial("tcp", tcp.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	client.SetDeadline(time.Now().Add(30 * time.Second))
	sc := <-ln.conns
	defer sc.releaseReads()
	br := bufio.NewReader(client)
	io.WriteString(client, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	if resp := readResponse(t, br); resp.Close {
		t.Fatal("first response closes the connection before any drain")
	}
	var served net.Conn // the connection as net/http and the drain see it
	select {
	case served = <-idle:
	case <-time.After(10 * time.Second):
		t.Fatal("the connection never went idle after its first request")
	}

	// The next request, left in the kernel's buffer: the server's reads
	// are held since it reported the connection idle.
	req := "GET / HTTP/1.1\r\nHost: x\r\n\r\n"
	io.WriteString(client, req)
	deadline := time.Now().Add(10 * time.Second)
	for kernelBytes(t, sc.TCPConn) < len(req) {
		if time.Now().After(deadline) {
			t.Fatal("the second request never reached the server's receive buffer")
		}
		time.Sleep(time.Millisecond) // polling the kernel, bounded
	}
	if st := trackedState(srv, served); st != http.StateIdle {
		t.Fatalf("connection state %s with its request unread, want idle", st)
	}

	go func() { drained <- p.drain(context.Background()) }()
	// The drain sees the connection idle past its 1 ms grace and peeks:
	// twice, so it has had a full round to close it, and has not.
	for range 2 {
		select {
		case <-sc.peeked:
		case <-sc.closed:
			t.Fatal("the drain closed an idle connection whose next request waited in the kernel's buffer")
		case err := <-drained:
			t.Fatalf("the drain ended (%v) with a request unanswered", err)
		case <-time.After(10 * time.Second):
			t.Fatal("the drain never checked the idle connection for pending input")
		}
	}
	// The peek is reported before it is made: let that round end (it
	// holds the drain's lock), so the release cannot race it.
	srv.mu.Lock()
	srv.mu.Unlock()
	select {
	case <-sc.closed:
		t.Fatal("the drain closed an idle connection whose next request waited in the kernel's buffer")
	default:
	}
	sc.releaseReads()
	resp := readResponse(t, br)
	if resp.StatusCode != 200 || !resp.Close {
		t.Errorf("got status %d close=%v, want 200 with Connection: close", resp.StatusCode, resp.Close)
	}
	if err := <-drained; err != nil {
		t.Fatal(err)
	}
}

// heldOf returns the heldConn below the connection net/http serves.
func heldOf(c net.Conn) *heldConn {
	if tc := trackedOf(c); tc != nil {
		c = tc.Conn
	}
	return c.(*heldConn)
}

// trackedState is the drain's view of c.
func trackedState(s *HTTPServer, c net.Conn) http.ConnState {
	s.mu.Lock()
	defer s.mu.Unlock()
	ci, ok := s.conns[c]
	if !ok {
		return http.StateClosed
	}
	return ci.state
}

// socketPair returns both ends of a connected unix stream socket pair as
// net.Conns: bytes written on one end are in the other's receive buffer
// when Write returns.
func socketPair(t *testing.T) (a, b net.Conn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conns := make([]net.Conn, 2)
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "socketpair")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		conns[i] = c
	}
	return conns[0], conns[1]
}

// isClosed reports whether c was closed by the code under test: a use of
// a closed net.Conn fails with net.ErrClosed.
func isClosed(c net.Conn) bool {
	err := c.SetDeadline(time.Time{})
	return err != nil
}

// closeIdleCase is one connection in the drain's table, with where its
// state changed relative to the drain's start and the moment of the check.
type closeIdleCase struct {
	name    string
	state   http.ConnState
	since   time.Duration // state change, relative to the drain's start
	check   time.Duration // when closeIdle runs, relative to the drain's start
	pending bool          // bytes wait in its receive buffer
	hungUp  bool          // the peer has closed its end: EOF waits, no byte
	closed  bool          // want: closed by this round
}

// TestCloseIdle drives closeIdle on socket pairs under a fake clock, at
// the exact edges of each grace: an idle connection gets IdleGrace from
// the later of the drain's start and its last request, a new one
// newConnGrace, an active one is never closed, and one with bytes waiting
// is never taken for idle.
func TestCloseIdle(t *testing.T) {
	const grace = time.Second
	cases := []closeIdleCase{
		{name: "idle within grace", state: http.StateIdle, check: grace - time.Nanosecond},
		{name: "idle at grace", state: http.StateIdle, check: grace, closed: true},
		{name: "idle before drain, grace from drain start", state: http.StateIdle, since: -time.Hour, check: grace - time.Nanosecond},
		{name: "idle before drain, at grace from drain start", state: http.StateIdle, since: -time.Hour, check: grace, closed: true},
		{name: "idle since after drain start", state: http.StateIdle, since: time.Minute, check: time.Minute + grace - time.Nanosecond},
		{name: "idle since after drain start, at grace", state: http.StateIdle, since: time.Minute, check: time.Minute + grace, closed: true},
		{name: "idle past grace with a request waiting", state: http.StateIdle, check: time.Hour, pending: true},
		{name: "idle past grace, the client gone (EOF is no request)", state: http.StateIdle, check: grace, hungUp: true, closed: true},
		{name: "new within its grace", state: http.StateNew, check: newConnGrace - time.Nanosecond},
		{name: "new past idle grace, within its own", state: http.StateNew, check: grace},
		{name: "new at its grace", state: http.StateNew, check: newConnGrace, closed: true},
		{name: "new past its grace with a request waiting", state: http.StateNew, check: time.Hour, pending: true},
		{name: "active long past every grace", state: http.StateActive, check: time.Hour},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				srv := &HTTPServer{IdleGrace: grace, conns: make(map[net.Conn]connInfo)}
				c, peer := socketPair(t)
				if tc.pending {
					io.WriteString(peer, "GET / HTTP/1.1\r\n")
				}
				if tc.hungUp {
					peer.Close()
				}
				// A busy neighbour, always left open, so that left
				// counts more than the case's own connection.
				busy, _ := socketPair(t)
				start := time.Now()
				srv.conns[c] = connInfo{state: tc.state, since: start.Add(tc.since)}
				srv.conns[busy] = connInfo{state: http.StateActive, since: start}
				time.Sleep(tc.check)
				left := srv.closeIdle(start)
				wantLeft := 2
				if tc.closed {
					wantLeft = 1
				}
				if left != wantLeft {
					t.Errorf("closeIdle left %d open, want %d", left, wantLeft)
				}
				_, tracked := srv.conns[c]
				if got := isClosed(c); got != tc.closed || tracked == tc.closed {
					t.Errorf("closed %v, still tracked %v; want closed %v", got, tracked, tc.closed)
				}
				if isClosed(busy) {
					t.Error("active neighbour closed")
				}
				if tc.pending {
					b := make([]byte, 64)
					n, err := c.Read(b)
					if err != nil || n != len("GET / HTTP/1.1\r\n") {
						t.Errorf("pending request after closeIdle: %q %v, want it unread", b[:n], err)
					}
				}
			})
		})
	}
}

// TestCloseAllCutsEveryConn: at the drain timeout every connection is cut
// and counted, whatever its state.
func TestCloseAllCutsEveryConn(t *testing.T) {
	srv := &HTTPServer{conns: make(map[net.Conn]connInfo)}
	var cs []net.Conn
	for _, st := range []http.ConnState{http.StateNew, http.StateActive, http.StateIdle} {
		c, _ := socketPair(t)
		cs = append(cs, c)
		srv.conns[c] = connInfo{state: st, since: time.Now()}
	}
	if n := srv.closeAll(); n != len(cs) {
		t.Errorf("closeAll cut %d, want %d", n, len(cs))
	}
	for i, c := range cs {
		if !isClosed(c) {
			t.Errorf("conn %d left open", i)
		}
	}
	if n := srv.openConns(); n != 0 {
		t.Errorf("%d connections still tracked", n)
	}
}

// tlsPair returns the server end of a TLS connection over a socket pair,
// its handshake done with the ALPN protocol proto negotiated.
func tlsPair(t *testing.T, proto string) *tls.Conn {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	a, b := socketPair(t)
	srv := tls.Server(a, &tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}},
		NextProtos:   []string{proto},
	})
	cli := tls.Client(b, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{proto}})
	errc := make(chan error, 1)
	go func() { errc <- cli.Handshake() }()
	if err := srv.Handshake(); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if got := srv.ConnectionState().NegotiatedProtocol; got != proto {
		t.Fatalf("negotiated %q, want %q", got, proto)
	}
	return srv
}

// TestCloseIdleLeavesHTTP2ToShutdown: an HTTP/2 connection is not the
// HTTP/1 drain's to close or count, whatever its state (Shutdown sends it
// GOAWAY); an idle HTTP/1.1 connection over TLS is closed past its grace
// like any other.
func TestCloseIdleLeavesHTTP2ToShutdown(t *testing.T) {
	h2, h1 := tlsPair(t, "h2"), tlsPair(t, "http/1.1")
	srv := &HTTPServer{IdleGrace: time.Millisecond, conns: make(map[net.Conn]connInfo)}
	long := time.Now().Add(-time.Hour)
	srv.conns[h2] = connInfo{state: http.StateIdle, since: long}
	srv.conns[h1] = connInfo{state: http.StateIdle, since: long}
	if left := srv.closeIdle(long); left != 0 {
		t.Errorf("closeIdle counted %d HTTP/1 connections left, want 0 (the HTTP/2 one is Shutdown's)", left)
	}
	if isClosed(h2) {
		t.Error("HTTP/2 connection closed by the HTTP/1 drain")
	}
	if _, ok := srv.conns[h2]; !ok {
		t.Error("HTTP/2 connection no longer tracked")
	}
	if !isClosed(h1) {
		t.Error("idle HTTP/1.1 connection over TLS left open past its grace")
	}
}

// TestTrackCountsCut: a connection closed during the drain with a request
// begun and not read whole is counted as cut, and only that one: not one
// closed after its answer (net/http closes an Active connection once it
// has answered with Connection: close), not a hijacked one, not one
// closed outside a drain or with nothing begun, not one never tracked.
func TestTrackCountsCut(t *testing.T) {
	for _, tc := range []struct {
		name     string
		state    http.ConnState // as tracked before
		untrack  bool           // never tracked
		begun    bool
		to       http.ConnState
		draining bool
		cut      int64
	}{
		{name: "idle, request begun, closed in drain", state: http.StateIdle, begun: true, to: http.StateClosed, draining: true, cut: 1},
		{name: "new, request begun, closed in drain", state: http.StateNew, begun: true, to: http.StateClosed, draining: true, cut: 1},
		{name: "answered, then closed in drain", state: http.StateActive, begun: true, to: http.StateClosed, draining: true},
		{name: "hijacked in drain", state: http.StateIdle, begun: true, to: http.StateHijacked, draining: true},
		{name: "closed outside a drain", state: http.StateIdle, begun: true, to: http.StateClosed},
		{name: "nothing begun", state: http.StateIdle, to: http.StateClosed, draining: true},
		{name: "never tracked", untrack: true, begun: true, to: http.StateClosed, draining: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			drainC := make(chan struct{})
			if tc.draining {
				close(drainC)
			}
			srv := &HTTPServer{conns: make(map[net.Conn]connInfo), drainC: drainC, pool: &pool{}}
			a, _ := socketPair(t)
			c := &trackedConn{Conn: a}
			c.started.Store(tc.begun)
			if !tc.untrack {
				srv.conns[c] = connInfo{state: tc.state, since: time.Now()}
			}
			srv.track(c, tc.to)
			if n := srv.pool.cut.Load(); n != tc.cut {
				t.Errorf("cut %d, want %d", n, tc.cut)
			}
			if n := srv.openConns(); n != 0 {
				t.Errorf("%d connections still tracked", n)
			}
		})
	}
}

// errConn is a connection whose reads return no byte and err.
type errConn struct {
	net.Conn
	err error
}

func (c errConn) Read([]byte) (int, error) { return 0, c.err }

// TestTrackedConnFirstReadSize: on a plain connection, net/http's first
// read after the connection waits asks for less than its whole buffer when
// the buffer holds the start of the next request, which says a request
// has begun though no byte arrives; only the first read says so, and a
// TLS connection's reads (the TLS layer's, of other sizes) never do.
func TestTrackedConnFirstReadSize(t *testing.T) {
	timeout := errConn{err: os.ErrDeadlineExceeded}
	for _, tc := range []struct {
		name  string
		plain bool
		reads []int
		begun bool
	}{
		{name: "plain, room for all but 2 bytes", plain: true, reads: []int{netHTTPReadBuf - 2}, begun: true},
		{name: "plain, the whole buffer", plain: true, reads: []int{netHTTPReadBuf}},
		{name: "plain, all but 4", plain: true, reads: []int{netHTTPReadBuf - 4}},
		{name: "plain, only the first read counts", plain: true, reads: []int{netHTTPReadBuf, netHTTPReadBuf - 1}},
		{name: "TLS", reads: []int{netHTTPReadBuf - 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := &trackedConn{Conn: timeout, plain: tc.plain}
			c.waiting()
			for _, n := range tc.reads {
				c.Read(make([]byte, n))
			}
			if got := c.started.Load(); got != tc.begun {
				t.Errorf("request begun %v after reads of %v, want %v", got, tc.reads, tc.begun)
			}
		})
	}
}
