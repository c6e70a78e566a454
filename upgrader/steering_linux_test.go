package upgrader

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/gohandoff/handoff/internal/steer"
	"github.com/gohandoff/handoff/internal/supervise"
)

// newTestSteering is the steering of one listener on 127.0.0.1:0 made
// as handoff run makes it.
func newTestSteering(t *testing.T) (*steering, []string) {
	t.Helper()
	if err := steer.Check(); err != nil {
		t.Skip(err)
	}
	ln, err := steerListenConfig().Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f, err := socketFile(ln.(syscall.Conn), "tcp-test")
	ln.Close()
	if err != nil {
		t.Fatal(err)
	}
	g, err := steer.New([]*os.File{f})
	if err != nil {
		t.Fatalf("steer.New on a listener of steerListenConfig: %v", err)
	}
	var passed []string
	st := &steering{groups: []*steer.Group{g}, names: []string{"tcp-test"}, ports: []int{g.Port()},
		owner: make([]*workerProc, 1), prev: map[int]int{}, live: true, log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		addFile: func(name string, _ *os.File) error { passed = append(passed, name); return nil }}
	t.Cleanup(st.close)
	return st, passed
}

func testProc(state supervise.State) *workerProc {
	return &workerProc{state: state, set: -1, exited: make(chan struct{})}
}

// queuedOn dials the group once and says which socket's queue got it.
func queuedOn(t *testing.T, st *steering) int {
	t.Helper()
	before := make([]int, st.groups[0].Len())
	for i := range before {
		before[i], _ = st.groups[0].Queued(i)
	}
	c, err := net.Dial("tcp", net.JoinHostPort("127.0.0.1", itoa(st.ports[0])))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	end := time.Now().Add(5 * time.Second)
	for time.Now().Before(end) {
		for i := range before {
			if q, _ := st.groups[0].Queued(i); q > before[i] {
				return i
			}
		}
		time.Sleep(time.Millisecond) // the kernel's count rises with the client's ACK
	}
	t.Fatal("the connection reached no accept queue")
	return -1
}

func itoa(i int) string { return (&net.TCPAddr{Port: i}).String()[1:] }

func TestSteeringSendsOnlyToReadyWorkers(t *testing.T) {
	st, _ := newTestSteering(t)
	a, b := testProc(supervise.Starting), testProc(supervise.Starting)
	procs := map[*workerProc]struct{}{a: {}, b: {}}
	for _, p := range []*workerProc{a, b} {
		if _, err := st.acquireLocked(p, -1, nil); err != nil {
			t.Fatal(err)
		}
	}
	if a.set != 0 || b.set != 1 {
		t.Fatalf("sets %d and %d, want 0 and 1", a.set, b.set)
	}
	a.state = supervise.Ready
	st.steerLocked(procs, nil)
	for range 5 {
		if got := queuedOn(t, st); got != 0 {
			t.Fatalf("with worker b starting, a connection went to socket %d, want a's 0", got)
		}
	}
	a.state, b.state = supervise.Draining, supervise.Ready
	st.steerLocked(procs, nil)
	for range 5 {
		if got := queuedOn(t, st); got != 1 {
			t.Fatalf("with worker a retiring, a connection went to socket %d, want b's 1", got)
		}
	}
	// A generation that handed over leaves the program alone.
	st.live = false
	b.state = supervise.Draining
	a.state = supervise.Ready
	st.steerLocked(procs, nil)
	if got := queuedOn(t, st); got != 1 {
		t.Fatalf("after the hand-over, a connection went to socket %d, want the new generation's 1", got)
	}
}

func TestSteeringReusesFreeSets(t *testing.T) {
	st, _ := newTestSteering(t)
	a, b := testProc(supervise.Ready), testProc(supervise.Ready)
	st.acquireLocked(a, -1, nil)
	st.acquireLocked(b, -1, nil)
	// a crashed: its set is kept for its slot's respawn.
	st.releaseLocked(a)
	kept := []int{a.set}
	c := testProc(supervise.Starting)
	st.acquireLocked(c, -1, kept)
	if c.set != 2 {
		t.Errorf("a roll's replacement got set %d, want a new one, 2 (0 is kept, 1 in use)", c.set)
	}
	r := testProc(supervise.Starting)
	st.acquireLocked(r, 0, kept)
	if r.set != 0 {
		t.Errorf("the respawn got set %d, want its slot's kept 0", r.set)
	}
	if got, want := st.heldLocked(nil), "0,1,2"; got != want {
		t.Errorf("held sets %q, want %q", got, want)
	}
	st.releaseLocked(b)
	st.prev[1] = os.Getppid() // as if the previous generation's workers held it
	d := testProc(supervise.Starting)
	st.acquireLocked(d, -1, nil)
	if d.set != 3 {
		t.Errorf("got set %d, want a new one, 3: set 1 is the previous generation's", d.set)
	}
	if n := st.groups[0].Len(); n != 4 {
		t.Errorf("%d sockets in the group, want 4", n)
	}
}

func TestSteerListenConfigRefusesPortInUse(t *testing.T) {
	ln, err := steerListenConfig().Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	_, err = steerListenConfig().Listen(context.Background(), "tcp", ln.Addr().String())
	if !errors.Is(err, syscall.EADDRINUSE) {
		t.Errorf("second listener on %s: %v, want EADDRINUSE although both have SO_REUSEPORT", ln.Addr(), err)
	}
}
