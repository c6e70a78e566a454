//go:build !windows

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/template"
	"time"

	"github.com/gohandoff/handoff/control"
	"github.com/gohandoff/handoff/internal/linelog"
	"github.com/gohandoff/handoff/internal/proc"
	"github.com/gohandoff/handoff/internal/verify"
	"github.com/gohandoff/handoff/pidfile"
)

// How a contender is started and upgraded.
const (
	kindBaseline  = "baseline"  // bare net/http, no upgrade
	kindTableflip = "tableflip" // SIGHUP; ready when the PID file names the new pid
	kindHandoff   = "handoff"   // control socket, as handoff reload and verify do
	kindRun       = "run"       // handoff run over an app; control socket too
	kindNode      = "node"      // SIGUSR2 to the cluster master; it logs the roll
	kindNginx     = "nginx"     // nginx -s reload; ready when the new workers run
)

// contender is one server the benchmark compares. The list is data: a
// contender whose binary or tool is missing, or lacks a flag it needs, is
// skipped with a line saying so.
type contender struct {
	Name  string `json:"name"`
	About string `json:"about"`
	Kind  string `json:"kind"`
	// Args are added to the command line.
	Args []string `json:"args,omitempty"`
	// NeedsFlag is a flag the binary must show in its --help.
	NeedsFlag string `json:"-"`
}

var contenders = []contender{
	{Name: "baseline", Kind: kindBaseline, About: "bare net/http hello, no upgrade support: the ceiling"},
	{Name: "tableflip", Kind: kindTableflip, About: "cloudflare/tableflip as its README shows: SIGHUP, then <-upg.Exit() and http.Server.Shutdown"},
	{Name: "handoff", Kind: kindHandoff, About: "examples/hello (built with -tags nometrics, as the tableflip reference has no metrics), goroutine workers (default), upgraded through the control socket"},
	{Name: "handoff-process", Kind: kindHandoff, Args: []string{"--worker-mode", "process"}, NeedsFlag: "worker-mode",
		About: "examples/hello (-tags nometrics) --worker-mode process, upgraded through the control socket"},
	{Name: "handoff-run-node", Kind: kindRun, About: "handoff run --workers NumCPU -- node examples/node/app.js: the seed's 7-line app, unmodified but for listen({fd: 3}), with kernel steering; upgraded through the control socket (new master, new workers)"},
	{Name: "node-cluster", Kind: kindNode, About: "Node.js cluster: a worker per CPU, SIGUSR2 replaces them one at a time"},
	{Name: "nginx", Kind: kindNginx, About: "nginx-light, return 200, a worker per CPU, nginx -s reload"},
}

// env is where the benchmark finds what it starts.
type env struct {
	binDir string // built Go contenders: baseline, tableflip, hello
	srcDir string // bench/contenders
	tmp    string
	log    io.Writer
}

// available says why c cannot run here, or "" if it can.
func (e *env) available(c contender) string {
	switch c.Kind {
	case kindNode, kindRun:
		if _, err := exec.LookPath("node"); err != nil {
			return "node is not installed"
		}
	case kindNginx:
		if _, err := exec.LookPath("nginx"); err != nil {
			return "nginx is not installed (Debian: apt-get install nginx-light)"
		}
	}
	if c.NeedsFlag != "" {
		out, _ := exec.Command(e.bin(c), "--help").CombinedOutput()
		if !strings.Contains(string(out), "-"+c.NeedsFlag) {
			return fmt.Sprintf("%s has no --%s flag yet", filepath.Base(e.bin(c)), c.NeedsFlag)
		}
	}
	return ""
}

func (e *env) bin(c contender) string {
	switch c.Kind {
	case kindBaseline:
		return filepath.Join(e.binDir, "baseline")
	case kindTableflip:
		return filepath.Join(e.binDir, "tableflip")
	case kindHandoff:
		return filepath.Join(e.binDir, "hello")
	case kindRun:
		return filepath.Join(e.binDir, "handoff")
	case kindNode:
		return "node"
	case kindNginx:
		return "nginx"
	}
	return ""
}

// instance is a running contender.
type instance struct {
	c       contender
	addr    string
	dir     string
	cmd     *exec.Cmd
	lines   *lineLog
	pidfile string
	waited  chan struct{}
	trigger verify.Trigger // nil: no upgrades
	gap     time.Duration  // idle time between two latency upgrades
}

// start runs c on a free loopback port in a folder of its own, in a
// process group of its own, and waits until it answers.
func (e *env) start(ctx context.Context, c contender) (*instance, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp(e.tmp, c.Name+"-")
	if err != nil {
		return nil, err
	}
	in := &instance{c: c, addr: addr, dir: dir, waited: make(chan struct{})}
	var args []string
	switch c.Kind {
	case kindBaseline:
		args = []string{"--listen", addr}
	case kindTableflip:
		in.pidfile = filepath.Join(dir, "tableflip.pid")
		args = []string{"--listen", addr, "--pid-file", in.pidfile}
		in.trigger = in.signalTrigger()
		in.gap = 50 * time.Millisecond
	case kindHandoff:
		in.pidfile = filepath.Join(dir, "run", "hello.pid")
		args = []string{"--listen", addr, "--pidfile", in.pidfile}
		in.trigger = in.handoffTrigger()
	case kindRun:
		in.pidfile = filepath.Join(dir, "run", "node.pid")
		app := filepath.Join(filepath.Dir(filepath.Dir(e.srcDir)), "examples", "node", "app.js")
		args = []string{"run", "--listen", "tcp://" + addr, "--workers", strconv.Itoa(runtime.NumCPU()), "--pidfile", in.pidfile,
			"--ready", "delay:200ms", "--", "node", app}
		in.trigger = in.handoffTrigger()
	case kindNode:
		args = []string{filepath.Join(e.srcDir, "node-cluster", "cluster.js"), "--listen", addr}
		in.trigger = in.nodeTrigger()
	case kindNginx:
		conf, err := writeNginxConf(filepath.Join(e.srcDir, "nginx", "nginx.conf"), dir, addr)
		if err != nil {
			return nil, err
		}
		args = []string{"-p", dir, "-c", conf, "-e", filepath.Join(dir, "error.log")}
		in.trigger = in.nginxTrigger(conf)
	}
	args = append(args, c.Args...)
	in.cmd = exec.Command(e.bin(c), args...)
	in.cmd.Dir = dir
	in.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	pr, pw := io.Pipe()
	in.cmd.Stdout, in.cmd.Stderr = pw, pw
	in.lines = newLineLog(pr)
	if err := in.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", c.Name, err)
	}
	go func() {
		in.cmd.Wait()
		pw.Close()
		close(in.waited)
	}()
	if err := in.waitServing(ctx, 30*time.Second); err != nil {
		in.stop()
		return nil, fmt.Errorf("%s: %w\n%s", c.Name, err, in.lines.tail(20))
	}
	if c.Kind == kindHandoff || c.Kind == kindRun {
		// A worker process of a first generation may serve before its
		// master is ready (all its workers are): an upgrade asked before
		// would find no PID file. The master writes it once ready.
		rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		if _, err := waitNewPID(rctx, in.pidfile, 0, func() error {
			select {
			case <-in.waited:
				return fmt.Errorf("exited before ready: %v", in.cmd.ProcessState)
			default:
				return nil
			}
		}); err != nil {
			in.stop()
			return nil, fmt.Errorf("%s: %w\n%s", c.Name, err, in.lines.tail(20))
		}
	}
	return in, nil
}

// waitServing polls GET / until it answers 200.
func (in *instance) waitServing(ctx context.Context, limit time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: time.Second}
	for {
		resp, err := client.Get("http://" + in.addr + "/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("not serving on %s after %s: %v", in.addr, limit, err)
		case <-in.waited:
			return fmt.Errorf("exited before serving: %v", in.cmd.ProcessState)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// stop kills the contender's whole process group and waits for its main
// process.
func (in *instance) stop() {
	pg := in.cmd.Process.Pid
	syscall.Kill(-pg, syscall.SIGKILL)
	for _, pid := range groupPIDs(pg) {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	<-in.waited
	os.RemoveAll(in.dir)
	// The output of every run is kept for a look after the fact.
	logs := filepath.Join(filepath.Dir(in.dir), "logs")
	if os.MkdirAll(logs, 0o755) == nil {
		os.WriteFile(filepath.Join(logs, filepath.Base(in.dir)+".log"), []byte(in.lines.tail(1<<30)+"\n"), 0o644)
	}
}

// waitNewPID polls the PID file every 200 µs until it names a pid other
// than old, and returns it. check runs on every poll; its error ends the
// wait.
func waitNewPID(ctx context.Context, pidfile string, old int, check func() error) (int, error) {
	tick := time.NewTicker(200 * time.Microsecond)
	defer tick.Stop()
	for {
		if pid, err := readPID(pidfile); err == nil && pid != old {
			return pid, nil
		}
		if err := check(); err != nil {
			return 0, err
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("pid file %s still names pid %d: %w", pidfile, old, ctx.Err())
		case <-tick.C:
		}
	}
}

// signalTrigger: SIGHUP to the pid in the PID file; ready when the PID file
// names another pid; gone when that pid has exited. A signal that arrived
// while tableflip still saw its parent is logged as "Upgrade failed" and
// sent again.
func (in *instance) signalTrigger() verify.Trigger {
	return func(ctx context.Context) (verify.Upgrade, error) {
		old, err := readPID(in.pidfile)
		if err != nil {
			return verify.Upgrade{}, err
		}
		from := in.lines.len()
		t0 := time.Now()
		if err := syscall.Kill(old, syscall.SIGHUP); err != nil {
			return verify.Upgrade{}, fmt.Errorf("signal pid %d: %w", old, err)
		}
		u := verify.Upgrade{OldPID: old}
		u.NewPID, err = waitNewPID(ctx, in.pidfile, old, func() error {
			i := in.lines.find(from, "Upgrade failed")
			if i < 0 {
				return nil
			}
			if !strings.Contains(in.lines.line(i), "parent hasn't exited") {
				return fmt.Errorf("pid %d: %s", old, in.lines.line(i))
			}
			from = i + 1
			return syscall.Kill(old, syscall.SIGHUP)
		})
		if err != nil {
			return u, err
		}
		u.Ready = time.Since(t0)
		if err := proc.WaitGone(ctx, old); err != nil {
			return u, fmt.Errorf("old pid %d still running: %w", old, err)
		}
		u.Gone = time.Since(t0)
		return u, nil
	}
}

// handoffTrigger asks for the upgrade through the control socket, as
// handoff reload and handoff verify do, and times it like the tableflip
// reference: ready when the PID file names the new pid (the new generation
// writes it just before it reports ready), gone when the old pid has
// exited. Answered is when the control socket's answer came: later under
// load, as the old generation's busy scheduler takes a while to see the
// new one's ready byte.
func (in *instance) handoffTrigger() verify.Trigger {
	return func(ctx context.Context) (verify.Upgrade, error) {
		old, err := readPID(in.pidfile)
		if err != nil {
			return verify.Upgrade{}, err
		}
		type answer struct {
			m   control.Message
			err error
			at  time.Duration
		}
		answers := make(chan answer, 1)
		t0 := time.Now()
		go func() {
			m, err := control.Do(ctx, control.SocketPath(in.pidfile), control.Request{Cmd: control.CmdUpgrade}, nil)
			answers <- answer{m, err, time.Since(t0)}
		}()
		u := verify.Upgrade{OldPID: old}
		var a *answer
		u.NewPID, err = waitNewPID(ctx, in.pidfile, old, func() error {
			select {
			case got := <-answers:
				a = &got
				return got.err
			default:
				return nil
			}
		})
		if err != nil {
			return u, fmt.Errorf("upgrade through the control socket: %w", err)
		}
		u.Ready = time.Since(t0)
		if a == nil {
			got := <-answers
			a = &got
		}
		if a.err != nil {
			return u, fmt.Errorf("upgrade through the control socket: %w", a.err)
		}
		u.Answered = a.at
		if r := a.m.Upgrade; r != nil {
			u.Generation = r.Generation
		}
		if err := proc.WaitGone(ctx, old); err != nil {
			return u, fmt.Errorf("old pid %d still running: %w", old, err)
		}
		u.Gone = time.Since(t0)
		return u, nil
	}
}

// nodeTrigger: SIGUSR2 to the cluster master; ready when it logs that the
// last replacement listens, gone when the last old worker has exited.
func (in *instance) nodeTrigger() verify.Trigger {
	return func(ctx context.Context) (verify.Upgrade, error) {
		from := in.lines.len()
		t0 := time.Now()
		master := in.cmd.Process.Pid
		if err := syscall.Kill(master, syscall.SIGUSR2); err != nil {
			return verify.Upgrade{}, err
		}
		u := verify.Upgrade{OldPID: master, NewPID: master}
		i, err := in.lines.waitFor(ctx, from, "roll ready", "roll failed")
		if err != nil {
			return u, err
		}
		if line := in.lines.line(i); strings.Contains(line, "roll failed") {
			return u, errors.New(line)
		}
		u.Ready = time.Since(t0)
		i, err = in.lines.waitFor(ctx, i, "roll done", "roll failed")
		if err != nil {
			return u, err
		}
		if line := in.lines.line(i); strings.Contains(line, "roll failed") {
			return u, errors.New(line)
		}
		u.Gone = time.Since(t0)
		return u, nil
	}
}

// nginxTrigger: nginx -s reload; ready when the master has as many new
// workers as it had old ones, gone when every old worker has exited.
func (in *instance) nginxTrigger(conf string) verify.Trigger {
	return func(ctx context.Context) (verify.Upgrade, error) {
		master := in.cmd.Process.Pid
		old := childrenOf(master)
		u := verify.Upgrade{OldPID: master, NewPID: master}
		t0 := time.Now()
		out, err := exec.CommandContext(ctx, "nginx", "-p", in.dir, "-c", conf, "-e", filepath.Join(in.dir, "error.log"), "-s", "reload").CombinedOutput()
		if err != nil {
			return u, fmt.Errorf("nginx -s reload: %w: %s", err, out)
		}
		tick := time.NewTicker(200 * time.Microsecond)
		defer tick.Stop()
		for {
			fresh := 0
			for _, pid := range childrenOf(master) {
				if !slices.Contains(old, pid) {
					fresh++
				}
			}
			if fresh >= len(old) {
				break
			}
			select {
			case <-ctx.Done():
				return u, fmt.Errorf("nginx: %d of %d new workers after reload: %w", fresh, len(old), ctx.Err())
			case <-tick.C:
			}
		}
		u.Ready = time.Since(t0)
		for _, pid := range old {
			if err := proc.WaitGone(ctx, pid); err != nil {
				return u, fmt.Errorf("nginx: old worker %d still running: %w", pid, err)
			}
		}
		u.Gone = time.Since(t0)
		return u, nil
	}
}

func readPID(path string) (int, error) {
	pids, err := pidfile.Read(path)
	if err != nil {
		return 0, err
	}
	if len(pids) != 1 {
		return 0, fmt.Errorf("pid file %s: %d pids", path, len(pids))
	}
	return pids[0], nil
}

// writeNginxConf renders the nginx template for a private prefix.
func writeNginxConf(tmplPath, prefix, addr string) (string, error) {
	t, err := template.ParseFiles(tmplPath)
	if err != nil {
		return "", fmt.Errorf("nginx template: %w", err)
	}
	conf := filepath.Join(prefix, "nginx.conf")
	f, err := os.Create(conf)
	if err != nil {
		return "", err
	}
	defer f.Close()
	if err := t.Execute(f, map[string]string{"Prefix": prefix, "Listen": addr}); err != nil {
		return "", fmt.Errorf("nginx template: %w", err)
	}
	return conf, f.Close()
}

func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// lineLog keeps a contender's output lines and lets the driver wait for one.
type lineLog struct{ *linelog.Log }

func newLineLog(r io.Reader) *lineLog { return &lineLog{linelog.New(r)} }

func (l *lineLog) len() int          { return l.Len() }
func (l *lineLog) line(i int) string { return l.Line(i) }
func (l *lineLog) tail(n int) string { return l.Tail(n) }

// find returns the index of the first line from `from` holding any of
// parts, or -1.
func (l *lineLog) find(from int, parts ...string) int {
	i, _, _ := l.Find(from, linelog.Any(parts...))
	return i
}

// waitFor waits for a line from `from` holding any of parts.
func (l *lineLog) waitFor(ctx context.Context, from int, parts ...string) (int, error) {
	for {
		i, change, _ := l.Find(from, linelog.Any(parts...))
		if i >= 0 {
			return i, nil
		}
		select {
		case <-change:
		case <-ctx.Done():
			return -1, fmt.Errorf("no line with %q: %w", parts, ctx.Err())
		}
	}
}
