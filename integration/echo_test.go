//go:build integration

package integration

import (
	"bufio"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"
)

// startEchoLoad runs clients that each open a connection, echo one line
// and close it.
func startEchoLoad(addr string, n int) *clients {
	return startClients(n, func(client, round int) error {
		return echoOnce(addr, fmt.Sprintf("client %d line %d", client, round))
	})
}

func echoOnce(addr, line string) error {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	return echoLine(c, bufio.NewReader(c), line)
}

// echoLine sends line on c and checks that it comes back.
func echoLine(c net.Conn, r *bufio.Reader, line string) error {
	if _, err := fmt.Fprintln(c, line); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	got, err := r.ReadString('\n')
	if err != nil {
		return fmt.Errorf("read: %w", err)
	}
	if got != line+"\n" {
		return fmt.Errorf("echo %q, want %q", got, line)
	}
	return nil
}

// Row 12: a long-lived connection through an upgrade: the old generation
// keeps serving it until its drain timeout, then closes it, while new
// connections go to the new generation without a failure.
func TestFaultLongLivedConnection(t *testing.T) {
	forEachMode(t, func(t *testing.T, m workerMode) {
		echoV1 := buildBin(t, "examples/echo", "v1")
		echoV2 := buildBin(t, "examples/echo", "v2")
		s := newService(t, echoV1, "echo")
		s.start(append(m.args, "--drain-timeout", "2s")...)
		s.log.waitFor(t, 0, "msg=ready", "generation=1")
		gen1 := s.pid()

		// The long-lived client: a line echoed before the upgrade shows
		// that generation 1, the only one, holds the connection.
		c, err := net.Dial("tcp", s.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		r := bufio.NewReader(c)
		if err := echoLine(c, r, "before"); err != nil {
			t.Fatal(err)
		}
		l := startEchoLoad(s.addr, 20)
		l.advance(t, 200)
		install(t, echoV2, s.exe)
		s.reload()
		if err := echoLine(c, r, "after the upgrade"); err != nil {
			t.Errorf("long-lived connection after the upgrade: %v, want it still served by generation 1 (pid %d)", err, gen1)
		}
		l.advance(t, 200)
		s.log.waitFor(t, 0, "draining connections", "generation=1")

		// Generation 1 closes it at its drain timeout, and only then.
		c.SetReadDeadline(time.Now().Add(time.Until(deadline(t))))
		if b, err := r.ReadString('\n'); err == nil {
			t.Errorf("long-lived connection read %q, want it closed at the drain timeout", b)
		}
		s.log.waitFor(t, 0, "drain timeout: connections closed", "closed=1", "generation=1")
		s.log.waitFor(t, 0, "previous generation exited", "generation=2", fmt.Sprintf("parent_pid=%d", gen1))
		l.advance(t, 200)
		l.finish(t, "echo load")
		s.onlyProcess(s.pid())
		if strings.Contains(s.log.String(), "level=ERROR") {
			t.Errorf("errors logged:\n%s", s.log)
		}
	})
}
