package steer

import (
	"fmt"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// Classic BPF ancillary load of a random number (linux/filter.h).
const (
	skfAdOff    = -0x1000
	skfAdRandom = 56
)

// maxTargets bounds a program: two instructions a target, within the
// classic BPF limit of 4096.
const maxTargets = 2000

// Group is the SO_REUSEPORT group of one TCP address, its sockets in the
// kernel's order. It is safe for concurrent use.
type Group struct {
	mu      sync.Mutex
	files   []*os.File
	family  int
	addr    unix.Sockaddr
	port    int
	backlog int
}

// Check reports whether this kernel attaches a classic BPF program to a
// reuseport group, on a throwaway socket on 127.0.0.1, so that no group in
// use is touched.
func Check() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("%w: socket: %v", ErrUnsupported, err)
	}
	defer unix.Close(fd)
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
		return fmt.Errorf("%w: SO_REUSEPORT: %v", ErrUnsupported, err)
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		return fmt.Errorf("%w: bind: %v", ErrUnsupported, err)
	}
	if err := unix.Listen(fd, 1); err != nil {
		return fmt.Errorf("%w: listen: %v", ErrUnsupported, err)
	}
	if err := attach(fd, []int{0}); err != nil {
		return fmt.Errorf("%w: %v", ErrUnsupported, err)
	}
	return nil
}

// New makes a group of files, listening TCP sockets on one address with
// SO_REUSEPORT, given in the order they joined the group (the first one
// created first). The group owns the files.
func New(files []*os.File) (*Group, error) {
	if len(files) == 0 {
		return nil, fmt.Errorf("steer: no socket")
	}
	g := &Group{}
	for i, f := range files {
		sa, family, backlog, err := inspect(f)
		if err != nil {
			return nil, fmt.Errorf("steer: socket %d (%s): %w", i, f.Name(), err)
		}
		port := sockPort(sa)
		if i == 0 {
			g.addr, g.family, g.port, g.backlog = sa, family, port, backlog
		} else if family != g.family || port != g.port {
			return nil, fmt.Errorf("steer: socket %d (%s) is not on the address of socket 0", i, f.Name())
		}
	}
	g.files = append(g.files, files...)
	return g, nil
}

// inspect checks that f is a listening TCP socket with SO_REUSEPORT and
// returns its address, family and accept-queue limit.
func inspect(f *os.File) (unix.Sockaddr, int, int, error) {
	var sa unix.Sockaddr
	var family, backlog int
	var err error
	cerr := control(f, func(fd int) {
		var typ, reuse int
		if typ, err = unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE); err != nil {
			return
		}
		if family, err = unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN); err != nil {
			return
		}
		if typ != unix.SOCK_STREAM || (family != unix.AF_INET && family != unix.AF_INET6) {
			err = fmt.Errorf("%w: not a TCP socket", ErrUnsupported)
			return
		}
		// Go listeners are MPTCP by default (Go 1.24), and an MPTCP
		// socket refuses SO_ATTACH_REUSEPORT_CBPF.
		var proto int
		if proto, err = unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PROTOCOL); err != nil {
			return
		}
		if proto != unix.IPPROTO_TCP {
			err = fmt.Errorf("%w: protocol %d is not plain TCP (MPTCP? use net.ListenConfig.SetMultipathTCP(false))", ErrUnsupported, proto)
			return
		}
		if reuse, err = unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT); err != nil {
			return
		}
		if reuse == 0 {
			err = fmt.Errorf("%w: SO_REUSEPORT is not set", ErrUnsupported)
			return
		}
		var info *unix.TCPInfo
		if info, err = unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO); err != nil {
			return
		}
		if info.State != unix.BPF_TCP_LISTEN {
			err = fmt.Errorf("%w: not listening", ErrUnsupported)
			return
		}
		backlog = int(info.Sacked) // sk_max_ack_backlog for a listener
		sa, err = unix.Getsockname(fd)
	})
	if cerr != nil {
		return nil, 0, 0, cerr
	}
	return sa, family, backlog, err
}

func sockPort(sa unix.Sockaddr) int {
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return a.Port
	case *unix.SockaddrInet6:
		return a.Port
	}
	return 0
}

func control(f *os.File, fn func(fd int)) error {
	raw, err := f.SyscallConn()
	if err != nil {
		return err
	}
	return raw.Control(func(fd uintptr) { fn(int(fd)) })
}

// Add creates a socket on the group's address, with its backlog, and
// returns its index and file: it joins the group at the end.
func (g *Group) Add() (int, *os.File, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	fd, err := unix.Socket(g.family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return 0, nil, fmt.Errorf("steer: socket: %w", err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
		unix.Close(fd)
		return 0, nil, fmt.Errorf("steer: SO_REUSEPORT: %w", err)
	}
	// As Go's listeners: the connections accepted on this socket inherit
	// SO_REUSEADDR, so once the service has stopped, those still closing
	// (FIN_WAIT, TIME_WAIT) do not keep the next start from binding.
	unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
	if g.family == unix.AF_INET6 {
		// As the base socket: Go's listeners on [::] take IPv4 too.
		if v6only, err := g.v6only(); err == nil {
			unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, v6only)
		}
	}
	if err := unix.Bind(fd, g.addr); err != nil {
		unix.Close(fd)
		return 0, nil, fmt.Errorf("steer: bind port %d: %w", g.port, err)
	}
	if err := unix.Listen(fd, max(g.backlog, 1)); err != nil {
		unix.Close(fd)
		return 0, nil, fmt.Errorf("steer: listen on port %d: %w", g.port, err)
	}
	i := len(g.files)
	f := os.NewFile(uintptr(fd), fmt.Sprintf("steer:%d:%d", g.port, i))
	g.files = append(g.files, f)
	return i, f, nil
}

func (g *Group) v6only() (int, error) {
	var v int
	var err error
	cerr := control(g.files[0], func(fd int) { v, err = unix.GetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY) })
	if cerr != nil {
		return 0, cerr
	}
	return v, err
}

// Len is the number of sockets in the group.
func (g *Group) Len() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.files)
}

// File returns socket i; the group keeps owning it.
func (g *Group) File(i int) *os.File {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.files[i]
}

// Port is the group's TCP port.
func (g *Group) Port() int { return g.port }

// Steer sends every new connection to one of the sockets targets names,
// at random, from now on. With no target the program sends them all to
// socket 0; it never returns an index out of range, which would let the
// kernel pick any socket of the group by hash.
func (g *Group) Steer(targets []int) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, t := range targets {
		if t < 0 || t >= len(g.files) {
			return fmt.Errorf("steer: target %d out of the group's %d sockets", t, len(g.files))
		}
	}
	var err error
	if cerr := control(g.files[0], func(fd int) { err = attach(fd, targets) }); cerr != nil {
		return cerr
	}
	if err != nil {
		return fmt.Errorf("steer: port %d: %w", g.port, err)
	}
	return nil
}

func attach(fd int, targets []int) error {
	prog := Program(targets)
	fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	if err := unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_REUSEPORT_CBPF, &fprog); err != nil {
		return fmt.Errorf("attach SO_ATTACH_REUSEPORT_CBPF: %w", err)
	}
	return nil
}

// Program is the classic BPF program that returns one of targets at
// random (socket 0 without targets):
//
//	ld  rand
//	mod #len(targets)
//	jeq #0, next, skip  ; ret #targets[0]
//	...
//	ret #targets[last]
func Program(targets []int) []unix.SockFilter {
	if len(targets) > maxTargets {
		targets = targets[:maxTargets]
	}
	switch len(targets) {
	case 0:
		return []unix.SockFilter{{Code: unix.BPF_RET | unix.BPF_K, K: 0}}
	case 1:
		return []unix.SockFilter{{Code: unix.BPF_RET | unix.BPF_K, K: uint32(targets[0])}}
	}
	prog := []unix.SockFilter{
		{Code: unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, K: skfAdOff&0xffffffff + skfAdRandom},
		{Code: unix.BPF_ALU | unix.BPF_MOD | unix.BPF_K, K: uint32(len(targets))},
	}
	last := len(targets) - 1
	for i, t := range targets[:last] {
		prog = append(prog,
			unix.SockFilter{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, Jt: 0, Jf: 1, K: uint32(i)},
			unix.SockFilter{Code: unix.BPF_RET | unix.BPF_K, K: uint32(t)})
	}
	return append(prog, unix.SockFilter{Code: unix.BPF_RET | unix.BPF_K, K: uint32(targets[last])})
}

// Queued is the length of socket i's accept queue: connections the kernel
// accepted that no process has taken yet.
func (g *Group) Queued(i int) (int, error) {
	f := g.File(i)
	var n int
	var err error
	if cerr := control(f, func(fd int) {
		var info *unix.TCPInfo
		if info, err = unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO); err == nil {
			n = int(info.Unacked) // sk_ack_backlog for a listener
		}
	}); cerr != nil {
		return 0, cerr
	}
	if err != nil {
		return 0, fmt.Errorf("steer: accept queue of socket %d: %w", i, err)
	}
	return n, nil
}

// Close closes the group's descriptors. The sockets leave the group once
// no other process holds them.
func (g *Group) Close() {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, f := range g.files {
		f.Close()
	}
	g.files = nil
}
