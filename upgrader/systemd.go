package upgrader

import (
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cloudflare/tableflip"
	"github.com/coreos/go-systemd/v22/activation"
	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/gohandoff/handoff/internal/handover"
)

// SystemdPrefix in an address passed to Listen or ListenPacket names a
// socket passed by systemd's socket activation by its FileDescriptorName=:
// Listen("tcp", "systemd:http") takes the socket named "http". A plain
// address takes the passed socket bound to that address, if there is one.
const SystemdPrefix = "systemd:"

// sdAckName is the name under which a generation passes the next one the
// read end of a pipe. The old generation writes one byte on it once it has
// told systemd MAINPID=<new pid>, and the new generation sends READY=1 only
// after it has read that byte, so systemd sees the new main pid first.
const sdAckName = "handoff-sd-ack"

// sdAckTimeout bounds how long a new generation waits for that byte before
// it sends READY=1 anyway.
const sdAckTimeout = 5 * time.Second

// sdExtendMargin is added to the time a drain may still take when asking
// systemd to extend its stop timeout.
const sdExtendMargin = 5 * time.Second

// systemd speaks the sd_notify protocol (through go-systemd's SdNotify,
// which reads NOTIFY_SOCKET at every call) and holds the sockets passed by
// socket activation until Listen takes them.
//
// NOTIFY_SOCKET stays in the environment on purpose: tableflip passes the
// environment to the next generation, which must report to systemd too.
// Processes the application starts should get ChildEnviron instead.
type systemd struct {
	notify bool // NOTIFY_SOCKET was set at start
	// alien: run by systemd (INVOCATION_ID) but started by a previous
	// generation, so not systemd's child when it becomes the unit's main
	// process. systemd does not wait for such a main process to exit
	// after SIGTERM: the units stop it with ExecStop=handoff stop.
	alien bool
	ackR  *os.File // from the parent: its MAINPID= is sent
	ackW  *os.File // to the children, created at the first upgrade

	mu        sync.Mutex
	activated []*os.File // LISTEN_FDS of a first generation, not yet taken
	warned    bool       // a failed notification was logged
}

// newSystemd reads the sd_notify and socket activation environment. Only
// the first generation of a service adopts LISTEN_FDS (and removes the
// LISTEN_* variables, so no process started later sees them); a later
// generation inherits every socket from its parent through tableflip.
func newSystemd(tf handover.Handover, hasParent bool) (*systemd, error) {
	sd := &systemd{notify: os.Getenv("NOTIFY_SOCKET") != ""}
	sd.alien = hasParent && os.Getenv("INVOCATION_ID") != ""
	if !hasParent {
		sd.activated = activation.Files(true)
		return sd, nil
	}
	if sd.notify {
		f, err := tf.File(sdAckName)
		if err != nil {
			return nil, fmt.Errorf("upgrader: inherit %s pipe: %w", sdAckName, err)
		}
		sd.ackR = f
	}
	return sd, nil
}

// ChildEnviron returns the environment for processes the application
// starts: os.Environ without NOTIFY_SOCKET and the LISTEN_* variables of
// socket activation. NOTIFY_SOCKET stays in the service's own environment
// so that the next generation can report to systemd, but a child that
// speaks sd_notify must not report as if it were the service (with
// NotifyAccess=all systemd would believe it). Use it as exec.Cmd.Env.
func ChildEnviron() []string {
	env := os.Environ()
	return slices.DeleteFunc(env, func(kv string) bool {
		name, _, _ := strings.Cut(kv, "=")
		switch name {
		case "NOTIFY_SOCKET", "LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES":
			return true
		}
		return false
	})
}

// sdNotify sends one notification made of lines, if systemd listens. A
// failure is logged once: it never stops the service.
func (u *Upgrader) sdNotify(lines ...string) {
	if !u.sd.notify {
		return
	}
	msg := strings.Join(lines, "\n")
	sent, err := daemon.SdNotify(false, msg)
	if err != nil || !sent {
		u.sd.mu.Lock()
		defer u.sd.mu.Unlock()
		if !u.sd.warned {
			u.sd.warned = true
			u.log.Warn("systemd notification failed", "msg", lines[0], "err", err)
		}
		return
	}
	u.log.Debug("systemd notified", "msg", strings.ReplaceAll(msg, "\n", " "))
}

// sdReady tells systemd this generation serves. A generation started by an
// upgrade first waits until its parent has named it the main process.
func (u *Upgrader) sdReady() {
	if u.sd.alien {
		u.log.Info("under systemd, a generation started by an upgrade is not systemd's child: "+
			"systemctl stop drains it only if the unit stops it with ExecStop=handoff stop "+
			"(without, systemd sends SIGKILL right after SIGTERM; see examples/systemd/hello.service)", "parent_pid", u.ppid)
	}
	if !u.sd.notify {
		return
	}
	if r := u.sd.ackR; r != nil {
		u.sd.ackR = nil
		got := make(chan error, 1)
		go func() {
			defer r.Close()
			_, err := r.Read(make([]byte, 1))
			got <- err
		}()
		select {
		case err := <-got:
			if err != nil {
				u.log.Warn("previous generation did not confirm MAINPID to systemd", "parent_pid", u.ppid, "err", err)
			}
		case <-time.After(sdAckTimeout):
			u.log.Warn("previous generation did not confirm MAINPID to systemd in time", "parent_pid", u.ppid, "timeout", sdAckTimeout)
		}
	}
	u.sdNotify(daemon.SdNotifyReady, fmt.Sprintf("STATUS=serving: generation %d, pid %d, version %s", u.gen, os.Getpid(), u.opts.Version))
}

// sdReloading tells systemd an upgrade starts; it must be followed by
// sdUpgraded or sdUpgradeFailed.
func (u *Upgrader) sdReloading() {
	if !u.sd.notify {
		return
	}
	if u.sd.ackW == nil {
		r, w, err := os.Pipe()
		if err == nil {
			err = u.tf.AddFile(sdAckName, r)
			r.Close()
		}
		if err != nil {
			u.log.Warn("no MAINPID confirmation pipe for the new generation", "err", err)
		} else {
			u.sd.ackW = w
		}
	}
	lines := []string{daemon.SdNotifyReloading}
	if usec := strings.TrimSpace(daemon.SdNotifyMonotonicUsec()); usec != "" {
		lines = append(lines, usec) // MONOTONIC_USEC=, CLOCK_MONOTONIC in µs; empty where there is none
	}
	lines = append(lines, fmt.Sprintf("STATUS=upgrading: starting generation %d", u.gen+1))
	u.sdNotify(lines...)
}

// sdUpgraded hands the service over to the new main process, then lets
// the new generation send READY=1. With a probation, this generation stays
// the main process until the probation is over (standBy), so that systemd
// does not act on the unit if the new generation dies meanwhile.
func (u *Upgrader) sdUpgraded(newPID int) {
	if !u.sd.notify {
		return
	}
	if newPID > 0 && u.opts.Probation <= 0 {
		u.sdNotify("MAINPID=" + strconv.Itoa(newPID))
	}
	if w := u.sd.ackW; w != nil {
		if _, err := w.Write([]byte{1}); err != nil {
			u.log.Warn("could not confirm MAINPID to the new generation", "new_pid", newPID, "err", err)
		}
	}
}

// sdUpgradeFailed ends the reload: this generation goes on serving.
func (u *Upgrader) sdUpgradeFailed(err error) {
	u.sdNotify(daemon.SdNotifyReady, "STATUS=upgrade failed, generation "+strconv.Itoa(u.gen)+" goes on serving: "+firstLine(err.Error()))
}

// sdStopping tells systemd this generation stops for good and drains, and
// extends systemd's stop timeout to cover what the drain may still take.
func (u *Upgrader) sdStopping(left time.Duration) {
	u.sdNotify(daemon.SdNotifyStopping, fmt.Sprintf("STATUS=stopping: draining, timeout %s", u.opts.DrainTimeout), sdExtend(left))
}

// sdDraining reports the progress of a stop's drain and extends systemd's
// stop timeout again.
func (u *Upgrader) sdDraining(left time.Duration, what string) {
	u.sdNotify("STATUS=stopping: draining, "+what, sdExtend(left))
}

func sdExtend(left time.Duration) string {
	return "EXTEND_TIMEOUT_USEC=" + strconv.FormatInt((max(left, 0)+sdExtendMargin).Microseconds(), 10)
}

// activatedListener returns the listener for network and addr that systemd
// passed to the first generation, and that a later one inherited. It
// returns nil, nil when there is none: Listen then inherits or creates the
// socket the usual way.
func (u *Upgrader) activatedListener(network, addr string) (net.Listener, error) {
	key := activationKey(addr)
	if ln, err := u.tf.Listener(network, key); ln != nil || err != nil {
		return ln, err
	}
	ln, name := u.sd.take(network, addr, func(f *os.File) (io.Closer, net.Addr, bool) {
		l, err := net.FileListener(f)
		if err != nil {
			return nil, nil, false
		}
		return l, l.Addr(), true
	})
	if ln == nil {
		return nil, missingActivated(addr)
	}
	l := ln.(net.Listener)
	tl, ok := l.(tableflip.Listener)
	if !ok {
		l.Close()
		return nil, fmt.Errorf("socket %s passed by systemd is a %T, which cannot be passed on", name, l)
	}
	if err := u.tf.AddListener(network, key, tl); err != nil {
		l.Close()
		return nil, err
	}
	u.log.Info("adopted socket from systemd", "addr", l.Addr().String(), "fd_name", name)
	return l, nil
}

// activatedPacketConn is activatedListener for packet sockets.
func (u *Upgrader) activatedPacketConn(network, addr string) (net.PacketConn, error) {
	key := activationKey(addr)
	if pc, err := u.tf.PacketConn(network, key); pc != nil || err != nil {
		return pc, err
	}
	c, name := u.sd.take(network, addr, func(f *os.File) (io.Closer, net.Addr, bool) {
		pc, err := net.FilePacketConn(f)
		if err != nil {
			return nil, nil, false
		}
		return pc, pc.LocalAddr(), true
	})
	if c == nil {
		return nil, missingActivated(addr)
	}
	pc := c.(net.PacketConn)
	tpc, ok := pc.(tableflip.PacketConn)
	if !ok {
		pc.Close()
		return nil, fmt.Errorf("socket %s passed by systemd is a %T, which cannot be passed on", name, pc)
	}
	if err := u.tf.AddPacketConn(network, key, tpc); err != nil {
		pc.Close()
		return nil, err
	}
	u.log.Info("adopted socket from systemd", "addr", pc.LocalAddr().String(), "fd_name", name)
	return pc, nil
}

// activationKey is the name under which a socket from systemd passes from
// generation to generation. It differs from the address, so that tableflip
// never removes a unix socket file that systemd owns.
func activationKey(addr string) string {
	if strings.HasPrefix(addr, SystemdPrefix) {
		return addr
	}
	return SystemdPrefix + addr
}

func missingActivated(addr string) error {
	if name, ok := strings.CutPrefix(addr, SystemdPrefix); ok {
		return fmt.Errorf("no socket named %q was passed by systemd (LISTEN_FDS, LISTEN_FDNAMES)", name)
	}
	return nil
}

// take finds the passed socket for addr, by name (SystemdPrefix) or by
// address, opened by open; it returns nil if there is none.
func (sd *systemd) take(network, addr string, open func(*os.File) (io.Closer, net.Addr, bool)) (io.Closer, string) {
	sd.mu.Lock()
	defer sd.mu.Unlock()
	name, byName := strings.CutPrefix(addr, SystemdPrefix)
	for i, f := range sd.activated {
		if byName && f.Name() != name {
			continue
		}
		c, a, ok := open(f)
		if !ok {
			continue
		}
		if !byName && !sameAddr(network, addr, a) {
			c.Close()
			continue
		}
		sd.activated = slices.Delete(sd.activated, i, i+1)
		f.Close() // c holds a duplicate
		return c, f.Name()
	}
	return nil, ""
}

// closeUnusedActivated closes the passed sockets that no Listen took.
func (u *Upgrader) closeUnusedActivated() {
	u.sd.mu.Lock()
	defer u.sd.mu.Unlock()
	for _, f := range u.sd.activated {
		u.log.Warn("socket passed by systemd is not used; closing it", "fd_name", f.Name())
		f.Close()
	}
	u.sd.activated = nil
}

// sameAddr reports whether got is the address want names on network. An
// empty or unspecified host matches an unspecified one; port 0 matches none.
func sameAddr(network, want string, got net.Addr) bool {
	if !strings.HasPrefix(network, got.Network()) && !strings.HasPrefix(got.Network(), network) {
		return false
	}
	switch a := got.(type) {
	case *net.TCPAddr:
		w, err := net.ResolveTCPAddr(network, want)
		if err != nil || w.Port == 0 || w.Port != a.Port {
			return false
		}
		return sameIP(w.IP, a.IP)
	case *net.UDPAddr:
		w, err := net.ResolveUDPAddr(network, want)
		if err != nil || w.Port == 0 || w.Port != a.Port {
			return false
		}
		return sameIP(w.IP, a.IP)
	case *net.UnixAddr:
		return want != "" && a.Name == want
	}
	return false
}

func sameIP(want, got net.IP) bool {
	if len(want) == 0 || want.IsUnspecified() {
		return got.IsUnspecified()
	}
	return want.Equal(got)
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	return s
}
