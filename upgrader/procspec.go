package upgrader

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gohandoff/handoff/internal/handover"
)

// workerEnv marks a process started as a worker of a handoff master. Its
// value is "ID:GENERATION". New reads and removes it, so that nothing the
// worker starts inherits it.
const workerEnv = "HANDOFF_WORKER_R4Y8"

// connsEnv gives a worker process the prefix of the addresses its
// generation's workers receive connections on (httppass.go). A separate
// variable: a worker of a rolled-back build, which knows only workerEnv,
// ignores it.
const connsEnv = "HANDOFF_CONNS_R4Y8"

// listenPIDWrapper runs a worker through /bin/sh so that LISTEN_PID, which
// the socket-activation convention says must be the worker's own pid, is
// set to the pid the worker will have: exec keeps the shell's pid, and
// os/exec cannot know it before the fork.
const listenPIDWrapper = `LISTEN_PID=$$; export LISTEN_PID; exec "$0" "$@"`

// masterOnlyEnv are variables the master may have that its workers must
// not see: tableflip's parent marker, systemd's socket activation and
// notification variables meant for the master, and the worker marker.
var masterOnlyEnv = []string{
	handover.ParentEnv, workerEnv, connsEnv, steerHeldEnv,
	"LISTEN_FDS", "LISTEN_FDNAMES", "LISTEN_PID",
	"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID",
}

// sockRef is a socket of the service, in the order Listen and
// ListenPacket were called, with the name it is passed to workers under.
type sockRef struct {
	name string
	addr string // as Listen or ListenPacket was asked
	conn syscall.Conn
}

// fdName is the LISTEN_FDNAMES name of a socket: network and the address
// as the service asked for it, ':' (the list separator) replaced by '-'.
func fdName(network, addr string) string {
	return network + "-" + strings.ReplaceAll(addr, ":", "-")
}

// procSpec says how the master starts a worker process.
type procSpec struct {
	argv []string // program and arguments
	self bool     // argv is this executable, to run in the worker role
	// image, for self, is the file executed in place of argv[0]: the
	// master's own executable image where the system can name it
	// (/proc/self/exe), so that a worker runs the serving generation's
	// code even after a deploy replaced or removed the file on disk.
	image string
	// prev is the previous generation's executable image, kept open
	// while this generation may roll its workers back to it; rolled,
	// once set, names it in place of image (see rollback.go).
	prev   *os.File
	rolled atomic.Pointer[string]
	gen    int
	conns  string     // connsEnv's value, "" for none
	files  []*os.File // the sockets, passed as fds 3, 4, ...
	names  []string
	// stderr is the service's real stderr: never the relay pipe of an
	// upgrade, which breaks once the previous generation exits.
	stderr *os.File
	dir    string // private folder of the notify sockets
	seq    atomic.Int64
}

// newProcSpecLocked expects u.mu held.
func newProcSpecLocked(u *Upgrader) (*procSpec, error) {
	spec := &procSpec{argv: u.opts.WorkerCommand, gen: u.gen, stderr: u.serviceStderr(), conns: u.connsPrefix()}
	if len(spec.argv) == 0 {
		exe, err := selfExecutable()
		if err != nil {
			return nil, err
		}
		spec.argv, spec.self, spec.image = append([]string{exe}, os.Args[1:]...), true, ownImage(exe)
		if u.ppid != 0 {
			prev, err := previousImage(u.ppid)
			if err != nil {
				u.log.Warn("cannot keep the previous build: this generation's workers cannot be rolled back", "parent_pid", u.ppid, "err", err)
			}
			spec.prev = prev
		}
	}
	socks := u.socks
	seen := make(map[string]bool)
	for _, s := range socks {
		if seen[s.name] {
			spec.cleanup()
			return nil, fmt.Errorf("upgrader: two sockets pass to workers under the name %q", s.name)
		}
		seen[s.name] = true
		f, err := socketFile(s.conn, s.name)
		if err != nil {
			spec.cleanup()
			return nil, fmt.Errorf("upgrader: socket %s for workers: %w", s.name, err)
		}
		spec.files, spec.names = append(spec.files, f), append(spec.names, s.name)
	}
	if u.opts.WorkerReadyDelay <= 0 {
		dir, err := os.MkdirTemp("", "handoff-notify-")
		if err != nil {
			spec.cleanup()
			return nil, fmt.Errorf("upgrader: notify socket folder: %w", err)
		}
		spec.dir = dir
	}
	return spec, nil
}

// selfExecutable resolves os.Args[0] as tableflip does for an upgrade, so
// that workers run the executable now at the path this one was started
// from, which a deploy may have replaced.
func selfExecutable() (string, error) {
	exe := os.Args[0]
	if !strings.Contains(exe, string(filepath.Separator)) {
		p, err := exec.LookPath(exe)
		if err != nil {
			return "", fmt.Errorf("upgrader: find worker executable %s: %w", exe, err)
		}
		exe = p
	}
	if !filepath.IsAbs(exe) {
		wd, err := os.Getwd()
		if err != nil {
			return "", fmt.Errorf("upgrader: find worker executable %s: %w", exe, err)
		}
		exe = filepath.Join(wd, exe)
	}
	return exe, nil
}

// command returns the command of worker id: its environment is the
// master's without the master-only variables, plus LISTEN_FDS,
// LISTEN_FDNAMES, NOTIFY_SOCKET and, for this executable, the worker
// marker. stdin is the lifeline: the worker sees EOF on it when the master
// is gone.
//
// Another program is started through /bin/sh, which sets LISTEN_PID. This
// executable is started directly from the master's image, under the
// argv[0] it was started with (so ps shows the service's path); it sets
// LISTEN_PID itself, seeing the worker marker (takeWorkerRole).
func (s *procSpec) command(id int, notifyPath string, stdin *os.File) *exec.Cmd {
	cmd := exec.Command("/bin/sh", append([]string{"-c", listenPIDWrapper}, s.argv...)...)
	if s.self {
		cmd = &exec.Cmd{Path: s.image, Args: s.argv}
		if p := s.rolled.Load(); p != nil {
			// The previous build may predate workers that set LISTEN_PID
			// themselves: it goes through the shell, under its image path.
			cmd = exec.Command("/bin/sh", append([]string{"-c", listenPIDWrapper, *p}, s.argv[1:]...)...)
		}
	}
	env := make([]string, 0, len(os.Environ())+4)
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if !isMasterOnly(k) {
			env = append(env, kv)
		}
	}
	if len(s.files) > 0 {
		env = append(env, "LISTEN_FDS="+strconv.Itoa(len(s.files)), "LISTEN_FDNAMES="+strings.Join(s.names, ":"))
	}
	if notifyPath != "" {
		env = append(env, "NOTIFY_SOCKET="+notifyPath)
	}
	if s.self {
		env = append(env, fmt.Sprintf("%s=%d:%d", workerEnv, id, s.gen))
		if s.conns != "" {
			env = append(env, connsEnv+"="+s.conns)
		}
	}
	cmd.Env = env
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, os.Stdout, s.stderr
	cmd.ExtraFiles = s.files
	cmd.SysProcAttr = workerProcAttr()
	return cmd
}

func isMasterOnly(key string) bool {
	for _, k := range masterOnlyEnv {
		if k == key {
			return true
		}
	}
	return false
}

// newNotifySocket opens the datagram socket on which worker id sends
// READY=1. Each worker process has its own, so whatever process sends on
// it (the worker or a helper such as systemd-notify) speaks for it.
func (s *procSpec) newNotifySocket(id int) (*notifySocket, error) {
	path := filepath.Join(s.dir, fmt.Sprintf("w%d-%d.sock", id, s.seq.Add(1)))
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return nil, fmt.Errorf("upgrader: notify socket of worker %d: %w", id, err)
	}
	return &notifySocket{conn: conn, p: path}, nil
}

// rolledBack reports whether the workers run the previous build.
func (s *procSpec) rolledBack() bool { return s.rolled.Load() != nil }

func (s *procSpec) cleanup() {
	for _, f := range s.files {
		f.Close()
	}
	if s.prev != nil {
		s.prev.Close()
	}
	if s.dir != "" {
		os.RemoveAll(s.dir)
	}
}

// notifySocket is the master's end of a worker's NOTIFY_SOCKET.
type notifySocket struct {
	conn *net.UnixConn
	p    string
}

func (n *notifySocket) path() string {
	if n == nil {
		return ""
	}
	return n.p
}

func (n *notifySocket) close() {
	if n == nil {
		return
	}
	n.conn.Close()
	os.Remove(n.p)
}

// serve passes every line of every datagram to fn until the socket is
// closed.
func (n *notifySocket) serve(fn func(state string)) {
	buf := make([]byte, 4096)
	for {
		k, _, err := n.conn.ReadFromUnix(buf)
		if err != nil {
			return // closed when the worker has exited
		}
		for _, line := range strings.Split(string(buf[:k]), "\n") {
			if line = strings.TrimSpace(line); line != "" {
				fn(line)
			}
		}
	}
}

// ParseReady parses how a worker process tells it is ready, as the
// --ready flags take it: "notify" (READY=1 on NOTIFY_SOCKET, returned as
// 0) or "delay:DUR" (up for DUR, returned as DUR).
func ParseReady(s string) (time.Duration, error) {
	if s == "notify" {
		return 0, nil
	}
	if v, ok := strings.CutPrefix(s, "delay:"); ok {
		d, err := time.ParseDuration(v)
		if err == nil && d > 0 {
			return d, nil
		}
	}
	return 0, fmt.Errorf("invalid ready mode %q: want notify or delay:DUR (e.g. delay:1s)", s)
}
