// Command hello is the example HTTP server of handoff: a service that
// upgrades itself on SIGHUP without losing a request.
//
//	hello --listen 127.0.0.1:8080 --pidfile run/hello.pid
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
	"net"
	"net/http"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"time"

	"github.com/gohandoff/handoff/internal/logging"
	"github.com/gohandoff/handoff/upgrader"
)

// version is stamped at build time with -ldflags "-X main.version=...".
var version = ""

func main() {
	if err := run(os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "hello:", err)
		var ue usageError
		if errors.As(err, &ue) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

type usageError struct{ error }

func buildVersion() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}

func run(args []string) error {
	fs := flag.NewFlagSet("hello", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	listen := fs.String("listen", "127.0.0.1:8080", "`address` to serve HTTP on")
	pidfile := fs.String("pidfile", "run/hello.pid", "PID file `path`; the control socket is next to it")
	workers := fs.Int("workers", runtime.GOMAXPROCS(0), "worker goroutines")
	upgradeTimeout := fs.Duration("upgrade-timeout", upgrader.DefaultUpgradeTimeout, "how long a new generation may take to be ready")
	drainTimeout := fs.Duration("drain-timeout", upgrader.DefaultDrainTimeout, "how long the old generation may take to finish its requests")
	logFormat := fs.String("log-format", "text", "log `format`: text or json")
	logLevel := fs.String("log-level", "info", "log `level`: debug, info, warn or error")
	tlsCert := fs.String("tls-cert", "", "serve HTTPS and HTTP/2 with the PEM certificate chain in this `file` (with --tls-key)")
	tlsKey := fs.String("tls-key", "", "PEM private key `file` of --tls-cert")
	showVersion := fs.Bool("version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(os.Stdout)
			fmt.Println("Usage: hello [flags]")
			fs.PrintDefaults()
			return err
		}
		return usageError{err}
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Errorf("unexpected argument %q", fs.Arg(0))}
	}
	if err := checkListen(*listen); err != nil {
		return usageError{fmt.Errorf("invalid value %q for flag -listen: %w", *listen, err)}
	}
	switch {
	case (*tlsCert == "") != (*tlsKey == ""):
		return usageError{errors.New("flags -tls-cert and -tls-key go together")}
	case *workers < 1:
		return usageError{fmt.Errorf("invalid value %d for flag -workers: must be at least 1", *workers)}
	case *upgradeTimeout <= 0:
		return usageError{fmt.Errorf("invalid value %s for flag -upgrade-timeout: must be positive", *upgradeTimeout)}
	case *drainTimeout <= 0:
		return usageError{fmt.Errorf("invalid value %s for flag -drain-timeout: must be positive", *drainTimeout)}
	}
	log, err := logging.New(os.Stderr, *logFormat, *logLevel)
	if err != nil {
		return usageError{fmt.Errorf("flag -log-format/-log-level: %w", err)}
	}
	slog.SetDefault(log)
	if *showVersion {
		fmt.Println(buildVersion())
		return nil
	}

	var tlsConfig *tls.Config
	if *tlsCert != "" {
		cert, err := tls.LoadX509KeyPair(*tlsCert, *tlsKey)
		if err != nil {
			return usageError{fmt.Errorf("flags -tls-cert/-tls-key: %w", err)}
		}
		tlsConfig = &tls.Config{Certificates: []tls.Certificate{cert}}
	}

	upg, err := upgrader.New(upgrader.Options{
		PIDFile:        *pidfile,
		Workers:        *workers,
		UpgradeTimeout: *upgradeTimeout,
		DrainTimeout:   *drainTimeout,
		Version:        buildVersion(),
	})
	if err != nil {
		return err
	}
	defer upg.Stop()
	if _, err := upg.Listen("tcp", *listen); err != nil {
		return err
	}
	srv := &upgrader.HTTPServer{Server: &http.Server{
		Handler:           newMux(upg),
		TLSConfig:         tlsConfig,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(slog.Default().Handler(), slog.LevelWarn),
	}}
	return upg.Serve(context.Background(), srv.Worker)
}

// checkListen checks a host:port address before anything starts.
func checkListen(addr string) error {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return fmt.Errorf("port %q is not a number from 0 to 65535", port)
	}
	return nil
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
			fmt.Fprintf(w, "ok pid=%d generation=%d\n", os.Getpid(), upg.Generation())
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
		slog.Info("sleep request in flight", "pid", os.Getpid(), "d", d)
		select {
		case <-time.After(d):
		case <-r.Context().Done():
			return
		}
		fmt.Fprintf(w, "slept %s in pid %d\n", d, os.Getpid())
	})
	return mux
}
