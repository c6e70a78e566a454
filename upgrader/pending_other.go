//go:build !unix

package upgrader

import "net"

// pendingInput is not known here: an idle connection past its grace is
// closed.
func pendingInput(net.Conn) bool { return false }
