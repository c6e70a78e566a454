package steer

import (
	"context"
	"errors"
	"net"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// newGroup makes a group of n sockets on 127.0.0.1:0.
func newGroup(t *testing.T, n int) *Group {
	t.Helper()
	if err := Check(); err != nil {
		t.Skip(err)
	}
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		c.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1) })
		return serr
	}}
	lc.SetMultipathTCP(false)
	ln, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f, err := ln.(*net.TCPListener).File()
	ln.Close()
	if err != nil {
		t.Fatal(err)
	}
	g, err := New([]*os.File{f})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(g.Close)
	for i := 1; i < n; i++ {
		j, _, err := g.Add()
		if err != nil {
			t.Fatal(err)
		}
		if j != i {
			t.Fatalf("Add: index %d, want %d", j, i)
		}
	}
	return g
}

// counts accepts on every socket of g and counts per socket.
type counts struct {
	mu sync.Mutex
	n  []int
	c  chan struct{}
}

func acceptAll(t *testing.T, g *Group) *counts {
	t.Helper()
	c := &counts{n: make([]int, g.Len()), c: make(chan struct{}, 1024)}
	for i := range g.Len() {
		ln, err := net.FileListener(g.File(i))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		go func() {
			for {
				conn, err := ln.Accept()
				if err != nil {
					return
				}
				conn.Close()
				c.mu.Lock()
				c.n[i]++
				c.mu.Unlock()
				c.c <- struct{}{}
			}
		}()
	}
	return c
}

func (c *counts) wait(t *testing.T, n int) []int {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for range n {
		select {
		case <-c.c:
		case <-timeout:
			t.Fatalf("accepted fewer than %d connections", n)
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	out := append([]int(nil), c.n...)
	for i := range c.n {
		c.n[i] = 0
	}
	return out
}

func dial(t *testing.T, port, n int) {
	t.Helper()
	for range n {
		conn, err := net.Dial("tcp", net.JoinHostPort("127.0.0.1", itoa(port)))
		if err != nil {
			t.Fatal(err)
		}
		conn.Close()
	}
}

func itoa(i int) string { return (&net.TCPAddr{Port: i}).String()[1:] }

func TestSteerSendsOnlyToTargets(t *testing.T) {
	g := newGroup(t, 4)
	c := acceptAll(t, g)
	for _, tc := range []struct {
		name    string
		targets []int
	}{
		{"one", []int{2}},
		{"two", []int{0, 3}},
		{"three", []int{1, 2, 3}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := g.Steer(tc.targets); err != nil {
				t.Fatal(err)
			}
			const n = 60
			dial(t, g.Port(), n)
			got := c.wait(t, n)
			for i, k := range got {
				in := false
				for _, tg := range tc.targets {
					in = in || tg == i
				}
				if in && k == 0 || !in && k != 0 {
					t.Errorf("targets %v: socket %d got %d of %d connections (all %v)", tc.targets, i, k, n, got)
				}
			}
		})
	}
}

func TestSteerRefusesIndexOutOfRange(t *testing.T) {
	g := newGroup(t, 2)
	if err := g.Steer([]int{0, 2}); err == nil {
		t.Fatal("Steer([0 2]) on 2 sockets: no error")
	}
}

// TestIndexOfLastSocketMovesIntoHole shows the kernel behaviour the
// package is built around: when socket 0 leaves, index 0 names the socket
// that was last.
func TestIndexOfLastSocketMovesIntoHole(t *testing.T) {
	g := newGroup(t, 3)
	last := g.File(2)
	g.mu.Lock()
	g.files[0].Close()
	g.files = g.files[1:]
	g.mu.Unlock()
	if err := g.Steer([]int{0}); err != nil {
		t.Fatal(err)
	}
	ln, err := net.FileListener(last)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	dial(t, g.Port(), 1)
	ln.(*net.TCPListener).SetDeadline(time.Now().Add(5 * time.Second))
	conn, err := ln.Accept()
	if err != nil {
		t.Fatalf("the socket that was last did not get the connection steered to index 0: %v", err)
	}
	conn.Close()
}

func TestQueuedCountsAcceptQueue(t *testing.T) {
	g := newGroup(t, 2)
	if err := g.Steer([]int{1}); err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn
	for range 5 {
		conn, err := net.Dial("tcp", net.JoinHostPort("127.0.0.1", itoa(g.Port())))
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, conn)
	}
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	end := time.Now().Add(5 * time.Second)
	for {
		q1, err := g.Queued(1)
		if err != nil {
			t.Fatal(err)
		}
		q0, _ := g.Queued(0)
		if q1 == 5 && q0 == 0 {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("queued: socket 0 %d, socket 1 %d; want 0 and 5", q0, q1)
		}
		time.Sleep(time.Millisecond) // polls the kernel's count, which the last ACKs raise
	}
}

func TestHeldCountsConnectionsOfProcess(t *testing.T) {
	g := newGroup(t, 1)
	ln, err := net.FileListener(g.File(0))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var clients, servers []net.Conn
	for range 3 {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		s, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		clients, servers = append(clients, c), append(servers, s)
	}
	n, err := Held(os.Getpid(), []int{g.Port()})
	if err != nil {
		t.Fatal(err)
	}
	if n != 3 {
		t.Errorf("Held with 3 accepted connections open: %d, want 3", n)
	}
	for _, s := range servers {
		s.Close()
	}
	if n, err = Held(os.Getpid(), []int{g.Port()}); err != nil || n != 0 {
		t.Errorf("Held once they are closed: %d, %v; want 0", n, err)
	}
	for _, c := range clients {
		c.Close()
	}
}

func TestProgram(t *testing.T) {
	if p := Program(nil); len(p) != 1 || p[0].K != 0 {
		t.Errorf("Program(nil) = %v, want ret #0", p)
	}
	if p := Program([]int{4}); len(p) != 1 || p[0].K != 4 {
		t.Errorf("Program([4]) = %v, want ret #4", p)
	}
	if p := Program([]int{1, 2, 3}); len(p) != 2+2*2+1 || p[1].K != 3 || p[len(p)-1].K != 3 {
		t.Errorf("Program([1 2 3]) = %v", p)
	}
}

func TestNewRefusesSocketsItCannotSteer(t *testing.T) {
	for _, tc := range []struct {
		name  string
		mptcp bool
		reuse bool
	}{
		{"no SO_REUSEPORT", false, false},
		{"MPTCP", true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
				if tc.reuse {
					c.Control(func(fd uintptr) { unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1) })
				}
				return nil
			}}
			lc.SetMultipathTCP(tc.mptcp)
			ln, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			f, err := ln.(*net.TCPListener).File()
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if tc.mptcp {
				if p, _ := unix.GetsockoptInt(int(f.Fd()), unix.SOL_SOCKET, unix.SO_PROTOCOL); p == unix.IPPROTO_TCP {
					t.Skip("no MPTCP in this kernel")
				}
			}
			if _, err := New([]*os.File{f}); !errors.Is(err, ErrUnsupported) {
				t.Errorf("New: %v, want ErrUnsupported", err)
			}
		})
	}
}
