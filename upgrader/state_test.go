package upgrader

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"
)

// TestStateFileInMemory: on Linux the state file is a memfd, so that
// the state writes on an upgrade's critical path cost no file system
// journal; it is read and written like the temporary file elsewhere.
func TestStateFileInMemory(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("memfd is Linux only")
	}
	sf, err := newStateFile()
	if err != nil {
		t.Fatal(err)
	}
	defer sf.f.Close()
	link, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", sf.f.Fd()))
	if err != nil || !strings.HasPrefix(link, "/memfd:handoff-state") {
		t.Fatalf("state file is %q (%v), want a memfd", link, err)
	}
	want := genState{Generation: 4, PID: 99, Version: "v4"}
	if err := sf.write(want); err != nil {
		t.Fatal(err)
	}
	if err := sf.write(genState{Generation: 5, PID: 1}); err != nil {
		t.Fatal(err)
	}
	if got, err := sf.read(); err != nil || got.Generation != 5 || got.PID != 1 || got.Version != "" {
		t.Errorf("read back %+v, %v; want the shorter second write alone", got, err)
	}
}
