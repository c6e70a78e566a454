//go:build integration

package integration

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// sdHeld is a request held half-sent on the generation that serves when
// it is made.
type sdHeld struct {
	conn net.Conn
	br   *bufio.Reader
	gen  int
}

// holdRequest asks GET / on a new connection, so that the serving
// generation surely holds it, then sends half of a POST / on it.
func (a *sdApp) holdRequest(gen int) *sdHeld {
	t := a.t
	t.Helper()
	conn, err := net.Dial("tcp", a.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	h := &sdHeld{conn: conn, br: bufio.NewReader(conn), gen: gen}
	fmt.Fprintf(conn, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, err := http.ReadResponse(h.br, nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("held connection: GET / = %v %v", resp, err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	fmt.Fprintf(conn, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\n\r\nhalf")
	return h
}

// finish sends the rest of the held request and returns its answer's
// status code, or the error.
func (h *sdHeld) finish() string {
	h.conn.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.WriteString(h.conn, "done"); err != nil {
		return err.Error()
	}
	resp, err := http.ReadResponse(h.br, nil)
	if err != nil {
		return err.Error()
	}
	resp.Body.Close()
	return strconv.Itoa(resp.StatusCode)
}

// overlapStop: two systemctl reloads while generation 1 drains a held
// request, each answered while every older generation still runs in the
// unit's cgroup; after each, systemd's MainPID is the PID file's, the
// serving generation. Then systemctl stop with a request held on each of
// the three generations: every one is answered, the unit ends inactive
// with Result=success and its cgroup empty.
func (a *sdApp) overlapStop() {
	t := a.t
	t.Helper()
	base := len(a.procs())
	var held []*sdHeld
	for i, bin := range []string{helloV2, helloV1} {
		held = append(held, a.holdRequest(i+1))
		a.upgrade(bin)
		if n := len(a.procs()); n != base*(i+2) {
			t.Errorf("after reload %d: %d processes in the unit's cgroup, want %d: the serving generation and %d draining", i+1, n, base*(i+2), i+1)
		}
		if main, pid := a.sd.show(a.unit, "MainPID")["MainPID"], a.pidInFile(); main != strconv.Itoa(pid) {
			t.Errorf("after reload %d: systemd's MainPID %s, the PID file's %d", i+1, main, pid)
		}
	}
	a.wantGeneration(3)
	held = append(held, a.holdRequest(3))
	_, status := a.sd.systemctl("status", "--no-pager", a.unit)
	t.Logf("systemctl status during the overlap:\n%s", status)

	stopped := make(chan string, 1)
	go func() {
		code, out := a.sd.systemctl("stop", a.unit)
		stopped <- fmt.Sprintf("exit %d %s", code, strings.TrimSpace(out))
	}()
	a.sd.waitUnitNot(a.unit, "ActiveState", "active")
	for _, h := range held {
		if answer := h.finish(); answer != "200" {
			t.Errorf("request held on generation %d during systemctl stop: %s, want 200", h.gen, answer)
		}
	}
	out := <-stopped
	if got := a.sd.show(a.unit, "ActiveState", "Result"); got["ActiveState"] != "inactive" || got["Result"] != "success" {
		t.Errorf("after systemctl stop during the overlap: %v (%s), want inactive with Result=success", got, out)
	}
	if p := a.procs(); len(p) != 0 {
		t.Errorf("processes left in the unit's cgroup after the stop: %v", p)
	}
}
