//go:build !linux

package upgrader

import "net"

// checkPeer relies on the socket's mode 0600 where peer credentials are
// not read.
func checkPeer(net.Conn) error { return nil }
