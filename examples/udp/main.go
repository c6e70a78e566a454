// Command udp is the example datagram service of handoff: it answers
// every datagram with the datagram, a sequence number, its generation and
// its pid, and upgrades itself on SIGHUP without losing one.
//
//	udp --listen udp://127.0.0.1:9053 --pidfile run/udp.pid
//	echo -n 42 | socat - udp:127.0.0.1:9053     # 42 seq=1 gen=1 pid=1234
//
// Every generation reads from the same socket. When one drains, its
// readers stop (a read deadline in the past, see upgrader.WorkerFunc),
// answer what they had read, and return; the datagrams still queued stay
// in the socket for the new generation, which reads them. So no datagram
// the kernel accepted is lost.
//
// Given tcp:// or unix:// listeners too, it serves HTTP on them (GET /
// answers with the same sequence), as a service with mixed listeners.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync/atomic"
	"time"

	"github.com/gohandoff/handoff/servicecli"
	"github.com/gohandoff/handoff/upgrader"
)

// version is stamped at build time with -ldflags "-X main.version=...".
var version = ""

func main() { servicecli.Main("udp", run) }

func run(args []string) error {
	fs := flag.NewFlagSet("udp", flag.ContinueOnError)
	f := servicecli.Register(fs, "udp://127.0.0.1:9053", "run/udp.pid")
	f.AllowUDP = true
	rcvbuf := fs.Int("receive-buffer", 4<<20, "receive buffer `bytes` of the UDP sockets (SO_RCVBUF, as systemd's ReceiveBuffer=; the kernel caps it at net.core.rmem_max)")
	if err := f.Parse(args); err != nil {
		return err
	}
	slog.SetDefault(f.Log)
	if f.ShowVersion {
		fmt.Println(servicecli.Version(version))
		return nil
	}
	upg, err := upgrader.New(f.Options(servicecli.Version(version)))
	if err != nil {
		return err
	}
	defer upg.Stop()
	slog.SetDefault(upg.Logger())
	pcs, err := f.ListenAll(upg)
	if err != nil {
		return err
	}
	for _, pc := range pcs {
		// One socket for every generation: a larger buffer holds what
		// arrives while a busy machine starts the next one.
		if err := pc.(*net.UDPConn).SetReadBuffer(*rcvbuf); err != nil {
			return fmt.Errorf("receive buffer of %s: %w", pc.LocalAddr(), err)
		}
	}
	s := &service{gen: upg.Generation(), pid: os.Getpid()}
	s.http = &upgrader.HTTPServer{Server: &http.Server{
		Handler:           s.mux(upg),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(upg.Logger().Handler(), slog.LevelWarn),
	}}
	return upg.Serve(context.Background(), s.worker)
}

type service struct {
	gen, pid int
	seq      atomic.Int64 // datagrams and requests answered by this process
	http     *upgrader.HTTPServer
}

// worker answers datagrams on every packet conn and HTTP on every
// listener until the drain, and returns once all of it is done.
func (s *service) worker(ctx context.Context, w *upgrader.Worker) error {
	errc := make(chan error, len(w.PacketConns)+1)
	for _, pc := range w.PacketConns {
		go func() { errc <- s.answer(w, pc) }()
	}
	n := len(w.PacketConns)
	if len(w.Listeners) > 0 {
		n++
		go func() { errc <- s.http.Worker(ctx, w) }()
	} else {
		w.Ready()
	}
	var first error
	for range n {
		if err := <-errc; err != nil && first == nil {
			first = err
		}
	}
	return first
}

// answer reads datagrams from pc and answers each one until the drain,
// when the read deadline it sets makes ReadFrom fail: every datagram read
// until then has been answered, and pc still works for that.
func (s *service) answer(w *upgrader.Worker, pc net.PacketConn) error {
	buf := make([]byte, 64<<10)
	var out []byte
	answered := 0
	for {
		n, addr, err := pc.ReadFrom(buf)
		if err != nil {
			select {
			case <-w.Draining():
				w.Logger.Info("stopped reading datagrams", "addr", pc.LocalAddr().String(), "answered", answered)
				return nil
			default:
				return fmt.Errorf("read datagram on %s: %w", pc.LocalAddr(), err)
			}
		}
		out = fmt.Appendf(out[:0], "%s seq=%d gen=%d pid=%d", buf[:n], s.seq.Add(1), s.gen, s.pid)
		if _, err := pc.WriteTo(out, addr); err != nil {
			w.Logger.Warn("answer lost", "addr", addr.String(), "err", err)
			continue
		}
		answered++
	}
}

func (s *service) mux(upg *upgrader.Upgrader) *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("/{$}", func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		fmt.Fprintf(w, "seq=%d gen=%d pid=%d\n", s.seq.Add(1), s.gen, s.pid)
	})
	mux.HandleFunc("GET /version", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, servicecli.Version(version)+"\n")
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-upg.Ready():
			fmt.Fprintf(w, "ok pid=%d generation=%d\n", s.pid, s.gen)
		default:
			http.Error(w, "starting", http.StatusServiceUnavailable)
		}
	})
	return mux
}
