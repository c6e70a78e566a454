package upgrader

import (
	"net"
	"testing"
	"time"
)

// TestSameAddrUDPEdges: a socket systemd passed is adopted for a UDP
// address only on the same port, never for port 0 or an address that does
// not resolve.
func TestSameAddrUDPEdges(t *testing.T) {
	got := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 53}
	for _, tc := range []struct {
		want  string
		match bool
	}{
		{"127.0.0.1:53", true},
		{"127.0.0.1:54", false},
		{"127.0.0.1:0", false},
		{"127.0.0.1:no-such-port", false},
	} {
		if m := sameAddr("udp", tc.want, got); m != tc.match {
			t.Errorf("sameAddr(udp, %s, %s) = %v, want %v", tc.want, got, m, tc.match)
		}
	}
	if sameAddr("udp", "127.0.0.1:0", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}) {
		t.Error("port 0 matched a socket on port 0")
	}
}

// TestSdExtend: a stop's drain extends systemd's stop timeout by what the
// drain may still take plus the 5 s margin, never by less than the margin.
func TestSdExtend(t *testing.T) {
	for _, tc := range []struct {
		left time.Duration
		want string
	}{
		{10 * time.Second, "EXTEND_TIMEOUT_USEC=15000000"},
		{0, "EXTEND_TIMEOUT_USEC=5000000"},
		{-time.Second, "EXTEND_TIMEOUT_USEC=5000000"},
	} {
		if got := sdExtend(tc.left); got != tc.want {
			t.Errorf("sdExtend(%s) = %q, want %q", tc.left, got, tc.want)
		}
	}
}
