//go:build integration

package integration

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"
)

// getOnConn sends GET path on the keep-alive connection c and returns the
// answer's body and whether it closes the connection.
func getOnConn(t *testing.T, c net.Conn, br *bufio.Reader, path string) (string, bool) {
	t.Helper()
	if _, err := io.WriteString(c, "GET "+path+" HTTP/1.1\r\nHost: handoff\r\n\r\n"); err != nil {
		t.Fatalf("GET %s: write: %v", path, err)
	}
	return readAnswer(t, br, path)
}

func readAnswer(t *testing.T, br *bufio.Reader, path string) (string, bool) {
	t.Helper()
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("GET %s: read the answer: %v", path, err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET %s: %s %q %v, want 200", path, resp.Status, b, err)
	}
	return string(b), resp.Close
}

// healthzOf reads the pid and generation of a /healthz answer.
func healthzOf(body string) (pid, gen int) {
	if m := healthzPID.FindStringSubmatch(body); m != nil {
		fmt.Sscan(m[1], &pid)
	}
	if m := healthzGen.FindStringSubmatch(body); m != nil {
		fmt.Sscan(m[1], &gen)
	}
	return pid, gen
}

// TestInFlightConnMovesAfterItsAnswer: a keep-alive connection whose
// request is in flight on the old generation when the upgrade completes
// gets its answer from the old generation, without Connection: close,
// and the same connection then serves its next request from the new
// generation: the client never dials again.
func TestInFlightConnMovesAfterItsAnswer(t *testing.T) {
	forEachMode(t, func(t *testing.T, m workerMode) {
		s := startHello(t, helloV1, m.args...)
		c, err := net.Dial("tcp", s.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(deadline(t))
		br := bufio.NewReader(c)
		body, closes := getOnConn(t, c, br, "/healthz")
		pid1, gen1 := healthzOf(body)
		if gen1 != 1 || closes {
			t.Fatalf("before the upgrade: %q close=%v, want generation 1, kept open", body, closes)
		}
		from := s.log.len()
		if _, err := io.WriteString(c, "GET /sleep?d=3s HTTP/1.1\r\nHost: handoff\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		s.log.waitFor(t, from, "sleep request in flight")
		install(t, helloV2, s.exe)
		s.reload()
		// The new generation is ready and the old one drains: the answer
		// must not be here yet, or this request was not in flight.
		c.SetReadDeadline(time.Now().Add(time.Millisecond))
		if _, err := br.Peek(1); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("the sleep's answer came before the upgrade was done (%v): the request was not in flight across it", err)
		}
		c.SetReadDeadline(deadline(t))
		body, closes = readAnswer(t, br, "/sleep")
		if !strings.Contains(body, fmt.Sprintf("in pid %d", pid1)) || closes {
			t.Fatalf("request in flight: %q close=%v, want the answer of pid %d (the old generation), the connection kept open", body, closes, pid1)
		}
		body, closes = getOnConn(t, c, br, "/healthz")
		if pid, gen := healthzOf(body); gen != 2 || pid == pid1 || closes {
			t.Fatalf("next request on the same connection: %q close=%v, want the new generation (2), kept open", body, closes)
		}
		s.log.waitFor(t, from, "connections handed over to the new generation")
	})
}

// TestTLSKeepAliveDrains: HTTP/1.1 keep-alive connections over TLS are not
// handed over; through 3 upgrades they drain as before (Connection: close
// on the answers during the drain), the log says why, and no POST fails.
func TestTLSKeepAliveDrains(t *testing.T) {
	forEachMode(t, func(t *testing.T, m workerMode) {
		certFile, keyFile, pool := selfSigned(t, t.TempDir())
		s := startHello(t, helloV1, append(m.args, "--tls-cert", certFile, "--tls-key", keyFile)...)
		tr := &http.Transport{
			TLSClientConfig:     &tls.Config{RootCAs: pool},
			TLSNextProto:        map[string]func(string, *tls.Conn) http.RoundTripper{}, // HTTP/1.1 only
			MaxIdleConnsPerHost: 100,
		}
		defer tr.CloseIdleConnections()
		url := "https://" + s.addr + "/"
		l := startClients(50, func(int, int) error { return postOver(tr, url, 1) })
		l.advance(t, 500)
		for i := range 3 {
			upgradeAlternating(t, s, i)
			l.advance(t, 500)
		}
		s.log.waitFor(t, 0, "previous generation exited", "generation=4")
		l.finish(t, "HTTP/1.1 over TLS load")
		s.log.waitFor(t, 0, "keep-alive connections drain here: TLS connections are not handed over")
		if strings.Contains(s.log.String(), "connections cut") {
			t.Errorf("a drain cut connections:\n%s", s.log)
		}
		if strings.Contains(s.log.String(), "connections handed over to the new generation") {
			t.Errorf("TLS connections were handed over:\n%s", s.log)
		}
	})
}
