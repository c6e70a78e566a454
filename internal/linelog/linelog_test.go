package linelog

import (
	"io"
	"testing"
	"time"
)

func TestFindWaitsForTheLineAndEndWakesWaiters(t *testing.T) {
	t.Parallel()
	r, w := io.Pipe()
	l := New(r)
	match := All("msg=ready", "generation=2")
	i, change, ended := l.Find(0, match)
	if i != -1 || ended != "" {
		t.Fatalf("Find on an empty log = %d %q, want -1 and no end", i, ended)
	}
	go io.WriteString(w, "msg=ready generation=1\nmsg=ready generation=2\n")
	deadline := time.After(10 * time.Second)
	for i < 0 {
		select {
		case <-change:
		case <-deadline:
			t.Fatal("no wake-up for the line")
		}
		i, change, _ = l.Find(0, match)
	}
	if i != 1 || l.Line(1) != "msg=ready generation=2" || l.Len() != 2 {
		t.Fatalf("found line %d of %d: %q", i, l.Len(), l.Line(i))
	}
	if got := l.Tail(1); got != "msg=ready generation=2" {
		t.Errorf("Tail(1) = %q", got)
	}
	if i, _, _ := l.Find(0, Any("nope", "generation=1")); i != 0 {
		t.Errorf("Any found line %d, want 0", i)
	}
	_, change, _ = l.Find(2, match)
	l.End("process exited")
	select {
	case <-change:
	case <-deadline:
		t.Fatal("End did not wake the waiter")
	}
	if _, _, ended := l.Find(2, match); ended != "process exited" {
		t.Errorf("reason after End = %q", ended)
	}
	w.Close()
}
