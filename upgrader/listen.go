package upgrader

import (
	"fmt"
	"net"
	"slices"
	"syscall"
)

// listen returns the socket for network and addr: passed by systemd,
// inherited from the previous generation, or created.
func (u *Upgrader) listen(network, addr string) (net.Listener, error) {
	if err := u.claim(network, addr); err != nil {
		return nil, err
	}
	ln, err := u.activatedListener(network, addr)
	if err == nil && ln == nil {
		if isUnixPath(network, addr) {
			ln, err = u.listenUnix(network, addr)
		} else {
			ln, err = u.tf.Listen(network, addr)
		}
	}
	if err != nil {
		return nil, listenErr(network, addr, err)
	}
	return ln, nil
}

// Listen returns a listener inherited from the previous generation, or
// creates it. Call it before Serve, for every listener the service needs.
func (u *Upgrader) Listen(network, addr string) (net.Listener, error) {
	ln, err := u.as().listen(network, addr)
	if err != nil {
		return nil, err
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	u.lns = append(u.lns, ln)
	if c, ok := ln.(syscall.Conn); ok {
		u.socks = append(u.socks, sockRef{name: fdName(network, addr), addr: addr, conn: c})
	}
	u.addrs = append(u.addrs, network+"://"+ln.Addr().String())
	return ln, nil
}

// ListenPacket returns a packet conn inherited from the previous
// generation, or creates it. Call it before Serve.
func (u *Upgrader) ListenPacket(network, addr string) (net.PacketConn, error) {
	pc, err := u.as().listenPacket(network, addr)
	if err != nil {
		return nil, err
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	u.pcs = append(u.pcs, pc)
	if c, ok := pc.(syscall.Conn); ok {
		u.socks = append(u.socks, sockRef{name: fdName(network, addr), addr: addr, conn: c})
	}
	u.addrs = append(u.addrs, network+"://"+pc.LocalAddr().String())
	return pc, nil
}

// claim refuses a second socket for the same network and address: the
// next generation finds each socket by the address it was asked with, so
// two sockets on "127.0.0.1:0" would be mixed up there.
func (u *Upgrader) claim(network, addr string) error {
	u.mu.Lock()
	defer u.mu.Unlock()
	key := network + " " + addr
	if slices.Contains(u.claimed, key) {
		return fmt.Errorf("upgrader: listen on %s %s: a socket was already asked for with this address; the next generation finds sockets by the address they were asked with, so give each a distinct one", network, addr)
	}
	u.claimed = append(u.claimed, key)
	return nil
}

// listenErr names the socket that could not be had.
func listenErr(network, addr string, err error) error {
	return fmt.Errorf("upgrader: listen on %s %s: %w", network, addr, err)
}
