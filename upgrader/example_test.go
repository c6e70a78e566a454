package upgrader_test

// tableflip allows one Upgrader per process: Example is the only example
// that runs one (and checks its output); the others compile only. Tests
// that need an Upgrader re-exec a binary (see the integration tests).

import (
	"context"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"

	"github.com/gohandoff/handoff/upgrader"
)

// An HTTP server that upgrades on SIGHUP (or handoff reload, with a PID
// file) without losing a request.
func Example() {
	upg, err := upgrader.New(upgrader.Options{
		// PIDFile: "run/hello.pid", // for kill -HUP $(cat run/hello.pid), handoff and systemd
	})
	if err != nil {
		log.Fatal(err)
	}
	defer upg.Stop()

	// A real service listens on a fixed address: the next generation finds
	// the socket by the address it was asked with.
	ln, err := upg.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "Hello, world!\n")
	})
	srv := &upgrader.HTTPServer{Server: &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}}

	// For this example only: once ready, ask once, then stop.
	go func() {
		<-upg.Ready()
		if resp, err := http.Get("http://" + ln.Addr().String() + "/"); err == nil {
			io.Copy(os.Stdout, resp.Body)
			resp.Body.Close()
			http.DefaultClient.CloseIdleConnections()
		}
		upg.Stop()
	}()

	// Serve returns after a stop, or once an upgrade has handed over and
	// this generation has drained.
	if err := upg.Serve(context.Background(), srv.Worker); err != nil {
		log.Fatal(err)
	}
	// Output: Hello, world!
}

// A TCP echo server: each worker accepts on the shared listener; when the
// generation drains, the listener is closed, the workers let the
// connections they accepted finish, and cut them at the drain timeout.
func Example_tcpServer() {
	upg, err := upgrader.New(upgrader.Options{PIDFile: "run/echo.pid"})
	if err != nil {
		log.Fatal(err)
	}
	defer upg.Stop()
	if _, err := upg.Listen("tcp", "127.0.0.1:7000"); err != nil {
		log.Fatal(err)
	}
	echo := func(ctx context.Context, w *upgrader.Worker) error {
		var conns sync.WaitGroup
		defer conns.Wait()
		w.Ready()
		for {
			conn, err := w.Listeners[0].Accept()
			if err != nil {
				select {
				case <-w.Draining():
					return nil // the drain closed the listener
				default:
					return err // the pool logs it and restarts the worker
				}
			}
			conns.Go(func() {
				defer conn.Close()
				stop := context.AfterFunc(ctx, func() { conn.Close() }) // cut at the drain timeout
				defer stop()
				io.Copy(conn, conn)
			})
		}
	}
	if err := upg.Serve(context.Background(), echo); err != nil {
		log.Fatal(err)
	}
}

// A UDP service: every generation reads from the same socket, so no
// datagram is lost while one hands over to the next.
func Example_udpService() {
	upg, err := upgrader.New(upgrader.Options{PIDFile: "run/udp.pid", Workers: 1})
	if err != nil {
		log.Fatal(err)
	}
	defer upg.Stop()
	if _, err := upg.ListenPacket("udp", "127.0.0.1:5300"); err != nil {
		log.Fatal(err)
	}
	answer := func(ctx context.Context, w *upgrader.Worker) error {
		pc := w.PacketConns[0]
		w.Ready()
		buf := make([]byte, 64<<10)
		for {
			n, addr, err := pc.ReadFrom(buf)
			if err != nil {
				select {
				case <-w.Draining():
					return nil
				default:
					return err
				}
			}
			pc.WriteTo(buf[:n], addr)
		}
	}
	if err := upg.Serve(context.Background(), answer); err != nil {
		log.Fatal(err)
	}
}

// Processes the service starts get an environment without the variables
// meant for the service itself: NOTIFY_SOCKET and socket activation's.
func ExampleChildEnviron() {
	os.Setenv("NOTIFY_SOCKET", "/run/systemd/notify")
	defer os.Unsetenv("NOTIFY_SOCKET")
	cmd := exec.Command("env")
	cmd.Env = upgrader.ChildEnviron()
	out, _ := cmd.Output()
	fmt.Println(strings.Contains(string(out), "NOTIFY_SOCKET"))
	// Output: false
}
