package upgrader

import (
	"context"
	"net"
	"os"
)

// role is the part of an Upgrader that depends on what its process is in
// the service: the master (master), which owns the sockets, the PID file,
// the probation and the upgrades, or one of the worker processes a master
// started (workerRole, in process mode). It is chosen once, by New.
type role interface {
	// listen and listenPacket create a socket or take the inherited one.
	listen(network, addr string) (net.Listener, error)
	listenPacket(network, addr string) (net.PacketConn, error)
	// serve is Serve.
	serve(ctx context.Context, fn WorkerFunc) error
	// upgrade is Upgrade.
	upgrade(ctx context.Context) (UpgradeResult, error)
	// stop is Stop.
	stop()
	// servesAdmin reports whether ServeAdmin's handler is served here.
	servesAdmin() bool
	// standsBy reports whether a drained generation keeps its sockets
	// for a probation's stand-by.
	standsBy() bool
}

// as returns u's role: a worker process's, set by newWorker, or else the
// master's.
func (u *Upgrader) as() role {
	if u.role != nil {
		return u.role
	}
	return master{u}
}

// master is the role of the process that owns the service.
type master struct{ u *Upgrader }

func (m master) listen(network, addr string) (net.Listener, error) { return m.u.listen(network, addr) }

func (m master) listenPacket(network, addr string) (net.PacketConn, error) {
	u := m.u
	if err := u.claim(network, addr); err != nil {
		return nil, err
	}
	pc, err := u.activatedPacketConn(network, addr)
	if err == nil && pc == nil {
		pc, err = u.tf.ListenPacket(network, addr)
	}
	if err != nil {
		return nil, listenErr(network, addr, err)
	}
	return pc, nil
}

func (m master) serve(ctx context.Context, fn WorkerFunc) error { return m.u.serveMaster(ctx, fn) }

func (m master) upgrade(ctx context.Context) (UpgradeResult, error) {
	return m.u.upgrade(ctx, func(string, string) {})
}

func (m master) stop()             { m.u.stopMaster() }
func (m master) servesAdmin() bool { return true }
func (m master) standsBy() bool    { return m.u.opts.Probation > 0 }

// workerRole is the role of a worker process: its sockets are inherited
// from its master, which alone upgrades the service and serves the admin
// handler.
type workerRole struct {
	u *Upgrader
	w *workerSide
}

func (r workerRole) listen(network, addr string) (net.Listener, error) {
	ln, err := r.w.listen(network, addr)
	if err != nil {
		return nil, listenErr(network, addr, err)
	}
	return ln, nil
}

func (r workerRole) listenPacket(network, addr string) (net.PacketConn, error) {
	pc, err := r.w.listenPacket(network, addr)
	if err != nil {
		return nil, listenErr(network, addr, err)
	}
	return pc, nil
}

func (r workerRole) serve(ctx context.Context, fn WorkerFunc) error { return r.u.serveWorker(ctx, fn) }

func (r workerRole) upgrade(context.Context) (UpgradeResult, error) {
	return UpgradeResult{OldPID: os.Getpid()}, errWorkerUpgrade
}

func (r workerRole) stop()             { r.w.stop() }
func (r workerRole) servesAdmin() bool { return false }
func (r workerRole) standsBy() bool    { return false }
