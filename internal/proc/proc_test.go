//go:build !windows

package proc

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"testing"
	"time"
)

func TestWaitGone(t *testing.T) {
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Skip("no sleep command:", err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	pid := cmd.Process.Pid
	if !Alive(pid) {
		t.Fatalf("Alive(%d) = false for a running child", pid)
	}

	// A live process: the wait ends with the context.
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	if err := WaitGone(ctx, pid); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitGone on a live process = %v, want the context's deadline", err)
	}

	// Its exit ends the wait.
	done := make(chan error, 1)
	go func() { done <- WaitGone(t.Context(), pid) }()
	cmd.Process.Kill()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("WaitGone after the exit = %v, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("WaitGone did not return after the process was killed")
	}
	cmd.Wait()
	if Alive(pid) {
		t.Errorf("Alive(%d) = true after the child was reaped", pid)
	}
	if err := WaitGone(t.Context(), pid); err != nil {
		t.Errorf("WaitGone on a gone process = %v, want nil at once", err)
	}
	if !Alive(os.Getpid()) {
		t.Error("Alive(self) = false")
	}
}
