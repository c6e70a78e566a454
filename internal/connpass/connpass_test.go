//go:build linux

package connpass

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// tcpPair returns a connected client and server TCP connection on
// loopback.
func tcpPair(t *testing.T) (client, server *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	return c.(*net.TCPConn), s.(*net.TCPConn)
}

// acceptOne takes the receiver's next connection in the background.
func acceptOne(t *testing.T, r *Receiver) <-chan net.Conn {
	got := make(chan net.Conn, 1)
	go func() {
		c, err := r.Accept()
		if err != nil {
			t.Error(err)
		}
		got <- c
	}()
	return got
}

// TestPassKeepsTheConnection: a passed connection is the receiver's, with
// the bytes the client sent before the pass still to read, and it
// outlives the sender's copy.
func TestPassKeepsTheConnection(t *testing.T) {
	r := listen(t, func(err error) { t.Errorf("receiver: %v", err) })
	snd := dial(t, r)
	client, server := tcpPair(t)
	client.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(client, "before"); err != nil {
		t.Fatal(err)
	}
	got := acceptOne(t, r)
	// The sender had read "be" already: it travels with the socket.
	b2 := make([]byte, 2)
	if _, err := io.ReadFull(server, b2); err != nil {
		t.Fatal(err)
	}
	if err := snd.Send(server, b2); err != nil {
		t.Fatalf("send: %v", err)
	}
	server.Close() // the sender's copy; never shut down
	c := <-got
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(client, "|after")
	b := make([]byte, len("before|after"))
	if _, err := io.ReadFull(c, b); err != nil || string(b) != "before|after" {
		t.Fatalf("receiver read %q, %v; want before|after", b, err)
	}
	io.WriteString(c, "reply")
	b = make([]byte, 5)
	if _, err := io.ReadFull(client, b); err != nil || string(b) != "reply" {
		t.Fatalf("client read %q, %v; want the receiver's reply", b, err)
	}
}

// TestSendToClosedReceiverLeavesTheConnection: once the receiver is gone
// a Send fails without the descriptor leaving: the error does not say
// unconfirmed, and the sender's copy still works.
func TestSendToClosedReceiverLeavesTheConnection(t *testing.T) {
	r := listen(t, nil)
	snd := dial(t, r)
	r.Close()
	client, server := tcpPair(t)
	err := snd.Send(server, nil)
	if err == nil {
		t.Fatal("send to a closed receiver succeeded")
	}
	if errors.Is(err, ErrUnconfirmed) {
		// The peer may close after the write landed: then the
		// descriptor left with the receiver's socket, destroyed with it.
		t.Logf("unconfirmed: %v", err)
	}
	server.SetDeadline(time.Now().Add(10 * time.Second))
	client.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(client, "x")
	b := make([]byte, 1)
	if _, err := server.Read(b); err != nil {
		t.Fatalf("the sender's copy after a failed send: %v", err)
	}
}

// TestDialChecksThePID: a sender refuses a receiver that is not the
// process it expects.
func TestDialChecksThePID(t *testing.T) {
	r := listen(t, nil)
	if _, err := Dial(r.Address(), os.Getpid()+1); err == nil || !strings.Contains(err.Error(), "not the expected pid") {
		t.Fatalf("dial with the wrong pid: %v, want a refusal", err)
	}
}

// TestReceiverRefusesNonSocket: a descriptor that is not a connection ends
// the channel with an error, and Accept returns nothing for it.
func TestReceiverRefusesNonSocket(t *testing.T) {
	var mu sync.Mutex
	var errs []error
	r := listen(t, func(err error) { mu.Lock(); errs = append(errs, err); mu.Unlock() })
	c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: r.Address(), Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	defer pw.Close()
	if _, _, err := c.WriteMsgUnix([]byte{1, 0}, unix.UnixRights(int(pr.Fd())), nil); err != nil { // one connection, no byte held
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("the receiver acknowledged a pipe")
	}
	mu.Lock()
	defer mu.Unlock()
	if len(errs) != 1 || !strings.Contains(errs[0].Error(), "passed descriptor") {
		t.Fatalf("receiver errors %v, want one about the passed descriptor", errs)
	}
}

// BenchmarkPass is the cost of handing one connection over: the message
// with its descriptor, the receiver's Accept, the acknowledgement.
func BenchmarkPass(b *testing.B) {
	r := listen(b, nil)
	snd := dial(b, r)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	got := make(chan net.Conn, 1)
	go func() {
		for {
			c, err := r.Accept()
			if err != nil {
				return
			}
			got <- c
		}
	}()
	for b.Loop() {
		b.StopTimer()
		client, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		server, err := ln.Accept()
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		if err := snd.Send(server.(*net.TCPConn), nil); err != nil {
			b.Fatal(err)
		}
		c := <-got
		b.StopTimer()
		server.Close()
		c.Close()
		client.Close()
		b.StartTimer()
	}
}

// TestPassBatch: connections sent at once, more than one message holds,
// all reach the receiver, each with its own held bytes, and each Send
// returns once its batch is acknowledged.
func TestPassBatch(t *testing.T) {
	const n = MaxBatch*2 + 7
	r := listen(t, func(err error) { t.Errorf("receiver: %v", err) })
	snd := dial(t, r)
	got := make(chan string, n)
	go func() {
		for range n {
			c, err := r.Accept()
			if err != nil {
				return
			}
			c.SetDeadline(time.Now().Add(10 * time.Second))
			b := make([]byte, 4)
			io.ReadFull(c, b)
			got <- string(b)
			c.Close()
		}
	}()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		client, server := tcpPair(t)
		io.WriteString(client, fmt.Sprintf("%02d", i%100))
		wg.Add(1)
		go func() {
			defer wg.Done()
			held := []byte(fmt.Sprintf("%02d", i%100))
			errs <- snd.Send(server, held)
			server.Close()
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("send: %v", err)
		}
	}
	seen := map[string]int{}
	for range n {
		select {
		case s := <-got:
			seen[s]++
		case <-time.After(10 * time.Second):
			t.Fatalf("received %d of %d", len(seen), n)
		}
	}
	for k := range seen {
		if k[:2] != k[2:] {
			t.Errorf("a connection read %q: its held bytes and its own do not match", k)
		}
	}
}

// TestReceiverRefusesMalformed: a message whose count, held lengths or
// descriptors do not agree ends its channel with an error, and nothing
// reaches Accept.
func TestReceiverRefusesMalformed(t *testing.T) {
	for _, tc := range []struct {
		name string
		msg  []byte
		fds  int
		want string
	}{
		{name: "count above its descriptors", msg: []byte{2, 0, 0}, fds: 1, want: "without its descriptors"},
		{name: "count below its descriptors", msg: []byte{1, 0}, fds: 2, want: "without its descriptors"},
		{name: "no count", msg: []byte{}, fds: 1, want: "without its descriptors"},
		{name: "no descriptor", msg: []byte{0}, fds: 0, want: "without its descriptors"},
		{name: "count and no length", msg: []byte{1}, fds: 1, want: "malformed"},
		{name: "held beyond MaxHeld", msg: append([]byte{1, MaxHeld + 1}, make([]byte, MaxHeld+1)...), fds: 1, want: "malformed"},
		{name: "held cut short", msg: []byte{1, 5, 'a', 'b'}, fds: 1, want: "malformed"},
		{name: "second length missing", msg: []byte{2, 0}, fds: 2, want: "malformed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var mu sync.Mutex
			var errs []error
			r := listen(t, func(err error) { mu.Lock(); errs = append(errs, err); mu.Unlock() })
			accepted := make(chan net.Conn, 4)
			go func() {
				for {
					c, err := r.Accept()
					if err != nil {
						return
					}
					accepted <- c
				}
			}()
			c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: r.Address(), Net: "unixpacket"})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			var fds []int
			for range tc.fds {
				_, s := tcpPair(t)
				fds = append(fds, fdOf(t, s))
			}
			if len(tc.msg) == 0 {
				tc.msg = nil
			}
			if _, _, err := c.WriteMsgUnix(tc.msg, unix.UnixRights(fds...), nil); err != nil {
				t.Fatal(err)
			}
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := c.Read(make([]byte, 1)); err == nil {
				t.Fatal("the receiver acknowledged a malformed message")
			}
			mu.Lock()
			defer mu.Unlock()
			if len(errs) != 1 || !strings.Contains(errs[0].Error(), tc.want) {
				t.Fatalf("receiver errors %v, want one saying %q", errs, tc.want)
			}
			if len(accepted) != 0 {
				t.Error("a connection of a malformed message reached Accept")
			}
		})
	}
}

// fdOf is c's descriptor, for a raw message.
func fdOf(t *testing.T, c *net.TCPConn) int {
	t.Helper()
	raw, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	fd := -1
	raw.Control(func(f uintptr) { fd = int(f) })
	return fd
}

// TestSendHeldLimit: up to MaxHeld bytes read already go along; more are
// refused before anything leaves.
func TestSendHeldLimit(t *testing.T) {
	r := listen(t, nil)
	go func() {
		for {
			c, err := r.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	snd := dial(t, r)
	_, server := tcpPair(t)
	if err := snd.Send(server, make([]byte, MaxHeld)); err != nil {
		t.Fatalf("send with %d bytes held: %v", MaxHeld, err)
	}
	_, server2 := tcpPair(t)
	if err := snd.Send(server2, make([]byte, MaxHeld+1)); err == nil || !strings.Contains(err.Error(), "more than") {
		t.Fatalf("send with %d bytes held: %v, want a refusal", MaxHeld+1, err)
	}
}

// TestLookup finds listening receivers by the beginning of their address,
// not their accepted ends, nor others.
func TestLookup(t *testing.T) {
	prefix := fmt.Sprintf("@handoff-conns-test-%d", os.Getpid())
	r, err := Listen(prefix+"-g2-1", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	other, err := Listen(prefix+"x-g2-1", nil) // another service's
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	for range 2 { // accepted ends show the name too
		dial(t, r)
	}
	got, err := Lookup(prefix + "-g")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0] != prefix+"-g2-1" {
		t.Fatalf("Lookup = %q, want only %s-g2-1", got, prefix)
	}
}

// listen starts a receiver on a fresh address, closed with the test.
func listen(t testing.TB, onErr func(error)) *Receiver {
	t.Helper()
	r, err := Listen("", onErr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// dial opens a channel to r, closed with the test.
func dial(t testing.TB, r *Receiver) *Sender {
	t.Helper()
	snd, err := Dial(r.Address(), os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { snd.Close() })
	return snd
}

// TestSenderStopsAfterUnconfirmed: a receiver that takes a message and
// never acknowledges it leaves that connection in doubt (ErrUnconfirmed),
// and its channel is not trusted with more: a connection queued behind
// stays with the sender, none is sent after, and the channel closes.
func TestSenderStopsAfterUnconfirmed(t *testing.T) {
	defer func(d time.Duration) { AckTimeout = d }(AckTimeout)
	AckTimeout = time.Second
	addr := fmt.Sprintf("@handoff-conns-test-silent-%d", os.Getpid())
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: addr, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	snd, err := Dial(addr, os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	defer snd.Close()
	peer, err := ln.AcceptUnix()
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	peer.SetReadDeadline(time.Now().Add(10 * time.Second))

	_, first := tcpPair(t)
	firstErr := make(chan error, 1)
	go func() { firstErr <- snd.Send(first, nil) }()
	buf, oob := make([]byte, 64), make([]byte, 64)
	if n, _, _, _, err := peer.ReadMsgUnix(buf, oob); err != nil || n == 0 {
		t.Fatalf("the silent receiver read %d, %v; want the first message", n, err)
	}
	// The first message is out and waits for its acknowledgement: the
	// second connection waits in the queue.
	client2, second := tcpPair(t)
	secondErr := make(chan error, 1)
	go func() { secondErr <- snd.Send(second, nil) }()
	for end := time.Now().Add(AckTimeout / 2); ; time.Sleep(time.Millisecond) { // bounded: the first send's timeout
		snd.mu.Lock()
		queued := len(snd.queue)
		snd.mu.Unlock()
		if queued == 1 {
			break
		}
		if time.Now().After(end) {
			t.Fatal("the second connection never waited in the queue")
		}
	}

	if err := <-firstErr; !errors.Is(err, ErrUnconfirmed) {
		t.Fatalf("first send: %v, want ErrUnconfirmed", err)
	}
	if err := <-secondErr; err == nil || errors.Is(err, ErrUnconfirmed) {
		t.Fatalf("second send: %v, want an error that leaves the connection with the sender", err)
	}
	_, third := tcpPair(t)
	if err := snd.Send(third, nil); err == nil || errors.Is(err, ErrUnconfirmed) {
		t.Fatalf("send on the failed channel: %v, want it refused", err)
	}
	if n, oobn, _, _, err := peer.ReadMsgUnix(buf, oob); n != 0 || oobn != 0 || (err != nil && !errors.Is(err, io.EOF)) {
		t.Fatalf("after the timeout the receiver read %d bytes and %d of rights (%v); want the channel closed", n, oobn, err)
	}
	// The second connection is still the sender's to serve.
	second.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(client2, "x")
	if _, err := second.Read(make([]byte, 1)); err != nil {
		t.Fatalf("the sender's copy of the queued connection: %v", err)
	}
}

// TestSenderStopsAfterShortAck: a receiver that acknowledges fewer
// connections than a message carried (it closed meanwhile) is not sent
// another message on that channel, even if the channel stays open: the
// next Send fails at once and leaves its connection with the sender.
func TestSenderStopsAfterShortAck(t *testing.T) {
	addr := fmt.Sprintf("@handoff-conns-test-short-%d", os.Getpid())
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: addr, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	snd, err := Dial(addr, os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	defer snd.Close()
	peer, err := ln.AcceptUnix()
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	peer.SetDeadline(time.Now().Add(10 * time.Second))
	_, first := tcpPair(t)
	firstErr := make(chan error, 1)
	go func() { firstErr <- snd.Send(first, nil) }()
	buf, oob := make([]byte, 64), make([]byte, 64)
	if n, _, _, _, err := peer.ReadMsgUnix(buf, oob); err != nil || n == 0 {
		t.Fatalf("the receiver read %d, %v; want the first message", n, err)
	}
	if _, err := peer.Write([]byte{0}); err != nil { // none of them taken
		t.Fatal(err)
	}
	if err := <-firstErr; err == nil || errors.Is(err, ErrUnconfirmed) {
		t.Fatalf("first send, not taken: %v, want it left with the sender", err)
	}
	_, second := tcpPair(t)
	if err := snd.Send(second, nil); err == nil || errors.Is(err, ErrUnconfirmed) {
		t.Fatalf("send after a short acknowledgement: %v, want it refused", err)
	}
	if n, oobn, _, _, err := peer.ReadMsgUnix(buf, oob); n != 0 || oobn != 0 || (err != nil && !errors.Is(err, io.EOF)) {
		t.Fatalf("after a short acknowledgement the receiver read %d bytes and %d of rights (%v); want the channel closed", n, oobn, err)
	}
}

// TestReceiverAcceptsAgainAfterEMFILE: a receiver out of descriptors when
// a sender dials takes the channel once descriptors are free again, and a
// connection sent on it is acknowledged, not given up after AckTimeout.
func TestReceiverAcceptsAgainAfterEMFILE(t *testing.T) {
	defer func(d time.Duration) { AckTimeout = d }(AckTimeout)
	AckTimeout = 5 * time.Second
	refused := make(chan struct{}, 1)
	r := listen(t, func(err error) {
		if errors.Is(err, syscall.EMFILE) {
			select {
			case refused <- struct{}{}:
			default:
			}
		}
	})
	client, server := tcpPair(t)
	client.SetDeadline(time.Now().Add(10 * time.Second))

	// Fill the descriptor table but one, under a lowered soft limit, and
	// dial with that one: the receiver has none left to accept with.
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	open, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	low := lim
	low.Cur = uint64(len(open) + 16)
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &low); err != nil {
		t.Fatal(err)
	}
	var fill []int
	release := func() {
		for _, fd := range fill {
			unix.Close(fd)
		}
		fill = nil
		unix.Setrlimit(unix.RLIMIT_NOFILE, &lim)
	}
	defer release()
	for {
		fd, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			break
		}
		fill = append(fill, fd)
	}
	unix.Close(fill[len(fill)-1])
	fill = fill[:len(fill)-1]
	snd, err := Dial(r.Address(), os.Getpid())
	if err != nil {
		release()
		t.Fatalf("dial with one descriptor free: %v", err)
	}
	defer snd.Close()
	select {
	case <-refused:
	case <-time.After(10 * time.Second):
		release()
		t.Fatal("the receiver never told of an accept that failed with EMFILE")
	}
	release()

	got := acceptOne(t, r)
	if err := snd.Send(server, nil); err != nil {
		t.Fatalf("send once descriptors are free: %v, want it acknowledged", err)
	}
	c := <-got
	defer c.Close()
	io.WriteString(client, "x")
	b := make([]byte, 1)
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(c, b); err != nil || b[0] != 'x' {
		t.Fatalf("the receiver's connection read %q, %v", b, err)
	}
}
