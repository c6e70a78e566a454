package upgrader

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/gohandoff/handoff/internal/supervise"
)

// The goroutine pool's supervision, each rule on its edge, under a fake
// clock (testing/synctest).

// TestPoolWorkerIDs: goroutine workers are numbered from 0; in a worker
// process the one worker carries its number among its master's workers.
func TestPoolWorkerIDs(t *testing.T) {
	for _, tc := range []struct {
		n, procID int
		want      []int
	}{
		{n: 3, procID: -1, want: []int{0, 1, 2}},
		{n: 1, procID: 4, want: []int{4}},
	} {
		synctest.Test(t, func(t *testing.T) {
			var mu sync.Mutex
			var ids []int
			fn := func(ctx context.Context, w *Worker) error {
				mu.Lock()
				ids = append(ids, w.ID)
				mu.Unlock()
				return serveUntilClosed(ctx, w)
			}
			p := newPool(tc.n, fn, []net.Listener{newFakeListener()}, nil, discardLogger(), nil)
			p.procID = tc.procID
			p.start()
			<-p.ready()
			p.drain(context.Background())
			slices.Sort(ids)
			if !slices.Equal(ids, tc.want) {
				t.Errorf("procID %d: worker IDs %v, want %v", tc.procID, ids, tc.want)
			}
		})
	}
}

// TestPoolLogsNameTheWorker: a goroutine worker's failure is logged with
// its number; a worker process's logger names it already.
func TestPoolLogsNameTheWorker(t *testing.T) {
	for _, tc := range []struct {
		procID int
		want   bool
	}{{-1, true}, {0, false}} {
		synctest.Test(t, func(t *testing.T) {
			var logs syncBuffer
			var runs atomic.Int32
			fn := func(ctx context.Context, w *Worker) error {
				if runs.Add(1) == 1 {
					return errors.New("first run fails")
				}
				return serveUntilClosed(ctx, w)
			}
			p := newPool(1, fn, []net.Listener{newFakeListener()}, nil, slog.New(slog.NewTextHandler(&logs, nil)), nil)
			p.procID = tc.procID
			p.start()
			<-p.ready()
			p.drain(context.Background())
			if got := strings.Contains(logs.String(), "worker=0"); got != tc.want {
				t.Errorf("procID %d: log names the worker %v, want %v:\n%s", tc.procID, got, tc.want, logs.String())
			}
		})
	}
}

// TestPoolRecordsWhyAWorkerFailed: status says why a worker last failed:
// its error, its panic, or that it returned before the drain.
func TestPoolRecordsWhyAWorkerFailed(t *testing.T) {
	for _, tc := range []struct {
		name string
		fail func() error
		want string
	}{
		{"error", func() error { return errors.New("bind lost") }, "bind lost"},
		{"panic", func() error { panic("boom") }, "panic: boom"},
		{"returned", func() error { return nil }, "worker returned before the drain"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				var runs atomic.Int32
				fn := func(ctx context.Context, w *Worker) error {
					if runs.Add(1) == 1 {
						return tc.fail()
					}
					return serveUntilClosed(ctx, w)
				}
				p := newPool(1, fn, []net.Listener{newFakeListener()}, nil, discardLogger(), nil)
				p.start()
				<-p.ready()
				st := p.status()[0]
				p.drain(context.Background())
				if !strings.HasPrefix(st.LastErr, tc.want) || st.Restarts != 1 {
					t.Errorf("status %+v, want 1 restart and last error %q", st, tc.want)
				}
			})
		})
	}
}

// TestPoolBackoffResetsAfterStableRun: a worker that stayed up for
// StableAfter (exactly) before it failed restarts at once again, not after
// the doubled backoff.
func TestPoolBackoffResetsAfterStableRun(t *testing.T) {
	for _, tc := range []struct {
		up   time.Duration
		want time.Duration // backoff before the fourth run
	}{
		{StableAfter, 0},
		{StableAfter - time.Nanosecond, 2 * MinRestartBackoff},
	} {
		synctest.Test(t, func(t *testing.T) {
			var runs atomic.Int32
			var failedAt, restartedAt time.Time
			fn := func(ctx context.Context, w *Worker) error {
				switch runs.Add(1) {
				case 1, 2: // restarted at once, then after 100 ms
					return errors.New("failed at start")
				case 3:
					time.Sleep(tc.up)
					failedAt = time.Now()
					return errors.New("failed after a while")
				}
				restartedAt = time.Now()
				return serveUntilClosed(ctx, w)
			}
			p := newPool(1, fn, []net.Listener{newFakeListener()}, nil, discardLogger(), nil)
			p.start()
			<-p.ready()
			p.drain(context.Background())
			if got := restartedAt.Sub(failedAt); got != tc.want {
				t.Errorf("up %s, then failed: restarted after %s, want %s", tc.up, got, tc.want)
			}
		})
	}
}

// TestPoolStatusDuringDrain: a ready worker shows "draining" until it has
// returned, then "stopped"; uptime counts from its start.
func TestPoolStatusDuringDrain(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		release := make(chan struct{})
		fn := func(ctx context.Context, w *Worker) error {
			w.Ready()
			<-w.Draining()
			<-release // finishing its work
			return nil
		}
		p := newPool(1, fn, nil, nil, discardLogger(), nil)
		p.start()
		<-p.ready()
		time.Sleep(3 * time.Second)
		if st := p.status()[0]; st.State != "ready" || st.Uptime != 3*time.Second {
			t.Errorf("status %+v, want ready, up 3s", st)
		}
		drained := make(chan error, 1)
		go func() { drained <- p.drain(context.Background()) }()
		synctest.Wait()
		if st := p.status()[0]; st.State != "draining" {
			t.Errorf("status during the drain %+v, want draining", st)
		}
		close(release)
		if err := <-drained; err != nil {
			t.Fatal(err)
		}
		if st := p.status()[0]; st.State != "stopped" {
			t.Errorf("status after the drain %+v, want stopped", st)
		}
	})
}

// TestPoolCrashLoop: goroutine workers share the crash-loop rule of worker
// processes (internal/supervise): a slot whose worker died CrashLoopDeaths times
// within CrashLoopWindow shows crash-loop, not backoff.
func TestPoolCrashLoop(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fn := func(ctx context.Context, w *Worker) error { return errors.New("always failing") }
		p := newPool(1, fn, nil, nil, discardLogger(), nil)
		p.start()
		// Deaths at 0, 0, 0.1, 0.3 and 0.7 s: restarted at once, then
		// after 100, 200 and 400 ms.
		time.Sleep(500 * time.Millisecond)
		synctest.Wait()
		if st := p.status()[0].State; st != string(supervise.Backoff) {
			t.Errorf("after 4 deaths the slot is %q, want %q", st, supervise.Backoff)
		}
		time.Sleep(300 * time.Millisecond)
		synctest.Wait()
		if st := p.status()[0].State; st != string(supervise.CrashLoop) {
			t.Errorf("after %d deaths within %s the slot is %q, want %q", CrashLoopDeaths, CrashLoopWindow, st, supervise.CrashLoop)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		p.drain(ctx)
	})
}
