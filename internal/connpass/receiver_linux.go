package connpass

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"slices"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Receiver is a net.Listener whose Accept returns the connections another
// process passed to it.
type Receiver struct {
	ln     *net.UnixListener
	addr   string
	conns  chan net.Conn
	done   chan struct{}
	once   sync.Once
	wg     sync.WaitGroup
	mu     sync.Mutex
	peers  map[*net.UnixConn]*sync.Mutex // held from a message's receipt to its acknowledgement
	onErr  func(error)
	closed bool
}

// Listen starts a receiver on the abstract address addr ("@name"), or on
// a fresh one if addr is empty. onErr, if not nil, is told of channels
// refused or broken.
func Listen(addr string, onErr func(error)) (*Receiver, error) {
	if addr == "" {
		var b [8]byte
		if _, err := rand.Read(b[:]); err != nil {
			return nil, fmt.Errorf("connpass: %w", err)
		}
		addr = fmt.Sprintf("@handoff-conns-%d-%s", os.Getpid(), hex.EncodeToString(b[:]))
	}
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: addr, Net: "unixpacket"})
	if err != nil {
		return nil, fmt.Errorf("connpass: listen: %w", err)
	}
	if onErr == nil {
		onErr = func(error) {}
	}
	r := &Receiver{ln: ln, addr: addr, conns: make(chan net.Conn), done: make(chan struct{}),
		peers: make(map[*net.UnixConn]*sync.Mutex), onErr: onErr}
	r.wg.Add(1)
	go r.acceptLoop()
	return r, nil
}

// Address is where a Sender dials this receiver.
func (r *Receiver) Address() string { return r.addr }

// Addr is the receiver's own unix address.
func (r *Receiver) Addr() net.Addr { return r.ln.Addr() }

// Accept returns the next connection passed to the receiver.
func (r *Receiver) Accept() (net.Conn, error) {
	select {
	case c := <-r.conns:
		return c, nil
	case <-r.done:
		return nil, net.ErrClosed
	}
}

// Close stops receiving: senders still connected get an error on their
// next Send, and a connection passed but not yet accepted is closed here
// (its sender, with no acknowledgement, keeps it).
func (r *Receiver) Close() error {
	r.once.Do(func() {
		close(r.done)
		r.ln.Close()
		r.mu.Lock()
		r.closed = true
		peers := maps.Clone(r.peers)
		r.mu.Unlock()
		for c, mu := range peers {
			mu.Lock() // not between a connection's Accept and its acknowledgement
			c.Close()
			mu.Unlock()
		}
	})
	r.wg.Wait()
	return nil
}

// acceptLoop takes senders' channels until Close. Out of descriptors
// (EMFILE, ENFILE) or memory it waits and tries again, as net/http's
// accept loop does: a sender whose channel the kernel queued would
// otherwise wait for an acknowledgement that never comes, and give its
// connections up.
func (r *Receiver) acceptLoop() {
	defer r.wg.Done()
	var delay time.Duration
	for {
		c, err := r.ln.AcceptUnix()
		if err != nil {
			if !retryAccept(err) {
				return
			}
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			r.onErr(fmt.Errorf("connpass: accept: %w; retrying in %s", err, delay))
			select {
			case <-time.After(delay):
				continue
			case <-r.done:
				return
			}
		}
		delay = 0
		if err := checkPeer(c, 0); err != nil {
			r.onErr(err)
			c.Close()
			continue
		}
		r.mu.Lock()
		if r.closed {
			r.mu.Unlock()
			c.Close()
			return
		}
		mu := &sync.Mutex{}
		r.peers[c] = mu
		r.wg.Add(1)
		r.mu.Unlock()
		go r.serve(c, mu)
	}
}

// retryAccept reports whether an accept error passes: the process is out
// of descriptors or buffers for now, or the peer gave up.
func retryAccept(err error) bool {
	for _, e := range []syscall.Errno{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM, syscall.ECONNABORTED} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// serve takes the connections one sender passes, one message each.
func (r *Receiver) serve(c *net.UnixConn, mu *sync.Mutex) {
	defer r.wg.Done()
	defer func() {
		r.mu.Lock()
		delete(r.peers, c)
		r.mu.Unlock()
		c.Close()
	}()
	buf := make([]byte, 1+MaxBatch*(1+MaxHeld))
	oob := make([]byte, unix.CmsgSpace(4*MaxBatch))
	for {
		n, oobn, _, _, err := c.ReadMsgUnix(buf, oob)
		if err != nil || n == 0 {
			return // the sender is done, or this receiver closed
		}
		if !r.deliver(c, mu, buf[:n], oob[:oobn]) {
			return
		}
	}
}

// deliver takes one message's connections to Accept, in order, and
// acknowledges how many Accept took, under mu, so that Close cannot end
// the channel in between: a connection not taken is closed here and the
// sender, told, keeps it.
func (r *Receiver) deliver(c *net.UnixConn, mu *sync.Mutex, msg, oob []byte) bool {
	mu.Lock()
	defer mu.Unlock()
	conns, err := takeConns(msg, oob)
	if err != nil {
		r.onErr(err)
		return false
	}
	took := 0
take:
	for _, conn := range conns {
		select {
		case r.conns <- conn:
			took++
		case <-r.done:
			break take
		}
	}
	for _, conn := range conns[took:] {
		conn.Close() // not served here: the sender keeps it
	}
	if _, err := c.Write([]byte{byte(took)}); err != nil {
		// The sender went away while waiting: it gave these connections
		// up (ErrUnconfirmed), and this receiver serves them.
		r.onErr(fmt.Errorf("connpass: acknowledge: %w", err))
		return false
	}
	return took == len(conns)
}

// MaxBatch is how many connections one message carries at most (the
// kernel allows 253 descriptors).
const MaxBatch = 64

// MaxHeld is how many bytes the sender may have read from a connection
// and pass with it: a receiver reads them first.
const MaxHeld = 16

// heldConn is a passed connection whose first bytes the sender had read
// already: its reads return them first.
type heldConn struct {
	net.Conn
	mu   sync.Mutex
	held []byte
}

func (c *heldConn) Read(b []byte) (int, error) {
	c.mu.Lock()
	if len(c.held) > 0 {
		n := copy(b, c.held)
		c.held = c.held[n:]
		c.mu.Unlock()
		return n, nil
	}
	c.mu.Unlock()
	return c.Conn.Read(b)
}

// SyscallConn, CloseWrite and ReadFrom reach the socket below.
func (c *heldConn) SyscallConn() (syscall.RawConn, error) {
	return c.Conn.(syscall.Conn).SyscallConn()
}

func (c *heldConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

func (c *heldConn) ReadFrom(r io.Reader) (int64, error) {
	if rf, ok := c.Conn.(io.ReaderFrom); ok {
		return rf.ReadFrom(r)
	}
	return io.Copy(c.Conn, r)
}

// takeConns makes net.Conns of a message's descriptors, with the bytes
// the sender had read of each: the message is a count, then for each
// connection the length of its held bytes and the bytes.
func takeConns(msg, oob []byte) ([]net.Conn, error) {
	var fds []int
	if msgs, err := unix.ParseSocketControlMessage(oob); err == nil {
		for i := range msgs {
			if f, err := unix.ParseUnixRights(&msgs[i]); err == nil {
				fds = append(fds, f...)
			}
		}
	}
	closeFrom := func(i int) {
		for _, fd := range fds[i:] {
			unix.Close(fd)
		}
	}
	if len(fds) == 0 || len(msg) < 1 || int(msg[0]) != len(fds) {
		closeFrom(0)
		return nil, fmt.Errorf("connpass: a message without its descriptors (%d of them)", len(fds))
	}
	held := make([][]byte, len(fds))
	rest := msg[1:]
	for i := range fds {
		if len(rest) < 1 || int(rest[0]) > MaxHeld || len(rest) < 1+int(rest[0]) {
			closeFrom(0)
			return nil, errors.New("connpass: a malformed message")
		}
		held[i] = slices.Clone(rest[1 : 1+int(rest[0])])
		rest = rest[1+int(rest[0]):]
	}
	conns := make([]net.Conn, 0, len(fds))
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "passed-conn")
		conn, err := net.FileConn(f)
		f.Close()
		if err != nil {
			for _, c := range conns {
				c.Close()
			}
			closeFrom(i + 1)
			return nil, fmt.Errorf("connpass: passed descriptor: %w", err)
		}
		if len(held[i]) > 0 {
			conn = &heldConn{Conn: conn, held: held[i]}
		}
		conns = append(conns, conn)
	}
	return conns, nil
}
