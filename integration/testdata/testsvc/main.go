// Command testsvc is an HTTP service on the upgrader for the integration
// tests. GET /spawn starts a process, as an application may, and answers
// with what that process inherited: its open descriptors and its
// environment.
// With --hang-worker, one worker never reports ready while the others
// serve: a new generation that hangs before ready. Built with
// -X main.version=crash-after-ready, every worker exits 300ms after it
// starts: a build that reports ready, then crashes under traffic.
//
// Two builds fail while they take the previous generation's keep-alive
// connections over; only the first of their processes to take its 100th
// connection does (the one that creates the file fault-taken next to its
// binary), so that a test knows where the fault struck:
// -X main.version=die-taking-conns kills itself there with SIGKILL, and
// -X main.version=stall-taking-conns stops taking connections there until
// the file fault-release appears next to its binary (a minute at most),
// and -X main.version=nofile-taking-conns runs out of descriptors there
// (its soft RLIMIT_NOFILE lowered to what it holds) until that file
// appears: its channels fail as descriptors cannot arrive.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gohandoff/handoff/upgrader"
)

// version is stamped at build time with -ldflags "-X main.version=...".
var version = ""

// Inherited is what a spawned process found.
type Inherited struct {
	PID       int      `json:"pid"`        // the service's pid
	Gen       int      `json:"generation"` // the service's generation
	FDs       []int    `json:"fds"`
	Env       []string `json:"env"`
	ParentErr string   `json:"error,omitempty"`
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "testsvc:", err)
		os.Exit(1)
	}
}

// spawn starts cat, as an application may start a helper, and reads what
// it inherited from /proc once it has echoed a line, so once it is done
// starting (the loader and libc open files of their own meanwhile).
func spawn(ctx context.Context) (fds []int, env []string, err error) {
	cmd := exec.CommandContext(ctx, "cat")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, nil, err
	}
	defer cmd.Wait()
	defer stdin.Close()
	if _, err := io.WriteString(stdin, "ready\n"); err != nil {
		return nil, nil, err
	}
	if _, err := bufio.NewReader(stdout).ReadString('\n'); err != nil {
		return nil, nil, fmt.Errorf("cat did not echo: %w", err)
	}
	dir := fmt.Sprintf("/proc/%d/", cmd.Process.Pid)
	ents, err := os.ReadDir(dir + "fd")
	if err != nil {
		return nil, nil, err
	}
	for _, e := range ents {
		if fd, err := strconv.Atoi(e.Name()); err == nil {
			fds = append(fds, fd)
		}
	}
	slices.Sort(fds)
	b, err := os.ReadFile(dir + "environ")
	if err != nil {
		return nil, nil, err
	}
	for kv := range strings.SplitSeq(strings.TrimRight(string(b), "\x00"), "\x00") {
		env = append(env, kv)
	}
	return fds, env, nil
}

func run() error {
	listen := flag.String("listen", "127.0.0.1:0", "address")
	pidfile := flag.String("pidfile", "", "PID file")
	workers := flag.Int("workers", 2, "workers")
	upgradeTimeout := flag.Duration("upgrade-timeout", 0, "upgrade timeout")
	mode := flag.String("worker-mode", "goroutine", "goroutine or process")
	probation := flag.Duration("probation", 0, "probation after an upgrade")
	hang := flag.Bool("hang-worker", false, "one worker never reports ready")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	upg, err := upgrader.New(upgrader.Options{PIDFile: *pidfile, Workers: *workers, WorkerMode: upgrader.WorkerMode(*mode), Probation: *probation, UpgradeTimeout: *upgradeTimeout, Logger: log})
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
		fmt.Fprintf(w, "ok pid=%d generation=%d version=%s\n", os.Getpid(), upg.Generation(), version)
	})
	mux.HandleFunc("GET /spawn", func(w http.ResponseWriter, r *http.Request) {
		in := Inherited{PID: os.Getpid(), Gen: upg.Generation()}
		var err error
		if in.FDs, in.Env, err = spawn(r.Context()); err != nil {
			in.ParentErr = err.Error()
		}
		json.NewEncoder(w).Encode(in)
	})
	srv := &upgrader.HTTPServer{Server: &http.Server{Handler: mux}}
	if version == "die-taking-conns" || version == "stall-taking-conns" || version == "nofile-taking-conns" {
		srv.Server.ConnState = faultTakingConns(log)
	}
	worker := srv.Worker
	if *hang {
		worker = func(ctx context.Context, w *upgrader.Worker) error {
			if w.ID == 0 {
				w.Logger.Info("worker hangs before ready")
				<-w.Draining()
				return nil
			}
			return srv.Worker(ctx, w)
		}
	}
	if version == "crash-after-ready" {
		serve := worker
		worker = func(ctx context.Context, w *upgrader.Worker) error {
			time.AfterFunc(300*time.Millisecond, func() {
				w.Logger.Error("crashing after ready")
				os.Exit(3)
			})
			return serve(ctx, w)
		}
	}
	return upg.Serve(context.Background(), worker)
}

// faultTakingConns is the ConnState hook of the builds that fail while
// taking connections over: net/http calls it for a new connection in the
// loop that accepts it, so that a stall there stops the taking.
func faultTakingConns(log *slog.Logger) func(net.Conn, http.ConnState) {
	var taken atomic.Int64
	return func(_ net.Conn, st http.ConnState) {
		if st != http.StateNew || taken.Add(1) != 100 {
			return
		}
		exe, err := os.Executable()
		if err != nil {
			log.Error("fault build: no executable", "err", err)
			return
		}
		dir := filepath.Dir(exe)
		f, err := os.OpenFile(filepath.Join(dir, "fault-taken"), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
		if err != nil {
			return // another process of the build struck already
		}
		f.Close()
		switch version {
		case "die-taking-conns":
			log.Error("fault: killed after taking 100 connections", "pid", os.Getpid())
			syscall.Kill(os.Getpid(), syscall.SIGKILL)
			select {}
		case "nofile-taking-conns":
			go outOfDescriptors(log, dir)
			return
		}
		log.Warn("fault: stalls after taking 100 connections", "pid", os.Getpid())
		waitRelease(dir)
		log.Warn("fault: takes connections again", "pid", os.Getpid())
	}
}

// waitRelease waits for the file fault-release in dir, a minute at most.
func waitRelease(dir string) {
	for end := time.Now().Add(time.Minute); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		if _, err := os.Stat(filepath.Join(dir, "fault-release")); err == nil {
			return
		}
	}
}

// outOfDescriptors lowers the soft descriptor limit to the descriptors
// open, so that no new one can be made, until fault-release appears.
func outOfDescriptors(log *slog.Logger, dir string) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		log.Error("fault build: getrlimit", "err", err)
		return
	}
	open, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		log.Error("fault build: list descriptors", "err", err)
		return
	}
	low := lim
	low.Cur = uint64(len(open))
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &low); err != nil {
		log.Error("fault build: setrlimit", "err", err)
		return
	}
	log.Warn("fault: out of descriptors after taking 100 connections", "pid", os.Getpid(), "limit", low.Cur)
	waitRelease(dir)
	syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
	log.Warn("fault: descriptors again", "pid", os.Getpid())
}
