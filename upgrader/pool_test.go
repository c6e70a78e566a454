package upgrader

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

// fakeListener blocks in Accept until closed.
type fakeListener struct {
	once   sync.Once
	closed chan struct{}
}

func newFakeListener() *fakeListener { return &fakeListener{closed: make(chan struct{})} }

func (l *fakeListener) Accept() (net.Conn, error) {
	<-l.closed
	return nil, net.ErrClosed
}
func (l *fakeListener) Close() error   { l.once.Do(func() { close(l.closed) }); return nil }
func (l *fakeListener) Addr() net.Addr { return &net.TCPAddr{} }

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// serveUntilClosed is a well-behaved worker: ready, then accept until the
// listener is closed.
func serveUntilClosed(ctx context.Context, w *Worker) error {
	w.Ready()
	for {
		if _, err := w.Listeners[0].Accept(); err != nil {
			select {
			case <-w.Draining():
				return nil
			default:
				return err
			}
		}
	}
}

func TestPoolRestartsFailingWorkerWithBackoff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var runs atomic.Int32
		fn := func(ctx context.Context, w *Worker) error {
			switch runs.Add(1) {
			case 1:
				panic("boom")
			case 2, 3:
				return errors.New("failed")
			}
			return serveUntilClosed(ctx, w)
		}
		ln := newFakeListener()
		p := newPool(1, fn, []net.Listener{ln}, nil, discardLogger(), nil)
		start := time.Now()
		p.start()
		<-p.ready()
		// Three failures: a restart at once, then backoffs of 100 and
		// 200 ms before the fourth run.
		if got, want := time.Since(start), 300*time.Millisecond; got != want {
			t.Errorf("ready after %s of backoff, want %s", got, want)
		}
		st := p.status()
		if st[0].Restarts != 3 || st[0].State != "ready" {
			t.Errorf("status = %+v, want 3 restarts and ready", st[0])
		}
		if err := p.drain(context.Background()); err != nil {
			t.Fatal(err)
		}
		if runs.Load() != 4 {
			t.Errorf("worker ran %d times, want 4", runs.Load())
		}
	})
}

func TestPoolBackoffIsCapped(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var runs atomic.Int32
		fn := func(ctx context.Context, w *Worker) error {
			runs.Add(1)
			return errors.New("always failing")
		}
		p := newPool(1, fn, nil, nil, discardLogger(), nil)
		p.start()
		// At once, then 100ms doubling: 0+0.1+0.2+...+6.4 = 12.7 s for
		// 9 runs, then 10 s each.
		time.Sleep(12700*time.Millisecond + 3*MaxRestartBackoff)
		synctest.Wait()
		if got := runs.Load(); got != 12 {
			t.Errorf("worker ran %d times in 42.7 s, want 12 (backoff capped at %s)", got, MaxRestartBackoff)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if err := p.drain(ctx); err != nil {
			t.Fatal(err)
		}
	})
}

func TestPoolReadyOnlyWhenEveryWorkerIs(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		release := make(chan struct{})
		fn := func(ctx context.Context, w *Worker) error {
			if w.ID == 2 {
				<-release
			}
			return serveUntilClosed(ctx, w)
		}
		p := newPool(3, fn, []net.Listener{newFakeListener()}, nil, discardLogger(), nil)
		p.start()
		synctest.Wait()
		select {
		case <-p.ready():
			t.Fatal("pool ready while worker 2 is not")
		default:
		}
		close(release)
		synctest.Wait()
		select {
		case <-p.ready():
		default:
			t.Fatal("pool not ready after every worker is")
		}
		p.drain(context.Background())
	})
}

func TestPoolDrainClosesSocketsBeforeWorkersSeeIt(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ln := newFakeListener()
		p := newPool(2, serveUntilClosed, []net.Listener{ln}, nil, discardLogger(), nil)
		p.start()
		<-p.ready()
		if err := p.drain(context.Background()); err != nil {
			t.Fatal(err)
		}
		select {
		case <-ln.closed:
		default:
			t.Error("listener still open after the drain")
		}
		for _, w := range p.status() {
			if w.Restarts != 0 || w.State != "stopped" {
				t.Errorf("worker %d: %+v, want stopped without restarts (the drain is not a crash)", w.ID, w)
			}
		}
	})
}

func TestPoolDrainTimeoutCancelsWorkers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fn := func(ctx context.Context, w *Worker) error {
			w.Ready()
			<-ctx.Done() // ignores the drain until the deadline
			return nil
		}
		p := newPool(1, fn, nil, nil, discardLogger(), nil)
		p.start()
		<-p.ready()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		start := time.Now()
		if err := p.drain(ctx); err != nil {
			t.Fatal(err)
		}
		if got := time.Since(start); got != 5*time.Second {
			t.Errorf("drain returned after %s, want the 5s timeout", got)
		}
	})
}

func TestPoolDrainGivesUpOnStuckWorker(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		stuck := make(chan struct{})
		defer close(stuck)
		fn := func(ctx context.Context, w *Worker) error {
			w.Ready()
			<-stuck
			return nil
		}
		p := newPool(1, fn, nil, nil, discardLogger(), nil)
		p.start()
		<-p.ready()
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if err := p.drain(ctx); err == nil {
			t.Error("drain returned nil with a worker that never returns")
		}
	})
}
