//go:build !windows

package upgrader

import (
	"net"
	"net/netip"
	"os"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// steerListenConfig is the ListenConfig of a service with kernel
// steering: TCP sockets with SO_REUSEPORT, so that the master can add
// sockets to their group, and plain TCP (Go makes listeners MPTCP by
// default, which refuses the program). SO_REUSEPORT would also let a
// second instance bind the same port unnoticed; so the address is first
// bound once without it, which fails if anything listens there.
func steerListenConfig() *net.ListenConfig {
	lc := &net.ListenConfig{Control: func(network, address string, c syscall.RawConn) error {
		if !strings.HasPrefix(network, "tcp") {
			return nil
		}
		if err := probeFree(network, address); err != nil {
			return err
		}
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
		}); err != nil {
			return err
		}
		return serr
	}}
	lc.SetMultipathTCP(false)
	return lc
}

// probeFree binds a socket to address without SO_REUSEPORT and closes
// it: that fails with EADDRINUSE if a socket, with SO_REUSEPORT or not,
// is bound there (a second instance on the port fails at once, as
// without steering). It never listens, so no connection comes to it.
func probeFree(network, address string) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil || ap.Port() == 0 {
		return nil
	}
	family, sa := unix.AF_INET, unix.Sockaddr(&unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().Unmap().As4()})
	if ap.Addr().Is6() && !ap.Addr().Is4In6() {
		family, sa = unix.AF_INET6, &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
	}
	syscall.ForkLock.RLock()
	fd, err := unix.Socket(family, unix.SOCK_STREAM, 0)
	if err == nil {
		unix.CloseOnExec(fd)
	}
	syscall.ForkLock.RUnlock()
	if err != nil {
		return nil // the real socket will say
	}
	defer unix.Close(fd)
	// As Go's listeners: connections of an earlier instance in TIME_WAIT
	// do not hold the port, a socket bound or listening there does.
	unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
	if err := unix.Bind(fd, sa); err != nil {
		return os.NewSyscallError("bind", err)
	}
	return nil
}
