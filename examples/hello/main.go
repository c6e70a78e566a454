// Command hello is the example HTTP server of handoff: a service that
// upgrades itself on SIGHUP without losing a request.
//
//	hello --listen 127.0.0.1:8080 --pidfile run/hello.pid
//	hello --listen unix:///run/hello/http.sock --socket-mode 0660 --socket-group www-data --listen 127.0.0.1:8080
//	kill -HUP $(cat run/hello.pid)   # or: handoff reload --pidfile run/hello.pid
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"time"

	"github.com/gohandoff/handoff/servicecli"
	"github.com/gohandoff/handoff/upgrader"
)

// version is stamped at build time with -ldflags "-X main.version=...".
var version = ""

func main() { servicecli.Main("hello", run) }

func buildVersion() string { return servicecli.Version(version) }

func run(args []string) error {
	fs := flag.NewFlagSet("hello", flag.ContinueOnError)
	f := servicecli.Register(fs, "127.0.0.1:8080", "run/hello.pid")
	metricsAddr := fs.String("metrics", "", "serve Prometheus metrics at http://`ADDR`/metrics (off if empty)")
	tlsCert := fs.String("tls-cert", "", "serve HTTPS and HTTP/2 with the PEM certificate chain in this `file` (with --tls-key)")
	tlsKey := fs.String("tls-key", "", "PEM private key `file` of --tls-cert")
	noHandOver := fs.Bool("no-handover", false, "drain keep-alive connections here at an upgrade instead of handing them to the new generation")
	if err := f.Parse(args); err != nil {
		return err
	}
	if (*tlsCert == "") != (*tlsKey == "") {
		return servicecli.Usage(errors.New("flags -tls-cert and -tls-key go together"))
	}
	if *metricsAddr != "" {
		if serveMetrics == nil {
			return servicecli.Usage(errors.New("flag -metrics: this build of hello has no metrics (built with -tags nometrics)"))
		}
		if err := servicecli.CheckAddr(*metricsAddr); err != nil {
			return servicecli.Usage(fmt.Errorf("invalid value %q for flag -metrics: %w", *metricsAddr, err))
		}
	}
	slog.SetDefault(f.Log)
	if f.ShowVersion {
		fmt.Println(buildVersion())
		return nil
	}

	var tlsConfig *tls.Config
	if *tlsCert != "" {
		cert, err := tls.LoadX509KeyPair(*tlsCert, *tlsKey)
		if err != nil {
			return servicecli.Usage(fmt.Errorf("flags -tls-cert/-tls-key: %w", err))
		}
		tlsConfig = &tls.Config{Certificates: []tls.Certificate{cert}}
	}
	upg, err := upgrader.New(f.Options(buildVersion()))
	if err != nil {
		return err
	}
	defer upg.Stop()
	slog.SetDefault(upg.Logger()) // every line with pid and generation
	if _, err := f.ListenAll(upg); err != nil {
		return err
	}
	if *metricsAddr != "" {
		if err := serveMetrics(upg, *metricsAddr); err != nil {
			return err
		}
	}
	srv := &upgrader.HTTPServer{Server: &http.Server{
		Handler:           newMux(upg),
		TLSConfig:         tlsConfig,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(upg.Logger().Handler(), slog.LevelWarn),
	}, NoHandOver: *noHandOver}
	return upg.Serve(context.Background(), srv.Worker)
}

func newMux(upg *upgrader.Upgrader) *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("/{$}", func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		io.WriteString(w, "Hello, world!\n")
	})
	mux.HandleFunc("GET /version", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, buildVersion()+"\n")
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-upg.Ready():
			fmt.Fprintf(w, "ok pid=%d generation=%d version=%s\n", os.Getpid(), upg.Generation(), buildVersion())
		default:
			http.Error(w, "starting", http.StatusServiceUnavailable)
		}
	})
	mux.HandleFunc("GET /sleep", func(w http.ResponseWriter, r *http.Request) {
		d, err := time.ParseDuration(r.URL.Query().Get("d"))
		if err != nil || d < 0 {
			http.Error(w, "bad duration d", http.StatusBadRequest)
			return
		}
		slog.Info("sleep request in flight", "d", d)
		select {
		case <-time.After(d):
		case <-r.Context().Done():
			return
		}
		fmt.Fprintf(w, "slept %s in pid %d\n", d, os.Getpid())
	})
	return mux
}
