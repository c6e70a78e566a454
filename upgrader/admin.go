package upgrader

import (
	"errors"
	"log/slog"
	"net"
	"net/http"
	"time"
)

// adminServer is an HTTP handler served on a listener of its own, beside
// the pool: metrics, pprof, an admin API.
type adminServer struct {
	ln net.Listener
	h  http.Handler
}

// ServeAdmin serves h, such as a Prometheus handler, on a listener of its
// own at addr, beside the pool of workers: the application's workers do
// not see it. Like the service's sockets, the listener is inherited by
// the next generation, which serves it as soon as it is ready, and the
// old generation drains it as HTTPServer does, so a scrape never fails
// during an upgrade. The generation is ready only once it serves h too.
//
// Call it before Serve. It returns the listener's address, which tells
// the port chosen for addr ":0". In a worker process (process mode) it
// does nothing and returns nil: the master serves the admin handler.
func (u *Upgrader) ServeAdmin(network, addr string, h http.Handler) (net.Addr, error) {
	if h == nil {
		return nil, errors.New("upgrader: ServeAdmin with a nil handler")
	}
	if !u.as().servesAdmin() {
		return nil, nil
	}
	ln, err := u.listen(network, addr)
	if err != nil {
		return nil, err
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.pool != nil {
		ln.Close()
		return nil, errors.New("upgrader: ServeAdmin called after Serve")
	}
	u.admin = append(u.admin, adminServer{ln: ln, h: h})
	u.addrs = append(u.addrs, "admin "+network+"://"+ln.Addr().String())
	return ln.Addr(), nil
}

// startAdmin starts a pool of one worker for each admin server.
func (u *Upgrader) startAdminLocked() []*pool {
	var pools []*pool
	for _, a := range u.admin {
		log := u.log.With("admin", a.ln.Addr().String())
		srv := &HTTPServer{Server: &http.Server{
			Handler:           a.h,
			ReadHeaderTimeout: 10 * time.Second,
			ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		}}
		p := newPool(1, srv.Worker, []net.Listener{a.ln}, nil, log, u.acceptGate())
		p.start()
		pools = append(pools, p)
	}
	return pools
}
