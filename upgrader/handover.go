package upgrader

import (
	"context"
	"net"
	"os"

	"github.com/cloudflare/tableflip"
)

// handover is what a generation uses of tableflip: the sockets and files
// passed from one generation to the next, and the parent/child handshake
// (Upgrade, Ready, WaitForParent). *tableflip.Upgrader is the one
// implementation a service runs; the unit tests give New a fake
// (handover_test.go), so that New, Listen, markReady and Stop run in the
// test process, where tableflip allows only one Upgrader for good.
type handover interface {
	Listen(network, addr string) (net.Listener, error)
	ListenPacket(network, addr string) (net.PacketConn, error)
	Listener(network, addr string) (net.Listener, error)
	PacketConn(network, addr string) (net.PacketConn, error)
	AddListener(network, addr string, ln tableflip.Listener) error
	AddPacketConn(network, addr string, pc tableflip.PacketConn) error
	File(name string) (*os.File, error)
	AddFile(name string, f *os.File) error

	HasParent() bool
	Ready() error
	Upgrade() error
	WaitForParent(ctx context.Context) error
	// Stop ends the handover: Exit is closed, and an upgrade is refused.
	// It closes and unlinks the unix sockets it holds.
	Stop()
	Exit() <-chan struct{}
}

// newHandover starts the handover of a service: tableflip's, which makes
// a generation started by an upgrade inherit its parent's sockets.
type newHandover func(opts tableflip.Options, hasParent bool) (handover, error)

func tableflipHandover(opts tableflip.Options, hasParent bool) (handover, error) {
	tf, err := tableflip.New(opts)
	if err != nil {
		return nil, err
	}
	if hasParent {
		// tableflip's pipes to the parent, fds 3 and 4, are inherited
		// without close-on-exec; fd 4 stays open until the parent has
		// exited. Keep them out of processes the application starts.
		closeOnExec(3)
		closeOnExec(4)
	}
	return tf, nil
}
