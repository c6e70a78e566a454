package upgrader

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"testing"
)

// In a worker process, Upgrade must refuse with a clear error: a worker
// has no state file and no listeners of its own to hand over (it used to
// panic on the nil state file once the worker was ready).
func TestUpgradeInWorkerProcessIsRefused(t *testing.T) {
	for _, tc := range []struct {
		name  string
		ready bool
	}{{"starting", false}, {"ready", true}} {
		t.Run(tc.name, func(t *testing.T) {
			w := &workerSide{id: 1, files: map[string]*os.File{}, stopC: make(chan struct{}), gate: make(chan struct{})}
			u := newWorker(Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, w, 3)
			if tc.ready {
				close(u.ready) // a worker that serves
			}
			res, err := u.Upgrade(context.Background())
			if !errors.Is(err, errWorkerUpgrade) {
				t.Fatalf("Upgrade in a worker process: got %v, want %v", err, errWorkerUpgrade)
			}
			if res.OldPID != os.Getpid() || res.NewPID != 0 {
				t.Errorf("result %+v, want OldPID %d and no NewPID", res, os.Getpid())
			}
		})
	}
}
