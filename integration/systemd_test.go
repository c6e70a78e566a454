//go:build integration

package integration

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// notifySocket stands in for systemd's NOTIFY_SOCKET: a unixgram socket
// in the test's temp dir that receives the sender's pid with every
// datagram (SO_PASSCRED), as systemd does.
type notifySocket struct {
	path string
	conn *net.UnixConn
}

// sdMsg is one notification: its sender and its KEY=VALUE lines.
type sdMsg struct {
	pid    int
	fields map[string]string
	raw    string
}

func (m sdMsg) String() string { return fmt.Sprintf("pid %d: %q", m.pid, m.raw) }

func listenNotify(t *testing.T) *notifySocket {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	raw, err := conn.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var serr error
	raw.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PASSCRED, 1)
	})
	if serr != nil {
		t.Fatal(serr)
	}
	return &notifySocket{path: path, conn: conn}
}

func parseSdMsg(b, oob []byte) sdMsg {
	m := sdMsg{fields: map[string]string{}, raw: string(b)}
	for line := range strings.SplitSeq(string(b), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			m.fields[k] = v
		}
	}
	if cmsgs, err := unix.ParseSocketControlMessage(oob); err == nil {
		for _, c := range cmsgs {
			if cred, err := unix.ParseUnixCredentials(&c); err == nil {
				m.pid = int(cred.Pid)
			}
		}
	}
	return m
}

// next waits for the next notification, bounded by the test's deadline.
func (n *notifySocket) next(t *testing.T) sdMsg {
	t.Helper()
	buf, oob := make([]byte, 4096), make([]byte, unix.CmsgSpace(unix.SizeofUcred))
	n.conn.SetReadDeadline(deadline(t))
	nb, noob, _, _, err := n.conn.ReadMsgUnix(buf, oob)
	if err != nil {
		t.Fatalf("no notification: %v", err)
	}
	return parseSdMsg(buf[:nb], oob[:noob])
}

// queued returns the notifications already received, without waiting.
func (n *notifySocket) queued(t *testing.T) []sdMsg {
	t.Helper()
	raw, err := n.conn.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var out []sdMsg
	for {
		buf, oob := make([]byte, 4096), make([]byte, unix.CmsgSpace(unix.SizeofUcred))
		var nb, noob int
		var rerr error
		raw.Read(func(fd uintptr) bool {
			nb, noob, _, _, rerr = unix.Recvmsg(int(fd), buf, oob, unix.MSG_DONTWAIT)
			return true
		})
		if errors.Is(rerr, unix.EAGAIN) {
			return out
		}
		if rerr != nil {
			t.Fatal(rerr)
		}
		out = append(out, parseSdMsg(buf[:nb], oob[:noob]))
	}
}

// expect checks that m comes from pid and has every key=value of want (a
// value "*" only asks for the key).
func expect(t *testing.T, step string, m sdMsg, pid int, want ...string) {
	t.Helper()
	if m.pid != pid {
		t.Errorf("%s: notification from pid %d, want %d: %s", step, m.pid, pid, m)
	}
	for _, kv := range want {
		k, v, _ := strings.Cut(kv, "=")
		got, ok := m.fields[k]
		if !ok || (v != "*" && got != v) {
			t.Errorf("%s: want %s in %s", step, kv, m)
		}
	}
}

func monotonicUsec(t *testing.T) uint64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		t.Fatal(err)
	}
	return uint64(ts.Nano() / 1000)
}

// withNotify points the service's NOTIFY_SOCKET at ns.
func withNotify(ns *notifySocket) func(*service, *exec.Cmd) {
	return func(_ *service, cmd *exec.Cmd) {
		cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+ns.path)
	}
}

// TestSystemdNotifyThroughUpgradeAndStop checks every sd_notify message,
// its sender and its order, through an upgrade by handoff reload (what
// ExecReload= runs with Type=notify) and a graceful stop.
func TestSystemdNotifyThroughUpgradeAndStop(t *testing.T) {
	ns := listenNotify(t)
	s := startHelloWith(t, helloV1, withNotify(ns))
	p1 := s.pid()
	expect(t, "first generation ready", ns.next(t), p1, "READY=1", "STATUS=serving: generation 1, pid "+strconv.Itoa(p1)+", version v1")

	install(t, helloV2, s.exe)
	before := monotonicUsec(t)
	if code, out, errOut := s.handoff("reload"); code != 0 {
		t.Fatalf("handoff reload: exit %d\n%s%s", code, out, errOut)
	}
	p2 := s.pid()
	m := ns.next(t)
	expect(t, "upgrade starts", m, p1, "RELOADING=1", "MONOTONIC_USEC=*", "STATUS=upgrading: starting generation 2")
	if usec, err := strconv.ParseUint(m.fields["MONOTONIC_USEC"], 10, 64); err != nil || usec < before || usec > monotonicUsec(t) {
		t.Errorf("MONOTONIC_USEC=%s is not CLOCK_MONOTONIC at the upgrade's start (after %d)", m.fields["MONOTONIC_USEC"], before)
	}
	expect(t, "old generation hands over", ns.next(t), p1, "MAINPID="+strconv.Itoa(p2))
	expect(t, "new generation ready", ns.next(t), p2, "READY=1", "STATUS=serving: generation 2, pid "+strconv.Itoa(p2)+", version v2")

	// The old generation says nothing more while it drains and exits.
	s.log.waitFor(t, 0, "previous generation exited", "generation=2")
	if q := ns.queued(t); len(q) != 0 {
		t.Errorf("notifications after the new generation's READY=1: %v", q)
	}

	if code, out, errOut := s.handoff("stop"); code != 0 {
		t.Fatalf("handoff stop: exit %d\n%s%s", code, out, errOut)
	}
	m = ns.next(t)
	expect(t, "stop", m, p2, "STOPPING=1", "EXTEND_TIMEOUT_USEC=*", "STATUS=*")
	if usec, err := strconv.ParseInt(m.fields["EXTEND_TIMEOUT_USEC"], 10, 64); err != nil || usec < (30*time.Second).Microseconds() {
		t.Errorf("EXTEND_TIMEOUT_USEC=%s does not cover the 30s drain timeout", m.fields["EXTEND_TIMEOUT_USEC"])
	}
	// handoff stop returned once the process was gone: all it sent is queued.
	for _, m := range ns.queued(t) {
		if m.pid != p2 || len(m.fields) != 2 || m.fields["EXTEND_TIMEOUT_USEC"] == "" || m.fields["STATUS"] == "" {
			t.Errorf("after STOPPING=1, want only drain progress (STATUS, EXTEND_TIMEOUT_USEC) from %d, got %s", p2, m)
		}
	}
}

// TestSystemdNotifyReloadBySignal is the Type=notify-reload flow: systemd
// sends SIGHUP and waits for RELOADING=1, then READY=1. A failed upgrade
// ends the reload with READY=1 from the old generation, which goes on
// serving; the next one hands over.
func TestSystemdNotifyReloadBySignal(t *testing.T) {
	ns := listenNotify(t)
	s := startHelloWith(t, helloV1, withNotify(ns))
	p1 := s.pid()
	expect(t, "first generation ready", ns.next(t), p1, "READY=1")

	installBytes(t, []byte("#!/bin/sh\nexit 1\n"), s.exe)
	if err := syscall.Kill(p1, syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	expect(t, "failing upgrade starts", ns.next(t), p1, "RELOADING=1", "MONOTONIC_USEC=*")
	m := ns.next(t)
	expect(t, "failed upgrade ends the reload", m, p1, "READY=1")
	if !strings.Contains(m.fields["STATUS"], "upgrade failed, generation 1 goes on serving") || !strings.Contains(m.fields["STATUS"], "exit status 1") {
		t.Errorf("STATUS=%q does not say the upgrade failed and why", m.fields["STATUS"])
	}
	if _, ok := m.fields["MAINPID"]; ok {
		t.Errorf("failed upgrade sent MAINPID: %s", m)
	}

	install(t, helloV2, s.exe)
	if err := syscall.Kill(p1, syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	expect(t, "upgrade starts", ns.next(t), p1, "RELOADING=1", "MONOTONIC_USEC=*")
	m = ns.next(t)
	expect(t, "old generation hands over", m, p1, "MAINPID=*")
	p2, _ := strconv.Atoi(m.fields["MAINPID"])
	expect(t, "new generation ready", ns.next(t), p2, "READY=1", "STATUS=serving: generation 2, pid "+strconv.Itoa(p2)+", version v2")
	if got := s.pid(); got != p2 {
		t.Errorf("pid file holds %d, MAINPID said %d", got, p2)
	}
}

// withActivation passes the service a listening socket on its address as
// fd 3 with LISTEN_FDS=1 and LISTEN_FDNAMES=http, as systemd's socket
// activation does; LISTEN_PID is set to the service's pid by a shell that
// then execs it.
func withActivation(t *testing.T) func(*service, *exec.Cmd) {
	return func(s *service, cmd *exec.Cmd) {
		ln, err := net.Listen("tcp", s.addr)
		if err != nil {
			t.Fatal(err)
		}
		f, err := ln.(*net.TCPListener).File()
		ln.Close()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		cmd.ExtraFiles = []*os.File{f}
		cmd.Env = append(os.Environ(), "LISTEN_FDS=1", "LISTEN_FDNAMES=http")
		cmd.Args = append([]string{"/bin/sh", "-c", `LISTEN_PID=$$ exec "$0" "$@"`}, cmd.Args...)
		cmd.Path = "/bin/sh"
	}
}

// environOf reads the initial environment of pid.
func environOf(t *testing.T, pid int) []string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(string(bytes.TrimRight(b, "\x00")), "\x00")
}

// TestSocketActivation: the first generation adopts the socket systemd
// passed, by address or by name, instead of binding (which would fail:
// the port is taken by that very socket); the next generation inherits it
// without LISTEN_* in its environment, and an upgrade under load loses
// nothing.
func TestSocketActivation(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"by address", nil},
		{"by name", []string{"--listen", "systemd:http"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// --listen is repeatable: the name alone, not the address too.
			s := newService(t, helloV1, "hello")
			s.adjust = withActivation(t)
			if tc.args == nil {
				s.start()
			} else {
				s.startArgs(append(tc.args, "--pidfile", s.pidfile)...)
			}
			s.waitReady()
			s.log.waitFor(t, 0, "adopted socket from systemd", "addr="+s.addr, "fd_name=http", "generation=1")
			if code, body, err := s.get("/version"); err != nil || code != 200 || body != "v1" {
				t.Fatalf("GET /version = %d %q %v, want 200 v1", code, body, err)
			}
			var completed atomic.Int64
			done := make(chan struct{})
			results := startLoad(t, s, false, 3000, done, &completed)
			waitCount(t, &completed, 500)
			install(t, helloV2, s.exe)
			if code, out, errOut := s.handoff("reload"); code != 0 {
				t.Fatalf("handoff reload: exit %d\n%s%s", code, out, errOut)
			}
			waitCount(t, &completed, completed.Load()+500)
			close(done)
			checkLoad(t, <-results)
			if code, body, err := s.get("/version"); err != nil || code != 200 || body != "v2" {
				t.Errorf("GET /version = %d %q %v, want 200 v2", code, body, err)
			}
			for _, kv := range environOf(t, s.pid()) {
				if strings.HasPrefix(kv, "LISTEN_") {
					t.Errorf("generation 2 inherited %s", kv)
				}
			}
			if s.log.len() > 0 && strings.Contains(s.log.String(), "generation=2 fd_name") {
				t.Errorf("generation 2 adopted a socket again:\n%s", s.log)
			}
		})
	}
}

// TestSystemdRun runs hello under the real systemd, if there is one.
func TestSystemdRun(t *testing.T) {
	if _, err := os.Stat("/run/systemd/system"); err != nil {
		t.Skip("skipped: systemd is not the init system here (no /run/systemd/system), so systemd-run cannot start units; the notify protocol is covered by TestSystemdNotify* with a stand-in socket")
	}
	if _, err := exec.LookPath("systemd-run"); err != nil {
		t.Skip("skipped: systemd-run is not installed")
	}
	dir := t.TempDir()
	exe := filepath.Join(dir, "hello")
	install(t, helloV1, exe)
	addr := freeAddr(t)
	pidfile := filepath.Join(dir, "hello.pid")
	unit := fmt.Sprintf("handoff-test-%d", os.Getpid())
	run := func(name string, args ...string) string {
		t.Helper()
		out, err := exec.Command(name, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s %v: %v\n%s", name, args, err, out)
		}
		return strings.TrimSpace(string(out))
	}
	run("systemd-run", "--unit", unit, "--property=Type=notify", "--property=NotifyAccess=all",
		"--property=ExecReload="+handoffBin+" reload --no-follow --pidfile "+pidfile,
		"--working-directory="+dir, exe, "--listen", addr, "--pidfile", pidfile)
	t.Cleanup(func() { exec.Command("systemctl", "stop", unit).Run() })
	main1 := run("systemctl", "show", "--property=MainPID", "--value", unit)
	install(t, helloV2, exe)
	run("systemctl", "reload", unit)
	main2 := run("systemctl", "show", "--property=MainPID", "--value", unit)
	if main2 == main1 {
		t.Errorf("MainPID %s unchanged after systemctl reload", main1)
	}
	pids, err := os.ReadFile(pidfile)
	if err != nil || strings.TrimSpace(string(pids)) != main2 {
		t.Errorf("pid file %q, systemd MainPID %s", pids, main2)
	}
	installBytes(t, []byte("#!/bin/sh\nexit 1\n"), exe)
	if out, err := exec.Command("systemctl", "reload", unit).CombinedOutput(); err == nil {
		t.Errorf("systemctl reload succeeded with a binary that exits 1: %s", out)
	}
	if got := run("systemctl", "show", "--property=MainPID", "--value", unit); got != main2 {
		t.Errorf("MainPID %s after a failed reload, want %s", got, main2)
	}
	run("systemctl", "stop", unit)
}

// TestSystemdNotifyWithProbation: with --probation the old generation
// stays systemd's main process until the probation is over, then names
// the new one; if the new one dies first, it names the process restoring
// its build, which reports READY=1 itself.
func TestSystemdNotifyWithProbation(t *testing.T) {
	t.Run("probation over", func(t *testing.T) {
		ns := listenNotify(t)
		s := startHelloWith(t, helloV1, withNotify(ns), "--probation", "1s")
		p1 := s.pid()
		expect(t, "first generation ready", ns.next(t), p1, "READY=1")
		install(t, helloV2, s.exe)
		s.reload()
		p2 := s.pid()
		expect(t, "upgrade starts", ns.next(t), p1, "RELOADING=1")
		expect(t, "new generation ready, not yet the main process", ns.next(t), p2, "READY=1")
		expect(t, "probation over: the old generation hands over", ns.next(t), p1, "MAINPID="+strconv.Itoa(p2))
		s.log.waitFor(t, 0, "previous generation exited", "generation=2")
	})
	t.Run("drain outlasts the probation", func(t *testing.T) {
		// A request held on the old generation keeps it draining past a
		// 1ms probation: it must still hand MAINPID over, or systemd
		// would take its exit for the main process dying. The new
		// generation's READY=1 and the handover may come in either order.
		ns := listenNotify(t)
		s := startHelloWith(t, helloV1, withNotify(ns), "--probation", "1ms")
		p1 := s.pid()
		expect(t, "first generation ready", ns.next(t), p1, "READY=1")
		held := holdRequest(t, s)
		install(t, helloV2, s.exe)
		s.reload()
		p2 := s.pid()
		expect(t, "upgrade starts", ns.next(t), p1, "RELOADING=1")
		got := ns.senders(t, 2, "MAINPID", "READY")
		if got["MAINPID="+strconv.Itoa(p2)] != p1 || got["READY=1"] != p2 {
			t.Errorf("after the upgrade: %v, want MAINPID=%d from %d and READY=1 from %d", got, p2, p1, p2)
		}
		held.wantFinished()
		s.log.waitFor(t, 0, "probation over: the new generation stays", fmt.Sprintf("pid=%d", p1))
		s.log.waitFor(t, 0, "previous generation exited", "generation=2")
	})
	t.Run("new generation dies", func(t *testing.T) {
		v1, crashy, _ := testsvcBuilds(t)
		ns := listenNotify(t)
		s := newService(t, v1, "svc")
		s.adjust = withNotify(ns)
		s.start("--workers", "2", "--probation", "30s")
		s.waitReady()
		p1 := s.pid()
		expect(t, "first generation ready", ns.next(t), p1, "READY=1")
		install(t, crashy, s.exe)
		s.reload()
		p2 := s.pid()
		expect(t, "upgrade starts", ns.next(t), p1, "RELOADING=1")
		expect(t, "new generation ready, not yet the main process", ns.next(t), p2, "READY=1")
		s.log.waitFor(t, 0, "restored: this build serves again", fmt.Sprintf("pid=%d", p1))
		p3 := s.pid()
		// The restoring generation names the restored process, which
		// reports ready: in either order.
		got := ns.senders(t, 2, "MAINPID", "READY")
		if got["MAINPID="+strconv.Itoa(p3)] != p1 || got["READY=1"] != p3 {
			t.Errorf("after the restore: %v, want MAINPID=%d from %d and READY=1 from %d", got, p3, p1, p3)
		}
	})
}

// senders reads the next n notifications and returns, for each KEY=VALUE
// of keys they hold, its sender's pid: for messages that may come in
// either order.
func (n *notifySocket) senders(t *testing.T, count int, keys ...string) map[string]int {
	t.Helper()
	got := map[string]int{}
	for range count {
		m := n.next(t)
		for _, k := range keys {
			if v, ok := m.fields[k]; ok {
				got[k+"="+v] = m.pid
			}
		}
	}
	return got
}
