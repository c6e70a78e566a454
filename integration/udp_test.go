//go:build integration

package integration

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// UDP load: datagrams sent at a steady rate, every one numbered, each
// answer matched to its number.
const (
	udpDatagrams = 50000
	udpRate      = 5000 // datagrams a second
)

// socketDrops returns the datagrams the kernel dropped on the UDP
// sockets bound to 127.0.0.1:port (/proc/net/udp, last column).
func socketDrops(t *testing.T, port int) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/net/udp")
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("0100007F:%04X", port)
	var n int64
	for _, line := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) > 12 && f[1] == want {
			d, _ := strconv.ParseInt(f[len(f)-1], 10, 64)
			n += d
		}
	}
	return n
}

// udpCounters returns the kernel's UDP counters (/proc/net/snmp) by name,
// RcvbufErrors among them: datagrams dropped because a socket's receive
// buffer was full.
func udpCounters(t *testing.T) map[string]int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/net/snmp")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, line := range strings.Split(string(b), "\n") {
		rest, ok := strings.CutPrefix(line, "Udp: ")
		if !ok {
			continue
		}
		if names == nil {
			names = strings.Fields(rest)
			continue
		}
		out := map[string]int64{}
		for i, v := range strings.Fields(rest) {
			n, _ := strconv.ParseInt(v, 10, 64)
			out[names[i]] = n
		}
		return out
	}
	t.Fatal("no Udp: lines in /proc/net/snmp")
	return nil
}

// udpLoad is a client sending numbered datagrams to a service at a
// steady rate and counting the answers.
type udpLoad struct {
	t        *testing.T
	conn     *net.UDPConn
	total    int
	rate     int
	answered atomic.Int64
	dups     atomic.Int64
	bad      atomic.Int64
	sent     atomic.Int64
	mu       sync.Mutex
	seen     []bool
	gens     map[string]int // answers by the pid that gave them
	sendErr  error
	sendDone chan struct{}
	stop     chan struct{} // closed: send no more
	stopOnce sync.Once
	recvDone chan struct{}
	kernel0  map[string]int64
}

// startUDPLoad sends total datagrams "N" (N from 0) to addr at rate a
// second, from one socket, and reads the answers "N seq=S ... pid=P".
func startUDPLoad(t *testing.T, addr string, total, rate int) *udpLoad {
	t.Helper()
	raddr, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := net.DialUDP("udp", nil, raddr)
	if err != nil {
		t.Fatal(err)
	}
	// The client reads on a busy machine too: as root, a buffer above
	// net.core.rmem_max (SO_RCVBUFFORCE), so that what it loses is not its own.
	conn.SetReadBuffer(4 << 20)
	if raw, err := conn.SyscallConn(); err == nil && os.Geteuid() == 0 {
		raw.Control(func(fd uintptr) { unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 32<<20) })
	}
	l := &udpLoad{t: t, conn: conn, total: total, rate: rate, seen: make([]bool, total), gens: map[string]int{},
		sendDone: make(chan struct{}), stop: make(chan struct{}), recvDone: make(chan struct{}), kernel0: udpCounters(t)}
	t.Cleanup(func() { l.stopSending(); conn.Close(); <-l.recvDone; <-l.sendDone })
	go l.receive()
	go l.send(rate)
	return l
}

func (l *udpLoad) send(rate int) {
	defer close(l.sendDone)
	start := time.Now()
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	buf := make([]byte, 0, 16)
	for i := 0; i < l.total; {
		due := min(l.total, int(time.Since(start).Seconds()*float64(rate))+1)
		for ; i < due; i++ {
			if _, err := l.conn.Write(strconv.AppendInt(buf[:0], int64(i), 10)); err != nil {
				l.sendErr = fmt.Errorf("send datagram %d: %w", i, err)
				return
			}
			l.sent.Add(1)
		}
		select {
		case <-tick.C:
		case <-l.stop:
			return
		}
	}
}

// stopSending ends the load before total datagrams were sent.
func (l *udpLoad) stopSending() { l.stopOnce.Do(func() { close(l.stop) }) }

func (l *udpLoad) receive() {
	defer close(l.recvDone)
	buf := make([]byte, 2048)
	for {
		n, err := l.conn.Read(buf)
		if err != nil {
			return
		}
		num, rest, _ := bytes.Cut(buf[:n], []byte(" "))
		i, err := strconv.Atoi(string(num))
		_, pid, ok := bytes.Cut(rest, []byte("pid="))
		if err != nil || i < 0 || i >= l.total || !ok {
			l.bad.Add(1)
			continue
		}
		pid, _, _ = bytes.Cut(pid, []byte(" "))
		l.mu.Lock()
		if l.seen[i] {
			l.dups.Add(1)
		} else {
			l.seen[i] = true
			l.gens[string(pid)]++
			l.answered.Add(1)
		}
		l.mu.Unlock()
	}
}

// advanceTo waits until n datagrams have been sent: the load's clock.
func (l *udpLoad) advanceTo(n int64) {
	l.t.Helper()
	select {
	case <-l.sendDone:
		if l.sendErr != nil {
			l.t.Fatal(l.sendErr)
		}
	default:
	}
	waitCount(l.t, &l.sent, n)
}

// finish waits until every datagram is sent, then for the answers, at
// most 5 s after the last answer came, and fails the test for every
// datagram lost, saying whether the kernel dropped it (RcvbufErrors).
func (l *udpLoad) finish() {
	t := l.t
	t.Helper()
	<-l.sendDone
	if l.sendErr != nil {
		t.Fatal(l.sendErr)
	}
	end := deadline(t)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	last, lastAt := l.answered.Load(), time.Now()
	sent := l.sent.Load()
	for l.answered.Load() < sent && time.Now().Before(end) && time.Since(lastAt) < 5*time.Second {
		<-tick.C
		if n := l.answered.Load(); n != last {
			last, lastAt = n, time.Now()
		}
	}
	serverPort := l.conn.RemoteAddr().(*net.UDPAddr).Port
	clientPort := l.conn.LocalAddr().(*net.UDPAddr).Port
	serverDrops, clientDrops := socketDrops(t, serverPort), socketDrops(t, clientPort)
	k := udpCounters(t)
	rcvbuf, inErr := k["RcvbufErrors"]-l.kernel0["RcvbufErrors"], k["InErrors"]-l.kernel0["InErrors"]
	l.mu.Lock()
	var missing []int
	for i, ok := range l.seen[:sent] {
		if !ok && len(missing) < 10 {
			missing = append(missing, i)
		}
	}
	gens := fmt.Sprint(l.gens)
	l.mu.Unlock()
	lost := sent - l.answered.Load()
	t.Logf("udp: %d datagrams sent at %d/s, %d answered, %d lost, %d duplicate, %d malformed; kernel: RcvbufErrors +%d, InErrors +%d, drops on the service's socket %d, on the client's %d; answers by pid %s",
		sent, l.rate, l.answered.Load(), lost, l.dups.Load(), l.bad.Load(), rcvbuf, inErr, serverDrops, clientDrops, gens)
	if lost != 0 || l.dups.Load() != 0 || l.bad.Load() != 0 {
		t.Errorf("udp: %d of %d datagrams unanswered (first %v), %d duplicate, %d malformed; the kernel dropped %d for full receive buffers (RcvbufErrors): %d on the service's socket, %d on the client's",
			lost, sent, missing, l.dups.Load(), l.bad.Load(), rcvbuf, serverDrops, clientDrops)
	}
}

// udpUpgradesUnderLoad sends udpDatagrams to addr while upgrade(i) runs
// five times, spread over the load, and fails on any datagram lost.
func udpUpgradesUnderLoad(t *testing.T, addr string, upgrade func(i int)) {
	t.Helper()
	l := startUDPLoad(t, addr, udpDatagrams, udpLoadRate(t))
	for i := range 5 {
		l.advanceTo(int64(udpDatagrams * (i + 1) / 7))
		upgrade(i)
	}
	if l.sent.Load() == int64(l.total) {
		t.Errorf("the load was over before the fifth upgrade ended: slow the rate")
	}
	l.finish()
}

// udpLoadRate is udpRate, or HANDOFF_UDP_RATE.
func udpLoadRate(t *testing.T) int {
	if v := os.Getenv("HANDOFF_UDP_RATE"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 100 {
			t.Fatalf("HANDOFF_UDP_RATE=%q: want datagrams a second, at least 100", v)
		}
		return n
	}
	return udpRate
}

// udpBins are examples/udp stamped v1 and v2.
func udpBins(t *testing.T) (v1, v2 string) {
	return buildBin(t, "examples/udp", "v1"), buildBin(t, "examples/udp", "v2")
}

// freeUDPAddr returns a free 127.0.0.1 UDP port.
func freeUDPAddr(t *testing.T) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	return pc.LocalAddr().String()
}

// TestUDPUpgradesUnderLoad: 50,000 numbered datagrams at 5,000 a second
// through 5 upgrades, every one answered exactly once, in both worker
// modes of examples/udp and under handoff run with a Python app.
func TestUDPUpgradesUnderLoad(t *testing.T) {
	v1, v2 := udpBins(t)
	for _, m := range append(append([]workerMode(nil), workerModes...), workerMode{name: "handoff-run-python"}) {
		t.Run(m.name, func(t *testing.T) {
			addr := freeUDPAddr(t)
			var s *service
			if m.name == "handoff-run-python" {
				s = startPythonRun(t, addr)
			} else {
				s = newService(t, v1, "udp")
				s.startArgs(append([]string{"--listen", "udp://" + addr, "--pidfile", s.pidfile}, m.args...)...)
				s.waitReady()
			}
			udpUpgradesUnderLoad(t, addr, func(i int) {
				if m.name != "handoff-run-python" {
					install(t, []string{v2, v1}[i%2], s.exe)
				}
				s.reload()
			})
			s.log.waitFor(t, 0, "previous generation exited", "generation=6")
		})
	}
}

// startPythonRun starts handoff run with two workers of testdata/udpapp.py
// on the UDP address, and waits until it is ready.
func startPythonRun(t *testing.T, addr string) *service {
	t.Helper()
	// The system's interpreter, not a version manager's shim (a script
	// that takes seconds on a busy machine); -I -S: stdlib only.
	py, err := exec.LookPath("/usr/bin/python3")
	if err != nil {
		if py, err = exec.LookPath("python3"); err != nil {
			t.Skip("python3 is not installed (apt-get install python3; .ci/run installs it)")
		}
	}
	src, err := os.ReadFile("testdata/udpapp.py")
	if err != nil {
		t.Fatal(err)
	}
	s := newService(t, handoffBin, "handoff")
	app := filepath.Join(s.dir, "udpapp.py")
	installBytes(t, src, app)
	s.startArgs("run", "--listen", "udp://"+addr, "--workers", "2", "--pidfile", s.pidfile, "--", py, "-I", "-S", app)
	s.waitReady()
	return s
}

// TestMixedListenersUpgradesAndFailedUpgrade: examples/udp on TCP, a unix
// socket and UDP at once, in both worker modes, under HTTP load on TCP
// and on the unix socket and numbered datagrams on UDP, through two
// upgrades, a failed upgrade (a build that exits at start) and two more:
// no request, connection or datagram lost; the unix socket file stays the
// same one all along.
func TestMixedListenersUpgradesAndFailedUpgrade(t *testing.T) {
	v1, v2 := udpBins(t)
	forEachMode(t, func(t *testing.T, m workerMode) {
		udpAddr := freeUDPAddr(t)
		s := newService(t, v1, "udp")
		sock := filepath.Join(s.dir, "app.sock")
		s.startArgs(append([]string{"--listen", "tcp://" + s.addr, "--listen", "unix://" + sock, "--listen", "udp://" + udpAddr,
			"--pidfile", s.pidfile}, m.args...)...)
		s.waitReady()
		ino, _, _ := socketFileStat(t, sock)

		tcpLoad := runLoad(t, s, false)
		unixClients := startClients(20, func(_, _ int) error {
			_, _, err := unixGet(sock, "/")
			return err
		})
		// Datagrams until the last upgrade is over (at most 100 s of
		// them), at a lower rate: HTTP loads share the 2 cores.
		const rate = udpRate / 2
		udp := startUDPLoad(t, udpAddr, 100*rate, rate)
		bad := []byte("#!/bin/sh\necho 'bad build: config missing' >&2\nexit 1\n")
		for i := range 5 {
			udp.advanceTo(udp.sent.Load() + rate/2)
			switch i {
			case 2:
				installBytes(t, bad, s.exe)
				line, _ := s.reloadFails()
				wantContains(t, "failed upgrade", line, "exit status 1")
			default:
				install(t, []string{v2, v1}[i%2], s.exe)
				s.reload()
			}
			tcpLoad.advance(200)
			unixClients.advance(t, 100)
			if got, _, _ := socketFileStat(t, sock); got != ino {
				t.Errorf("step %d: the socket file was replaced (inode %d, was %d)", i+1, got, ino)
			}
		}
		udp.advanceTo(udp.sent.Load() + rate/2)
		udp.stopSending()
		udp.finish()
		tcpLoad.finish()
		unixClients.finish(t, "HTTP on the unix socket")
		s.log.waitFor(t, 0, "previous generation exited", "generation=5")
		if code, body, err := unixGet(sock, "/version"); err != nil || body != "v2" {
			t.Errorf("GET /version on the unix socket: %d %q %v, want v2", code, body, err)
		}
	})
}
