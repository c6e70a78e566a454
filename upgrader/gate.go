package upgrader

import (
	"net"
	"sync"
)

// gatedListener is a listener of a new generation: Accept waits until the
// generation is ready, so a new generation that fails or is killed before
// it is ready has taken no connection from the queue it shares with the
// serving one. Connections arriving meanwhile wait in the kernel's accept
// queue, which the serving generation keeps emptying.
type gatedListener struct {
	net.Listener
	open   <-chan struct{}
	closed chan struct{}
	once   sync.Once
}

func gateListeners(lns []net.Listener, open <-chan struct{}) []net.Listener {
	out := make([]net.Listener, len(lns))
	for i, ln := range lns {
		out[i] = &gatedListener{Listener: ln, open: open, closed: make(chan struct{})}
	}
	return out
}

// Accept waits for the gate, then accepts.
func (l *gatedListener) Accept() (net.Conn, error) {
	select {
	case <-l.open:
	case <-l.closed:
		return nil, &net.OpError{Op: "accept", Net: l.Addr().Network(), Addr: l.Addr(), Err: net.ErrClosed}
	}
	return l.Listener.Accept()
}

// Close closes the listener and releases an Accept waiting for the gate.
func (l *gatedListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return l.Listener.Close()
}

// Unwrap returns the listener under the gate, for callers that need its
// concrete type.
func (l *gatedListener) Unwrap() net.Listener { return l.Listener }

// acceptGate is the gate of a new generation's listeners: closed once it
// is ready. The first generation has none: nobody else serves.
func (u *Upgrader) acceptGate() <-chan struct{} {
	if u.HasParent() {
		return u.gate
	}
	return nil
}
