//go:build unix

package upgrader

import (
	"net"
	"testing"
	"time"
)

func TestPendingInputPeeksWithoutConsuming(t *testing.T) {
	client, server := tcpPair(t)

	if pendingInput(server) {
		t.Fatal("pendingInput true before the client sent anything")
	}
	if _, err := client.Write([]byte("GET / HTTP/1.1\r\n")); err != nil {
		t.Fatal(err)
	}
	// Loopback delivers at once, but wait for it with a bound, not a sleep.
	deadline := time.Now().Add(10 * time.Second)
	for !pendingInput(server) {
		if time.Now().After(deadline) {
			t.Fatal("pendingInput false with a request waiting")
		}
		time.Sleep(time.Millisecond)
	}
	b := make([]byte, 64)
	n, err := server.Read(b)
	if err != nil || string(b[:n]) != "GET / HTTP/1.1\r\n" {
		t.Fatalf("read after peek: %q %v, want the whole request (peek must not consume)", b[:n], err)
	}
	if pendingInput(server) {
		t.Error("pendingInput true after everything was read")
	}
}

// tcpPair returns a connected client and server TCP connection on
// loopback, closed with the test.
func tcpPair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	sc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); sc.Close() })
	return c, sc
}
