//go:build linux

package upgrader

import (
	"context"
	"net"
	"syscall"
	"testing"
	"time"
)

// TestProcPoolSteeringKeepsSlotSets: with kernel steering, each worker
// process gets a socket set of its own; a roll's replacement gets a new
// one, which its slot keeps; a worker that died is replaced on its slot's
// set (the connections queued on it are the replacement's); the drain
// stops each worker and, once none is left, closes the sockets.
func TestProcPoolSteeringKeepsSlotSets(t *testing.T) {
	st, _ := newTestSteering(t)
	pp, logs, _ := procTestPool(t, 1, "ready")
	pp.steer = st
	pp.drainTimeout = 200 * time.Millisecond
	pp.start()
	waitClosed(t, pp.ready(), "pool ready")
	first := pp.slots[0].cur
	if first.set != 0 || pp.slots[0].keep != 0 || len(first.cmd.ExtraFiles) != 1 {
		t.Fatalf("first worker: set %d, slot keeps %d, %d sockets passed; want set 0, kept, 1 socket", first.set, pp.slots[0].keep, len(first.cmd.ExtraFiles))
	}

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := pp.roll(ctx, func(string) {}); err != nil {
		t.Fatal(err)
	}
	waitClosed(t, first.exited, "old worker retired")
	logs.waitFor(t, 1, fakeEvent(first.pid, "sigterm"))
	second := pp.slots[0].cur
	if second.set != 1 || pp.slots[0].keep != 1 {
		t.Fatalf("roll's replacement: set %d, slot keeps %d; want a new set 1, kept", second.set, pp.slots[0].keep)
	}

	second.cmd.Process.Kill()
	logs.waitFor(t, 1, "worker died, replacing it", "signal: killed")
	logs.waitFor(t, 3, `msg="worker ready"`)
	pp.mu.Lock()
	third := pp.slots[0].cur
	pp.mu.Unlock()
	if third == nil || third == second || third.set != 1 {
		t.Fatalf("respawn after a death: %+v, want a new process on the slot's set 1", third)
	}
	if st.owner[0] != nil || st.owner[1] != third {
		t.Errorf("set owners %v, want set 0 free and set 1 the respawn's", st.owner)
	}

	dctx, dcancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer dcancel()
	if err := pp.drain(dctx); err != nil {
		t.Fatal(err)
	}
	if third.err != nil {
		t.Errorf("worker at the drain: %v, want exit 0 at SIGTERM", third.err)
	}
	if n := st.groups[0].Len(); n != 0 {
		t.Errorf("socket group holds %d sockets after the drain left no worker, want closed", n)
	}
}

// TestSteeringRefusedWhereItCannotHold: kernel steering is refused, with
// the reason logged and every worker sharing each socket, with a
// probation (a restore does not pass the socket groups on), with a UDP
// socket, with no socket, or with sockets that are not all listeners.
func TestSteeringRefusedWhereItCannotHold(t *testing.T) {
	ln, pc := tcpAndUDP(t)
	tcp := sockRef{name: "tcp-x", addr: "127.0.0.1:0", conn: ln.(syscall.Conn)}
	for _, tc := range []struct {
		name string
		u    *Upgrader
		want string
	}{
		{"probation", &Upgrader{opts: Options{Probation: time.Second}, socks: []sockRef{tcp}, lns: []net.Listener{ln}}, "not with --probation"},
		{"udp", &Upgrader{socks: []sockRef{tcp}, lns: []net.Listener{ln}, pcs: []net.PacketConn{pc}}, "only TCP listeners"},
		{"no socket", &Upgrader{}, "only TCP listeners"},
		{"not all listeners", &Upgrader{socks: []sockRef{tcp, tcp}, lns: []net.Listener{ln}}, "only TCP listeners"},
	} {
		logs := newLogLines()
		tc.u.log = logs.logger()
		if st := newSteering(tc.u); st != nil {
			st.close()
			t.Errorf("%s: steering on", tc.name)
		}
		if logs.count("kernel steering off", tc.want) != 1 {
			t.Errorf("%s: the log:\n%s", tc.name, logs)
		}
	}
}
