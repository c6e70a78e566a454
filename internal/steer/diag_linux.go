package steer

import (
	"encoding/binary"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Held counts the TCP connections with a local port among ports that
// process pid has open: sockets of the kernel's table (sock_diag) in any
// state but LISTEN and TIME_WAIT whose inode is one of the process's
// descriptors (/proc/PID/fd). A connection the process has closed is not
// its any more, even while the kernel finishes it.
func Held(pid int, ports []int) (int, error) {
	inodes, err := socketInodes(pid)
	if err != nil {
		return 0, err
	}
	if len(inodes) == 0 {
		return 0, nil
	}
	n := 0
	for _, family := range []uint8{unix.AF_INET, unix.AF_INET6} {
		err := dumpTCP(family, func(sport int, inode uint32) {
			if _, ok := inodes[inode]; ok && slices.Contains(ports, sport) {
				n++
			}
		})
		if err != nil {
			return 0, err
		}
	}
	return n, nil
}

// socketInodes lists the inodes of the sockets process pid has open.
func socketInodes(pid int) (map[uint32]struct{}, error) {
	dir := "/proc/" + strconv.Itoa(pid) + "/fd"
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("steer: descriptors of pid %d: %w", pid, err)
	}
	out := make(map[uint32]struct{})
	for _, e := range ents {
		link, err := os.Readlink(dir + "/" + e.Name())
		if err != nil {
			continue // closed meanwhile
		}
		s, ok := strings.CutPrefix(link, "socket:[")
		if !ok {
			continue
		}
		if ino, err := strconv.ParseUint(strings.TrimSuffix(s, "]"), 10, 32); err == nil {
			out[uint32(ino)] = struct{}{}
		}
	}
	return out, nil
}

// Sizes of struct inet_diag_req_v2 and struct inet_diag_msg
// (linux/inet_diag.h).
const (
	diagReqLen = 56
	diagMsgLen = 72
)

// dumpTCP calls fn with the local port and inode of every TCP socket of
// family in the kernel's table but listeners and TIME_WAIT ones.
func dumpTCP(family uint8, fn func(sport int, inode uint32)) error {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return fmt.Errorf("steer: sock_diag socket: %w", err)
	}
	defer unix.Close(fd)
	const states = 0xfff &^ (1<<unix.BPF_TCP_LISTEN | 1<<unix.BPF_TCP_TIME_WAIT)
	req := make([]byte, unix.NLMSG_HDRLEN+diagReqLen)
	ne := binary.NativeEndian
	ne.PutUint32(req[0:], uint32(len(req)))
	ne.PutUint16(req[4:], unix.SOCK_DIAG_BY_FAMILY)
	ne.PutUint16(req[6:], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	ne.PutUint32(req[8:], 1) // sequence
	r := req[unix.NLMSG_HDRLEN:]
	r[0], r[1] = family, unix.IPPROTO_TCP
	ne.PutUint32(r[4:], states)
	if err := unix.Sendto(fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("steer: sock_diag request: %w", err)
	}
	buf := make([]byte, 1<<16)
	for {
		k, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			return fmt.Errorf("steer: sock_diag read: %w", err)
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:k])
		if err != nil {
			return fmt.Errorf("steer: sock_diag parse: %w", err)
		}
		for _, m := range msgs {
			switch m.Header.Type {
			case unix.NLMSG_DONE:
				return nil
			case unix.NLMSG_ERROR:
				if len(m.Data) >= 4 {
					if e := int32(ne.Uint32(m.Data)); e != 0 {
						return fmt.Errorf("steer: sock_diag: %w", unix.Errno(-e))
					}
				}
				return nil
			}
			if len(m.Data) < diagMsgLen {
				continue
			}
			sport := int(binary.BigEndian.Uint16(m.Data[4:]))
			inode := ne.Uint32(m.Data[68:])
			fn(sport, inode)
		}
	}
}
