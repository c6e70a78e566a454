// Package proc watches processes that are not children of the caller:
// the upgrader checks a PID file's process, the CLI and the benchmark wait
// for an old generation's exit.
package proc

import (
	"context"
	"time"
)

// pollEvery is how often Gone checks a process where no exit notification
// exists.
const pollEvery = time.Millisecond

// WaitGone waits until pid has exited or ctx is done. It uses a pidfd where
// the kernel has one, so the exit is seen the moment it happens, and polls
// every millisecond otherwise. A process that is already gone returns at
// once.
func WaitGone(ctx context.Context, pid int) error {
	if pid <= 0 {
		return nil
	}
	if done, err := waitPidfd(ctx, pid); done {
		return err
	}
	t := time.NewTicker(pollEvery)
	defer t.Stop()
	for Alive(pid) {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
	return nil
}
