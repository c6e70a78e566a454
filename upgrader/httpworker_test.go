package upgrader

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// syncBuffer is a log sink safe for the pool's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// TestHTTPServerIdleGraceDefault: a zero IdleGrace means DefaultIdleGrace,
// a positive one is kept.
func TestHTTPServerIdleGraceDefault(t *testing.T) {
	for _, tc := range []struct {
		set, want time.Duration
	}{
		{0, DefaultIdleGrace},
		{-time.Second, DefaultIdleGrace},
		{5 * time.Millisecond, 5 * time.Millisecond},
	} {
		p := newPool(1, nil, nil, nil, discardLogger(), nil)
		s := &HTTPServer{Server: &http.Server{}, IdleGrace: tc.set}
		s.setup(&Worker{pool: p})
		if s.IdleGrace != tc.want {
			t.Errorf("IdleGrace %s: after setup %s, want %s", tc.set, s.IdleGrace, tc.want)
		}
	}
}

// failingListener fails every Accept with err.
type failingListener struct {
	net.Listener
	err error
}

func (l failingListener) Accept() (net.Conn, error) { return nil, l.err }

// TestHTTPWorkerReturnsServeError: a listener that fails before the drain
// makes the worker return the failure, so that the pool logs it and
// restarts the worker.
func TestHTTPWorkerReturnsServeError(t *testing.T) {
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer tcp.Close()
	boom := errors.New("accept boom")
	p := newPool(1, nil, []net.Listener{failingListener{tcp, boom}}, nil, discardLogger(), nil)
	s := &HTTPServer{Server: &http.Server{}}
	w := &Worker{pool: p, Listeners: p.lns, Logger: discardLogger()}
	err = s.Worker(context.Background(), w)
	if !errors.Is(err, boom) {
		t.Fatalf("worker returned %v, want the listener's %v", err, boom)
	}
}

// TestHTTPDrainCleanLogsNoCut: a drain that finishes in time cuts
// nothing and says so: no "drain timeout" warning, a cut count of 0.
func TestHTTPDrainCleanLogsNoCut(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var logs syncBuffer
	srv := &HTTPServer{Server: &http.Server{Handler: http.HandlerFunc(hello)}}
	p := newPool(1, srv.Worker, []net.Listener{ln}, nil, slog.New(slog.NewTextHandler(&logs, nil)), nil)
	p.start()
	<-p.ready()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.drain(ctx); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(logs.String(), "drain timeout") || p.cutCount() != 0 {
		t.Errorf("clean drain: cut %d, logs:\n%s\nwant no cut", p.cutCount(), logs.String())
	}
}
