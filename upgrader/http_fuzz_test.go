package upgrader

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"log"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"
)

// parsedRequests counts the requests of b that net/http reads whole, body
// included, and reports whether bytes of a further one follow them.
func parsedRequests(b []byte) (n int, tail bool) {
	r := bytes.NewReader(b)
	br := bufio.NewReader(r)
	for {
		off := len(b) - r.Len() - br.Buffered()
		req, err := http.ReadRequest(br)
		if err == nil {
			_, err = io.Copy(io.Discard, req.Body)
		}
		if err != nil {
			return n, off < len(b)
		}
		n++
	}
}

// FuzzHTTPDrainEdge sends a byte stream on a kept-alive connection around
// the start of a drain: data[:split] before it, the rest after it began,
// or, with late, after the idle grace has closed an idle connection. A
// request that had begun to arrive before the drain and that the rest of
// the stream completes is answered, unless the server said
// "Connection: close" first (a bad request, a response during the drain)
// or the drain counted the connection as cut. The drain always ends.
func FuzzHTTPDrainEdge(f *testing.F) {
	get := "GET / HTTP/1.1\r\nHost: x\r\n\r\n"
	post := "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
	for _, s := range []struct {
		data  string
		split int
		late  bool
	}{
		{get, 10, true},                        // a header half there at the drain, finished after the grace
		{get, 10, false},                       // finished within the grace
		{get + get, len(get) + 3, true},        // pipelined: one answered, the next begun
		{post, len(post) - 2, true},            // a body half there
		{get + "GET /x HTTP/1.1\r\n", 2, true}, // a second request that never ends: cut
		{get, len(get), true},                  // idle at the drain: closed at the grace
		{"\r\n\r\n" + get, 3, true},            // blank lines before a request
		{"garbage\r\n\r\n", 4, true},           // a bad request: 400 and close
		{get, 1, true},                         // less than net/http's 4-byte peek
	} {
		f.Add([]byte(s.data), uint16(s.split), s.late)
	}
	f.Fuzz(func(t *testing.T, data []byte, split uint16, late bool) {
		if len(data) > 8<<10 {
			return
		}
		a := min(int(split), len(data))
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		var seenMu sync.Mutex
		seen := make(map[string]bool) // remote addresses of the connections accepted
		srv := &HTTPServer{IdleGrace: 20 * time.Millisecond, Server: &http.Server{
			ReadHeaderTimeout: 5 * time.Second,
			ConnState: func(c net.Conn, _ http.ConnState) {
				seenMu.Lock()
				seen[c.RemoteAddr().String()] = true
				seenMu.Unlock()
			},
			ErrorLog: discardStdLogger(),
			Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				io.Copy(io.Discard, r.Body)
				io.WriteString(w, "ok")
			}),
		}}
		p := newPool(1, srv.Worker, []net.Listener{ln}, nil, discardLogger(), nil)
		p.start()
		<-p.ready()
		conn, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		canary, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer canary.Close()
		cbr := bufio.NewReader(canary)
		io.WriteString(canary, get)
		if resp, err := http.ReadResponse(cbr, nil); err != nil {
			t.Fatal(err)
		} else {
			resp.Body.Close()
		}
		conn.Write(data[:a])
		before, begun := parsedRequests(data[:a])
		// Wait until the server has read what came before the drain: the
		// connection's state or its bytes say so, as a drain would see.
		waitRead(t, srv, conn, a > 0, func(addr string) bool {
			seenMu.Lock()
			defer seenMu.Unlock()
			return seen[addr]
		})

		// Short, so that a stream that never completes a request costs a
		// fuzzing run little: it is cut, and counted, at this timeout.
		ctx, cancel := context.WithTimeout(context.Background(), 250*time.Millisecond)
		defer cancel()
		drained := make(chan error, 1)
		go func() { drained <- p.drain(ctx) }()
		<-p.draining
		if late {
			canary.SetReadDeadline(time.Now().Add(10 * time.Second))
			cbr.ReadByte() // EOF: the idle grace is over and the sweep ran
		}
		conn.Write(data[a:])

		br := bufio.NewReader(conn)
		conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		answered, closed := 0, false
		for !closed {
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				break
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			answered++
			closed = resp.Close
		}
		select {
		case err := <-drained:
			if err != nil {
				t.Fatalf("drain: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("drain did not end")
		}
		all, _ := parsedRequests(data)
		want := before
		if begun && all > before {
			want++ // the request begun before the drain, completed after
		}
		if !closed && answered < want && p.cutCount() == 0 {
			t.Fatalf("%d of %d requests answered (%d whole before the drain, begun=%v, late=%v), none counted as cut; data %q split %d",
				answered, want, before, begun, late, data, a)
		}
	})
}

// waitRead waits until the server has taken up conn: accepted it, and,
// when bytes were sent, read them (the socket is empty again) or closed
// it (a bad request).
func waitRead(t *testing.T, srv *HTTPServer, conn net.Conn, sent bool, accepted func(string) bool) {
	t.Helper()
	local := conn.LocalAddr().String()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		srv.mu.Lock()
		var found net.Conn
		for c := range srv.conns {
			if c.RemoteAddr().String() == local {
				found = c
			}
		}
		srv.mu.Unlock()
		if found == nil && accepted(local) {
			return // closed already
		}
		if found != nil && (!sent || !pendingInput(found)) {
			return
		}
		time.Sleep(time.Millisecond) // polling the server's own view; bounded above
	}
	t.Fatal("the server never took the connection up")
}

func discardStdLogger() *log.Logger { return log.New(io.Discard, "", 0) }
