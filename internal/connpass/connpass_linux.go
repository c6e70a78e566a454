// Package connpass hands established connections from one process to
// another: the sender passes each connection's file descriptor over a unix
// SOCK_SEQPACKET socket with SCM_RIGHTS, and the receiver, once it holds
// the descriptor, acknowledges it, after which the sender closes its copy.
//
// The receiver listens on an abstract unix address (no file to clean up)
// and takes connections only from a peer of its own uid; the sender checks
// that the receiver is the process it expects. One connection is in flight
// at a time on a channel: Send returns once the receiver has it.
//
// Either the receiver serves a connection or the sender keeps it, never
// both: the receiver acknowledges a connection only once its Accept has
// returned it, and a receiver that closes, or dies, before it
// acknowledged never serves it (its copy is closed with it), so that an
// end of the channel without an acknowledgement leaves the connection to
// the sender. Only an acknowledgement that does not come in time leaves
// it in doubt (ErrUnconfirmed).
//
// The package moves descriptors only. Whether a connection may move (no
// byte of the next request read ahead by the old owner) is the caller's
// concern; see upgrader/httppass.go.
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
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Supported reports whether connections can be passed on this system.
const Supported = true

// ackTimeout bounds the wait for a receiver's acknowledgement of one
// connection: a receiver alive but that long stalled leaves it in doubt.
const ackTimeout = 10 * time.Second

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

func (r *Receiver) acceptLoop() {
	defer r.wg.Done()
	for {
		c, err := r.ln.AcceptUnix()
		if err != nil {
			return
		}
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

// PeerCred returns the credentials of the process at the other end of c.
func PeerCred(c *net.UnixConn) (*unix.Ucred, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("peer credentials: %w", err)
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return nil, fmt.Errorf("peer credentials: %w", err)
	}
	if cerr != nil {
		return nil, fmt.Errorf("peer credentials: %w", cerr)
	}
	return cred, nil
}

// checkPeer refuses a peer of another uid, and, if pid is not 0, one that
// is not that process.
func checkPeer(c *net.UnixConn, pid int) error {
	cred, err := PeerCred(c)
	if err != nil {
		return fmt.Errorf("connpass: %w", err)
	}
	if cred.Uid != uint32(os.Getuid()) {
		return fmt.Errorf("connpass: refused a peer of uid %d (pid %d), not this process's uid %d", cred.Uid, cred.Pid, os.Getuid())
	}
	if pid != 0 && int(cred.Pid) != pid {
		return fmt.Errorf("connpass: the receiver is pid %d, not the expected pid %d", cred.Pid, pid)
	}
	return nil
}

// soAcceptCon is __SO_ACCEPTCON, the flag /proc/net/unix shows on a
// listening socket.
const soAcceptCon = 1 << 16

// Lookup returns the abstract addresses of the receivers listening on this
// host (in this network namespace) whose address begins with prefix.
func Lookup(prefix string) ([]string, error) {
	b, err := os.ReadFile("/proc/net/unix")
	if err != nil {
		return nil, fmt.Errorf("connpass: %w", err)
	}
	var addrs []string
	for _, line := range strings.Split(string(b), "\n") {
		// Num RefCount Protocol Flags Type St Inode Path
		f := strings.Fields(line)
		if len(f) < 8 || !strings.HasPrefix(f[7], prefix) {
			continue
		}
		flags, err1 := strconv.ParseUint(f[3], 16, 32)
		typ, err2 := strconv.ParseUint(f[4], 16, 16)
		if err1 != nil || err2 != nil || flags&soAcceptCon == 0 || typ != unix.SOCK_SEQPACKET {
			continue // not a listening receiver (an accepted end shows the name too)
		}
		addrs = append(addrs, f[7])
	}
	return addrs, nil
}

// Sender passes connections to one receiver. Connections sent at once go
// in one message: a batch costs one wake-up of each side, however many it
// carries.
type Sender struct {
	c     *net.UnixConn
	mu    sync.Mutex
	queue []*pending
	wake  chan struct{}
	done  chan struct{}
	once  sync.Once
}

// pending is one connection waiting in a Sender's queue: a copy of its
// descriptor, the bytes read of it already, and where its outcome goes.
type pending struct {
	fd   int
	held []byte
	res  chan error
}

// Dial connects to the receiver at addr, which must be process pid.
func Dial(addr string, pid int) (*Sender, error) {
	c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: addr, Net: "unixpacket"})
	if err != nil {
		return nil, fmt.Errorf("connpass: dial %s: %w", addr, err)
	}
	if err := checkPeer(c, pid); err != nil {
		c.Close()
		return nil, err
	}
	s := &Sender{c: c, wake: make(chan struct{}, 1), done: make(chan struct{})}
	go s.flush()
	return s, nil
}

// ErrUnconfirmed says a descriptor left but its acknowledgement did not
// come in time: the receiver may serve the connection, so the sender must
// not any more.
var ErrUnconfirmed = errors.New("connpass: passed, not acknowledged in time")

// errNotTaken: the receiver closed, or died, before it took the
// connection; the sender keeps it.
var errNotTaken = errors.New("connpass: the receiver did not take the connection")

// Send passes conn's descriptor, with the bytes of it the caller read
// already (at most MaxHeld), and waits for the receiver to serve it. On
// a nil error the receiver serves the connection and the caller closes its
// copy (never shuts it down). An error wrapping ErrUnconfirmed means the
// receiver may serve it: the caller closes its copy too. Any other error
// means the receiver does not serve it (nothing left, or the receiver
// closed or died first), and the caller keeps the connection. Sends that
// wait together go in one message.
func (s *Sender) Send(conn syscall.Conn, held []byte) error {
	if len(held) > MaxHeld {
		return fmt.Errorf("connpass: %d bytes read already, more than %d", len(held), MaxHeld)
	}
	raw, err := conn.SyscallConn()
	if err != nil {
		return fmt.Errorf("connpass: %w", err)
	}
	dup, derr := -1, error(nil)
	if err := raw.Control(func(fd uintptr) { dup, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return fmt.Errorf("connpass: %w", err)
	}
	if derr != nil {
		return fmt.Errorf("connpass: %w", derr)
	}
	p := &pending{fd: dup, held: held, res: make(chan error, 1)}
	s.mu.Lock()
	select {
	case <-s.done:
		s.mu.Unlock()
		unix.Close(dup)
		return fmt.Errorf("connpass: send: %w", net.ErrClosed)
	default:
	}
	s.queue = append(s.queue, p)
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
	return <-p.res
}

// flush sends the queue, a batch a message, until Close.
func (s *Sender) flush() {
	for {
		select {
		case <-s.wake:
		case <-s.done:
			s.fail(fmt.Errorf("connpass: send: %w", net.ErrClosed))
			return
		}
		for {
			s.mu.Lock()
			n := min(len(s.queue), MaxBatch)
			batch := slices.Clone(s.queue[:n])
			s.queue = s.queue[n:]
			s.mu.Unlock()
			if n == 0 {
				break
			}
			s.sendBatch(batch)
		}
	}
}

// sendBatch sends one message and tells each connection its outcome.
func (s *Sender) sendBatch(batch []*pending) {
	msg := []byte{byte(len(batch))}
	fds := make([]int, len(batch))
	for i, p := range batch {
		msg = append(append(msg, byte(len(p.held))), p.held...)
		fds[i] = p.fd
	}
	_, _, werr := s.c.WriteMsgUnix(msg, unix.UnixRights(fds...), nil)
	for _, fd := range fds {
		unix.Close(fd) // the message holds its own references
	}
	if werr != nil {
		for _, p := range batch {
			p.res <- fmt.Errorf("connpass: send: %w", werr)
		}
		return
	}
	s.c.SetReadDeadline(time.Now().Add(ackTimeout))
	var b [1]byte
	_, err := s.c.Read(b[:])
	for i, p := range batch {
		switch {
		case err == nil && i < int(b[0]):
			p.res <- nil
		case err == nil:
			p.res <- errNotTaken
		case errors.Is(err, os.ErrDeadlineExceeded):
			p.res <- fmt.Errorf("%w (%s)", ErrUnconfirmed, ackTimeout)
		default:
			p.res <- fmt.Errorf("%w: %w", errNotTaken, err)
		}
	}
}

// fail answers what is still queued with err.
func (s *Sender) fail(err error) {
	s.mu.Lock()
	q := s.queue
	s.queue = nil
	s.mu.Unlock()
	for _, p := range q {
		unix.Close(p.fd)
		p.res <- err
	}
}

// Close ends the channel: a Send waiting in the queue fails, and keeps its
// connection.
func (s *Sender) Close() error {
	s.once.Do(func() {
		s.mu.Lock()
		close(s.done)
		s.mu.Unlock()
		s.c.Close()
	})
	return nil
}
