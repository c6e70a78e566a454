package upgrader

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// The relay copies every byte to the previous stderr and keeps the last
// StderrTailLines lines, each cut at maxTailLine bytes, the last one even
// without a newline.
func TestStderrRelay(t *testing.T) {
	saved := os.Stderr
	t.Cleanup(func() { os.Stderr = saved })
	prev, err := os.Create(filepath.Join(t.TempDir(), "stderr"))
	if err != nil {
		t.Fatal(err)
	}
	os.Stderr = prev
	u := &Upgrader{relayStderr: true}
	rl := u.captureStderr()
	if os.Stderr != rl.w {
		t.Fatal("os.Stderr is not the relay during the upgrade")
	}
	var sent strings.Builder
	for i := range 12 {
		fmt.Fprintf(&sent, "line %d\n", i)
	}
	sent.WriteString("long " + strings.Repeat("x", 2*maxTailLine) + "\r\n")
	sent.WriteString("last, no newline")
	// Written in pieces that cut lines, as a process writes.
	for s := sent.String(); len(s) > 0; s = s[min(7, len(s)):] {
		if _, err := rl.w.WriteString(s[:min(7, len(s))]); err != nil {
			t.Fatal(err)
		}
	}
	tail := rl.finish(true)
	if os.Stderr != prev {
		t.Error("os.Stderr not restored")
	}
	var want []string
	for i := 4; i < 12; i++ {
		want = append(want, fmt.Sprintf("line %d", i))
	}
	want = append(want, "long "+strings.Repeat("x", maxTailLine-len("long ")), "last, no newline")
	if !slices.Equal(tail, want) {
		t.Errorf("tail:\n%q\nwant:\n%q", tail, want)
	}
	if b, _ := os.ReadFile(prev.Name()); string(b) != sent.String() {
		t.Errorf("relayed %d bytes, want the %d sent", len(b), sent.Len())
	}
}

// Without a real stderr passed on, the new generation shares this one's
// stderr and nothing is swapped.
func TestStderrRelayOff(t *testing.T) {
	saved := os.Stderr
	u := &Upgrader{}
	if rl := u.captureStderr(); rl != nil || os.Stderr != saved {
		t.Fatal("relay made without a stderr to restore in the new generation")
	}
	if tail := (*stderrRelay)(nil).finish(true); tail != nil {
		t.Fatalf("finish of no relay = %q", tail)
	}
}
