package upgrader

import (
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/oklog/run"
)

// TestReadyActor: a generation is marked ready once every one of its
// ready channels is closed, not before; one still not ready after
// slowAfter says so once (the "not ready yet" warning before the upgrade
// timeout kills it); a slowAfter of 0 never warns.
func TestReadyActor(t *testing.T) {
	for _, tc := range []struct {
		name      string
		slowAfter time.Duration
		readyIn   time.Duration
		wantSlow  int32
	}{
		{"ready in time", 3 * time.Second, 3*time.Second - time.Nanosecond, 0},
		{"slow", 3 * time.Second, 5 * time.Second, 1},
		{"no warning asked", 0, 5 * time.Second, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				a, b := make(chan struct{}), make(chan struct{})
				var marked, slow atomic.Int32
				var g run.Group
				addReadyActor(&g, func() error { marked.Add(1); return nil }, tc.slowAfter, func() { slow.Add(1) }, a, b)
				stop := make(chan struct{})
				g.Add(func() error { <-stop; return nil }, func(error) {})
				done := make(chan error, 1)
				go func() { done <- g.Run() }()

				close(b)
				time.Sleep(tc.readyIn)
				synctest.Wait()
				if marked.Load() != 0 {
					t.Fatal("marked ready with one ready channel still open")
				}
				close(a)
				synctest.Wait()
				if marked.Load() != 1 {
					t.Fatalf("marked ready %d times once every channel was closed, want 1", marked.Load())
				}
				if got := slow.Load(); got != tc.wantSlow {
					t.Errorf("slow start warned %d times, want %d", got, tc.wantSlow)
				}
				close(stop)
				<-done
			})
		})
	}
}
