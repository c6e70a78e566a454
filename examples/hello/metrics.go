//go:build !nometrics

package main

import (
	"log/slog"
	"net/http"

	"github.com/gohandoff/handoff/upgrader"
	"github.com/gohandoff/handoff/upgrader/promhandoff"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// serveMetrics serves Prometheus metrics at http://addr/metrics, on a
// listener of the upgrader's, handed to every new generation like the
// service's: the handoff_* series, and the Go runtime's and the process's.
// Built with -tags nometrics, hello has none, and starts without
// Prometheus's package inits (the bench's contender: the tableflip
// reference has no metrics either).
var serveMetrics = func(upg *upgrader.Upgrader, addr string) error {
	reg := prometheus.NewRegistry()
	reg.MustRegister(promhandoff.NewCollector(upg),
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorLog: slog.NewLogLogger(upg.Logger().Handler(), slog.LevelWarn)}))
	_, err := upg.ServeAdmin("tcp", addr, mux)
	return err
}
