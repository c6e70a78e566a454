//go:build !linux

package connpass

import (
	"errors"
	"net"
	"syscall"
)

// Supported reports whether connections can be passed on this system.
const Supported = false

var errUnsupported = errors.New("connpass: passing connections needs Linux")

// ErrUnconfirmed says a descriptor left but its acknowledgement did not
// come.
var ErrUnconfirmed = errors.New("connpass: passed, not acknowledged")

// Receiver is not available here.
type Receiver struct{}

// Listen fails here.
func Listen(string, func(error)) (*Receiver, error) { return nil, errUnsupported }

// Lookup fails here.
func Lookup(string) ([]string, error) { return nil, errUnsupported }

func (*Receiver) Address() string           { return "" }
func (*Receiver) Addr() net.Addr            { return nil }
func (*Receiver) Accept() (net.Conn, error) { return nil, errUnsupported }
func (*Receiver) Close() error              { return nil }

// Sender is not available here.
type Sender struct{}

// Dial fails here.
func Dial(string, int) (*Sender, error) { return nil, errUnsupported }

func (*Sender) Send(syscall.Conn, []byte) error { return errUnsupported }

// MaxHeld is how many bytes read already may pass with a connection.
const MaxHeld = 16

func (*Sender) Close() error { return nil }
