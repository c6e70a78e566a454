// Command hello is the example HTTP server of handoff: a service that
// upgrades itself on SIGHUP without losing a request.
//
//	hello --listen 127.0.0.1:8080 --pidfile run/hello.pid
//	kill -HUP $(cat run/hello.pid)   # or: handoff reload --pidfile run/hello.pid
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"runtime"
	"runtime/debug"
	"time"

	"github.com/gohandoff/handoff/internal/logging"
	"github.com/gohandoff/handoff/upgrader"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
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
	listen := fs.String("listen", "127.0.0.1:8080", "`address` to serve HTTP on; systemd:NAME takes the socket systemd passed with that FileDescriptorName=")
	pidfile := fs.String("pidfile", "run/hello.pid", "PID file `path`; the control socket is next to it")
	workers := fs.Int("workers", runtime.GOMAXPROCS(0), "workers: goroutines, or processes with --worker-mode process")
	workerMode := fs.String("worker-mode", string(upgrader.GoroutineWorkers), "`mode` of the workers: goroutine or process")
	workersPIDFile := fs.String("workers-pidfile", "", "worker PID file `path` in process mode (default: the PID file's with .workers.pid)")
	ready := fs.String("ready", "notify", "how a worker process tells it is ready: notify or delay:DUR")
	upgradeTimeout := fs.Duration("upgrade-timeout", upgrader.DefaultUpgradeTimeout, "how long a new generation may take to be ready")
	drainTimeout := fs.Duration("drain-timeout", upgrader.DefaultDrainTimeout, "how long the old generation may take to finish its requests")
	logFormat := fs.String("log-format", "text", "log `format`: text or json")
	logLevel := fs.String("log-level", "info", "log `level`: debug, info, warn or error")
	metricsAddr := fs.String("metrics", "", "serve Prometheus metrics at http://`ADDR`/metrics (off if empty)")
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
	switch {
	case *workers < 1:
		return usageError{fmt.Errorf("invalid value %d for flag -workers: must be at least 1", *workers)}
	case *upgradeTimeout <= 0:
		return usageError{fmt.Errorf("invalid value %s for flag -upgrade-timeout: must be positive", *upgradeTimeout)}
	case *drainTimeout <= 0:
		return usageError{fmt.Errorf("invalid value %s for flag -drain-timeout: must be positive", *drainTimeout)}
	case *workerMode != string(upgrader.GoroutineWorkers) && *workerMode != string(upgrader.ProcessWorkers):
		return usageError{fmt.Errorf("invalid value %q for flag -worker-mode: want goroutine or process", *workerMode)}
	}
	readyDelay, err := upgrader.ParseReady(*ready)
	if err != nil {
		return usageError{fmt.Errorf("flag -ready: %w", err)}
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

	var reg *prometheus.Registry
	if *metricsAddr != "" {
		reg = prometheus.NewRegistry()
		reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	}
	opts := upgrader.Options{
		PIDFile:          *pidfile,
		Workers:          *workers,
		UpgradeTimeout:   *upgradeTimeout,
		DrainTimeout:     *drainTimeout,
		Version:          buildVersion(),
		WorkerMode:       upgrader.WorkerMode(*workerMode),
		WorkersPIDFile:   *workersPIDFile,
		WorkerReadyDelay: readyDelay,
	}
	if reg != nil {
		opts.Metrics = reg
	}
	upg, err := upgrader.New(opts)
	if err != nil {
		return err
	}
	defer upg.Stop()
	slog.SetDefault(upg.Logger()) // every line with pid and generation
	if _, err := upg.Listen("tcp", *listen); err != nil {
		return err
	}
	if reg != nil {
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorLog: slog.NewLogLogger(upg.Logger().Handler(), slog.LevelWarn)}))
		if _, err := upg.ServeAdmin("tcp", *metricsAddr, mux); err != nil {
			return err
		}
	}
	srv := &upgrader.HTTPServer{Server: &http.Server{
		Handler:           newMux(upg),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(upg.Logger().Handler(), slog.LevelWarn),
	}}
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
