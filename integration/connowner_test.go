//go:build integration

package integration

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// connOwners returns, for each of conns (accepted connections of s), the
// pid of the generation (its master) whose process holds the server side
// of it: the socket of /proc/net/tcp from the conn's remote address to its
// local one, and the process of s with that socket among its descriptors.
// In process mode a worker of the previous generation may still accept for
// a moment after a reload returns, so the serving pid is not enough.
// /proc/net/tcp is read once: under load it lists every TIME_WAIT socket.
func connOwners(t *testing.T, s *service, conns []net.Conn) []int {
	t.Helper()
	var masters []int
	for _, g := range s.statusJSON().Generations {
		masters = append(masters, g.PID)
	}
	holders := map[string]int{} // "socket:[inode]" -> pid
	for _, pid := range s.pids() {
		for _, l := range socketsOf(pid) {
			holders[l] = pid
		}
	}
	inodes := map[string]string{} // "local remote" -> inode
	for _, f := range procNetTCP(t) {
		if len(f) > 9 {
			inodes[f[1]+" "+f[2]] = f[9]
		}
	}
	owners := make([]int, len(conns))
	for i, c := range conns {
		// The server side: local is the conn's remote address.
		inode, ok := inodes[procTCPAddr(t, c.RemoteAddr())+" "+procTCPAddr(t, c.LocalAddr())]
		pid, held := holders[fmt.Sprintf("socket:[%s]", inode)]
		switch {
		case !ok || !held:
			t.Fatalf("no process of %s holds the server side of %s -> %s", s.exe, c.LocalAddr(), c.RemoteAddr())
		case slices.Contains(masters, pid):
			owners[i] = pid
		default:
			owners[i] = ppid(pid) // a worker process
		}
	}
	return owners
}

// socketsOf returns the sockets among process pid's descriptors, as their
// links read ("socket:[inode]").
func socketsOf(pid int) []string {
	dir := filepath.Join("/proc", strconv.Itoa(pid), "fd")
	ents, _ := os.ReadDir(dir)
	var out []string
	for _, e := range ents {
		if l, _ := os.Readlink(filepath.Join(dir, e.Name())); strings.HasPrefix(l, "socket:[") {
			out = append(out, l)
		}
	}
	return out
}

// procTCPAddr writes an IPv4 address as /proc/net/tcp does: the address's
// 4 bytes in host (little-endian) order, then the port, in hex.
func procTCPAddr(t *testing.T, a net.Addr) string {
	t.Helper()
	ta, ok := a.(*net.TCPAddr)
	if !ok || ta.IP.To4() == nil {
		t.Fatalf("%s: not a TCP/IPv4 address", a)
	}
	ip := ta.IP.To4()
	return fmt.Sprintf("%02X%02X%02X%02X:%04X", ip[3], ip[2], ip[1], ip[0], ta.Port)
}

// procNetTCP returns the fields of each socket's line of /proc/net/tcp:
// 1 the local address, 2 the remote one (procTCPAddr), 3 the state, 9 the
// inode.
func procNetTCP(t *testing.T) [][]string {
	t.Helper()
	b, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		t.Fatal(err)
	}
	var socks [][]string
	for _, line := range strings.Split(string(b), "\n")[1:] {
		if f := strings.Fields(line); len(f) > 0 {
			socks = append(socks, f)
		}
	}
	return socks
}
