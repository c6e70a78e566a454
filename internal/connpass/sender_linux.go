package connpass

import (
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

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
			if !s.sendBatch(batch) {
				// A channel that failed once is not trusted with more:
				// what waits in its queue stays with the sender, to go
				// by another channel or drain there.
				s.closeChannel()
				s.fail(fmt.Errorf("%w: its channel failed", errNotTaken))
				return
			}
		}
	}
}

// sendBatch sends one message and tells each connection its outcome; it
// reports whether the channel is still good.
func (s *Sender) sendBatch(batch []*pending) bool {
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
		return false
	}
	s.c.SetReadDeadline(time.Now().Add(AckTimeout))
	var b [1]byte
	_, err := s.c.Read(b[:])
	for i, p := range batch {
		switch {
		case err == nil && i < int(b[0]):
			p.res <- nil
		case err == nil:
			p.res <- errNotTaken
		case errors.Is(err, os.ErrDeadlineExceeded):
			p.res <- fmt.Errorf("%w (%s)", ErrUnconfirmed, AckTimeout)
		default:
			p.res <- fmt.Errorf("%w: %w", errNotTaken, err)
		}
	}
	return err == nil && int(b[0]) == len(batch)
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
	s.closeChannel()
	return nil
}

// closeChannel ends the channel once: Sends from then on fail at once.
func (s *Sender) closeChannel() {
	s.once.Do(func() {
		s.mu.Lock()
		close(s.done)
		s.mu.Unlock()
		s.c.Close()
	})
}
