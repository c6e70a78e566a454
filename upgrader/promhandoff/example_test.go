package promhandoff_test

import (
	"context"
	"log"
	"net/http"

	"github.com/gohandoff/handoff/upgrader"
	"github.com/gohandoff/handoff/upgrader/promhandoff"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Prometheus metrics on a listener of their own that survives upgrades:
// scrapes never fail during one, and the handoff_* counters go on from
// generation to generation.
func ExampleNewCollector() {
	upg, err := upgrader.New(upgrader.Options{PIDFile: "run/hello.pid"})
	if err != nil {
		log.Fatal(err)
	}
	defer upg.Stop()
	reg := prometheus.NewRegistry()
	reg.MustRegister(promhandoff.NewCollector(upg))
	if _, err := upg.Listen("tcp", "127.0.0.1:8080"); err != nil {
		log.Fatal(err)
	}
	if _, err := upg.ServeAdmin("tcp", "127.0.0.1:9090", promhttp.HandlerFor(reg, promhttp.HandlerOpts{})); err != nil {
		log.Fatal(err)
	}
	srv := &upgrader.HTTPServer{Server: &http.Server{Handler: http.NotFoundHandler()}}
	if err := upg.Serve(context.Background(), srv.Worker); err != nil {
		log.Fatal(err)
	}
}
