// Command probe is a test service on the upgrader whose GET /spawn starts
// a process, as an application may, and answers with what that process
// inherited: its open descriptors and its environment. Run as
// "probe inherited", it prints those of its own.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strconv"

	"github.com/gohandoff/handoff/upgrader"
)

// Inherited is what a spawned process found.
type Inherited struct {
	PID       int      `json:"pid"`        // the service's pid
	Gen       int      `json:"generation"` // the service's generation
	FDs       []int    `json:"fds"`
	Env       []string `json:"env"`
	ParentErr string   `json:"error,omitempty"`
}

func main() {
	if len(os.Args) == 2 && os.Args[1] == "inherited" {
		json.NewEncoder(os.Stdout).Encode(Inherited{FDs: openFDs(), Env: os.Environ()})
		return
	}
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "probe:", err)
		os.Exit(1)
	}
}

// openFDs lists the open descriptors of this process but the one that
// reads the list.
func openFDs() []int {
	d, err := os.Open("/proc/self/fd")
	if err != nil {
		return nil
	}
	defer d.Close()
	names, _ := d.Readdirnames(-1)
	var fds []int
	for _, n := range names {
		if fd, err := strconv.Atoi(n); err == nil && uintptr(fd) != d.Fd() {
			fds = append(fds, fd)
		}
	}
	slices.Sort(fds)
	return fds
}

func run() error {
	listen := flag.String("listen", "127.0.0.1:0", "address")
	pidfile := flag.String("pidfile", "", "PID file")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	upg, err := upgrader.New(upgrader.Options{PIDFile: *pidfile, Workers: 2, Logger: log})
	if err != nil {
		return err
	}
	defer upg.Stop()
	if _, err := upg.Listen("tcp", *listen); err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/{$}", func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "ok pid=%d generation=%d\n", os.Getpid(), upg.Generation())
	})
	mux.HandleFunc("GET /spawn", func(w http.ResponseWriter, r *http.Request) {
		in := Inherited{}
		out, err := exec.CommandContext(r.Context(), os.Args[0], "inherited").Output()
		if err == nil {
			err = json.Unmarshal(out, &in)
		}
		if err != nil {
			in.ParentErr = err.Error()
		}
		in.PID, in.Gen = os.Getpid(), upg.Generation()
		json.NewEncoder(w).Encode(in)
	})
	srv := &upgrader.HTTPServer{Server: &http.Server{Handler: mux}}
	return upg.Serve(context.Background(), srv.Worker)
}
