package upgrader

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// startHTTPPool serves h from a pool of two workers on 127.0.0.1:0 and
// reports every connection state change on states.
func startHTTPPool(t *testing.T, h http.Handler) (*pool, string, <-chan http.ConnState) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	states := make(chan http.ConnState, 64)
	srv := &HTTPServer{Server: &http.Server{
		Handler:   h,
		ConnState: func(_ net.Conn, st http.ConnState) { states <- st },
	}}
	p := newPool(2, srv.Worker, []net.Listener{ln}, nil, discardLogger(), nil)
	p.start()
	<-p.ready()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		p.drain(ctx)
	})
	return p, ln.Addr().String(), states
}

func waitState(t *testing.T, states <-chan http.ConnState, want http.ConnState) {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case st := <-states:
			if st == want {
				return
			}
		case <-timeout:
			t.Fatalf("no connection reached %s", want)
		}
	}
}

func hello(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "hi") }

func readResponse(t *testing.T, br *bufio.Reader) *http.Response {
	t.Helper()
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("read response: %v", err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}

// TestHTTPDrainAnswersRequestReadAfterDrainBegan is the trap of
// http.Server.Shutdown: a connection accepted before the drain whose request
// arrives after it began must still be answered.
func TestHTTPDrainAnswersRequestReadAfterDrainBegan(t *testing.T) {
	p, addr, states := startHTTPPool(t, http.HandlerFunc(hello))
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	waitState(t, states, http.StateNew) // accepted, nothing sent yet

	drained := make(chan error, 1)
	go func() { drained <- p.drain(context.Background()) }()
	<-p.draining

	io.WriteString(conn, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	resp := readResponse(t, bufio.NewReader(conn))
	if resp.StatusCode != 200 || !resp.Close {
		t.Errorf("got status %d close=%v, want 200 with Connection: close", resp.StatusCode, resp.Close)
	}
	if err := <-drained; err != nil {
		t.Fatal(err)
	}
}

// TestHTTPDrainGivesIdleKeepAliveOneMoreRequest: an idle keep-alive
// connection may send one more request during the drain.
func TestHTTPDrainGivesIdleKeepAliveOneMoreRequest(t *testing.T) {
	p, addr, states := startHTTPPool(t, http.HandlerFunc(hello))
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	br := bufio.NewReader(conn)
	io.WriteString(conn, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	if resp := readResponse(t, br); resp.Close {
		t.Fatal("first response closes the connection before any drain")
	}
	waitState(t, states, http.StateIdle)

	drained := make(chan error, 1)
	go func() { drained <- p.drain(context.Background()) }()
	<-p.draining

	io.WriteString(conn, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nok")
	resp := readResponse(t, br)
	if resp.StatusCode != 200 || !resp.Close {
		t.Errorf("got status %d close=%v, want 200 with Connection: close", resp.StatusCode, resp.Close)
	}
	if _, err := br.ReadByte(); err != io.EOF {
		t.Errorf("connection not closed after the answer: %v", err)
	}
	if err := <-drained; err != nil {
		t.Fatal(err)
	}
}

// TestHTTPDrainCutsRequestsAtTimeout: a request longer than the drain
// timeout is cut when it passes.
func TestHTTPDrainCutsRequestsAtTimeout(t *testing.T) {
	block := make(chan struct{})
	defer close(block)
	p, addr, states := startHTTPPool(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-block
	}))
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	io.WriteString(conn, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	waitState(t, states, http.StateActive)

	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := p.drain(ctx); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	b, err := io.ReadAll(conn)
	if err != nil || len(b) != 0 {
		t.Errorf("cut connection read %q, %v; want EOF without an answer", b, err)
	}
}

// TestHTTPDrainLeavesNoListener: after the drain nothing accepts on the
// pool's listener any more.
func TestHTTPDrainLeavesNoListener(t *testing.T) {
	p, addr, _ := startHTTPPool(t, http.HandlerFunc(hello))
	if err := p.drain(context.Background()); err != nil {
		t.Fatal(err)
	}
	if c, err := net.Dial("tcp", addr); err == nil {
		c.Close()
		t.Fatal("dial succeeded after the drain")
	} else if !strings.Contains(err.Error(), "refused") {
		t.Fatalf("dial after drain: %v, want connection refused", err)
	}
}
