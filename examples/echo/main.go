// Command echo is a TCP echo server on the upgrader: it sends back every
// byte it receives. It shows long-lived connections through an upgrade:
// the old generation keeps serving the connections it accepted until they
// end or its drain timeout passes, then closes those left.
//
//	echo --listen 127.0.0.1:7007 --pidfile run/echo.pid
//	handoff reload --pidfile run/echo.pid
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"sync"

	"github.com/gohandoff/handoff/servicecli"
	"github.com/gohandoff/handoff/upgrader"
)

// version is stamped at build time with -ldflags "-X main.version=...".
var version = ""

func main() { servicecli.Main("echo", run) }

func run(args []string) error {
	f := servicecli.Register(flag.NewFlagSet("echo", flag.ContinueOnError), "127.0.0.1:7007", "run/echo.pid")
	if err := f.Parse(args); err != nil {
		return err
	}
	if f.ShowVersion {
		fmt.Println(servicecli.Version(version))
		return nil
	}
	upg, err := upgrader.New(f.Options(servicecli.Version(version)))
	if err != nil {
		return err
	}
	defer upg.Stop()
	if _, err := f.ListenAll(upg); err != nil {
		return err
	}
	return upg.Serve(context.Background(), worker)
}

// worker echoes on every listener until the drain, then waits for its
// connections to end, and closes those still open at the drain timeout.
func worker(ctx context.Context, w *upgrader.Worker) error {
	var (
		mu    sync.Mutex
		conns = map[net.Conn]struct{}{}
		wg    sync.WaitGroup
	)
	closeAll := func() int {
		mu.Lock()
		defer mu.Unlock()
		for c := range conns {
			c.Close()
		}
		return len(conns)
	}
	acceptErr := make(chan error, len(w.Listeners))
	for _, ln := range w.Listeners {
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					acceptErr <- err
					return
				}
				mu.Lock()
				conns[c] = struct{}{}
				mu.Unlock()
				wg.Go(func() {
					io.Copy(c, c)
					c.Close()
					mu.Lock()
					delete(conns, c)
					mu.Unlock()
				})
			}
		}()
	}
	w.Ready()
	var err error
	for range w.Listeners {
		if e := <-acceptErr; err == nil {
			err = e
		}
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-w.Draining():
	default:
		closeAll()
		<-done
		return fmt.Errorf("accept: %w", err)
	}
	mu.Lock()
	w.Logger.Info("draining connections", "open", len(conns))
	mu.Unlock()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
	}
	n := closeAll()
	w.Logger.Warn("drain timeout: connections closed", "closed", n)
	<-done
	return nil
}
