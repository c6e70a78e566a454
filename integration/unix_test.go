//go:build integration

package integration

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// nginxRequests is the size of the ab run through nginx: 10,000 in make
// test, HANDOFF_NGINX_REQUESTS=50000 for the README's figure (about 20 s
// a mode on 2 busy cores, 50 s under handoff run with Node).
func nginxRequests(t *testing.T) int {
	if v := os.Getenv("HANDOFF_NGINX_REQUESTS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1000 {
			t.Fatalf("HANDOFF_NGINX_REQUESTS=%q: want a number of at least 1000", v)
		}
		return n
	}
	return 10000
}

// socketDir returns a folder for unix sockets that nginx's workers
// (user nobody) can reach: the test's temp folder, made traversable.
func socketDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for _, d := range []string{filepath.Dir(dir), dir} {
		if err := os.Chmod(d, 0o711); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// frontNginx is a real nginx the test starts in front of a unix socket.
type frontNginx struct {
	addr      string
	accessLog string
	errorLog  string
}

// startNginx starts nginx on a free 127.0.0.1 port, its prefix, config,
// logs and temp folders in a folder of the test's, proxying every
// request to the unix socket at sock, without retrying on another
// connection (proxy_next_upstream off): every failure is a 502 in its
// access log. As root, its workers run as nobody:nogroup.
func startNginx(t *testing.T, sock string) *frontNginx {
	t.Helper()
	bin := lookTool(t, "nginx", "nginx-light")
	dir := t.TempDir()
	n := &frontNginx{addr: freeAddr(t), accessLog: filepath.Join(dir, "access.log"), errorLog: filepath.Join(dir, "error.log")}
	userLine := ""
	if os.Geteuid() == 0 {
		userLine = "user nobody nogroup;"
	}
	conf := fmt.Sprintf(`daemon off;
master_process on;
worker_processes 2;
%s
pid %[2]s/nginx.pid;
error_log %[3]s warn;
events { worker_connections 2048; }
http {
	log_format st '$status $upstream_status';
	access_log %[4]s st;
	client_body_temp_path %[2]s/body;
	proxy_temp_path %[2]s/proxy;
	fastcgi_temp_path %[2]s/fastcgi;
	uwsgi_temp_path %[2]s/uwsgi;
	scgi_temp_path %[2]s/scgi;
	server {
		listen %[5]s;
		location / {
			proxy_pass http://unix:%[6]s:;
			proxy_next_upstream off;
		}
	}
}
`, userLine, dir, n.errorLog, n.accessLog, n.addr, sock)
	confFile := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(confFile, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-p", dir, "-c", confFile)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM) // nginx's fast shutdown; its workers go with it
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			errLog, _ := os.ReadFile(n.errorLog)
			t.Logf("nginx output:\n%s\nnginx error log:\n%s", out.String(), lastLines(string(errLog), 20))
		}
	})
	// nginx accepts once its port is bound: wait for that, or its exit.
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	end := deadline(t)
	for {
		if c, err := net.Dial("tcp", n.addr); err == nil {
			c.Close()
			return n
		}
		select {
		case <-exited:
			t.Fatalf("nginx exited at start:\n%s", out.String())
		case <-tick.C:
		}
		if time.Now().After(end) {
			t.Fatalf("nginx does not listen on %s:\n%s", n.addr, out.String())
		}
	}
}

// statuses counts the access log's lines by status.
func (n *frontNginx) statuses(t *testing.T) map[string]int {
	t.Helper()
	b, err := os.ReadFile(n.accessLog)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int{}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if status, _, ok := strings.Cut(line, " "); ok {
			out[status]++
		}
	}
	return out
}

// socketFileStat returns the inode of the socket file at path, failing the
// test if there is none.
func socketFileStat(t *testing.T, path string) (uint64, os.FileMode, int) {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatalf("socket file: %v", err)
	}
	if fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("%s is %v, not a socket", path, fi.Mode())
	}
	st := fi.Sys().(*syscall.Stat_t)
	return st.Ino, fi.Mode().Perm(), int(st.Gid)
}

// TestUnixSocketBehindNginx: a service on a unix socket behind a real
// nginx (proxy_pass http://unix:PATH), ab -n 10000 -c 200 (see
// nginxRequests) through nginx
// while the service upgrades five times: no failed request, no 502, in
// both worker modes and under handoff run with the Node example. The
// socket file is the same one all along (never unlinked, with the mode
// and group asked for), and is removed when the service stops.
func TestUnixSocketBehindNginx(t *testing.T) {
	lookTool(t, "nginx", "nginx-light")
	total := nginxRequests(t)
	group := ""
	if os.Geteuid() == 0 {
		group = "nogroup" // nginx's workers reach the socket by its group only
	}
	modeArgs := []string{"--socket-mode", "0660"}
	if group != "" {
		modeArgs = append(modeArgs, "--socket-group", group)
	}
	for _, m := range append(append([]workerMode(nil), workerModes...), workerMode{name: "handoff-run-node"}) {
		t.Run(m.name, func(t *testing.T) {
			sock := filepath.Join(socketDir(t), "app.sock")
			var s *service
			if m.name == "handoff-run-node" {
				s = startNodeRun(t, append([]string{"--listen", "unix://" + sock}, modeArgs...)...)
			} else {
				s = newService(t, helloV1, "hello")
				s.startArgs(append(append([]string{"--listen", "unix://" + sock, "--pidfile", s.pidfile}, modeArgs...), m.args...)...)
				s.waitReady()
			}
			ino, mode, gid := socketFileStat(t, sock)
			if mode != 0o660 {
				t.Errorf("socket mode %o, want 0660", mode)
			}
			if group != "" {
				g, err := user.LookupGroup(group)
				if err != nil {
					t.Fatal(err)
				}
				if strconv.Itoa(gid) != g.Gid {
					t.Errorf("socket group %d, want %s (%s)", gid, g.Gid, group)
				}
			}
			ngx := startNginx(t, sock)
			report := abThroughUpgrades(t, func(i int) {
				if m.name == "handoff-run-node" {
					s.reload()
				} else {
					s.upgradeN(i)
				}
				if got, _, _ := socketFileStat(t, sock); got != ino {
					t.Errorf("upgrade %d: the socket file was replaced (inode %d, was %d)", i+1, got, ino)
				}
			}, "-c", "200", "-n", strconv.Itoa(total), "-s", "30", "http://"+ngx.addr+"/")
			complete := countIn(t, report, `Complete requests:\s+(\d+)`)
			failed := countIn(t, report, `Failed requests:\s+(\d+)`)
			non2xx := countIn(t, report, `Non-2xx responses:\s+(\d+)`)
			rps := regexpFind(report, `Requests per second:\s+([\d.]+)`)
			st := ngx.statuses(t)
			t.Logf("ab -n %d -c 200 via nginx through 5 upgrades: complete=%d failed=%d non-2xx=%d, %s req/s; nginx statuses %v",
				total, complete, failed, non2xx, rps, st)
			if complete != total || failed != 0 || non2xx != 0 || st["502"] != 0 || st["200"] != total {
				t.Errorf("ab report:\n%s", report)
			}
			s.log.waitFor(t, 0, "previous generation exited", "generation=6")
			if got, _, _ := socketFileStat(t, sock); got != ino {
				t.Errorf("after the drains: the socket file was replaced (inode %d, was %d)", got, ino)
			}
			if code, out, errOut := s.handoff("stop"); code != 0 {
				t.Fatalf("handoff stop: exit %d\n%s%s", code, out, errOut)
			}
			if _, err := os.Lstat(sock); !os.IsNotExist(err) {
				t.Errorf("socket file after the final stop: %v, want it removed", err)
			}
		})
	}
}

// regexpFind returns the first group of pattern in s, or "?".
func regexpFind(s, pattern string) string {
	if m := regexp.MustCompile(pattern).FindStringSubmatch(s); m != nil {
		return m[1]
	}
	return "?"
}

// startNodeRun starts handoff run with two workers of examples/node on
// the given listen flags, and waits until it is ready.
func startNodeRun(t *testing.T, listen ...string) *service {
	t.Helper()
	node, src := nodeServer(t, true)
	s := newService(t, handoffBin, "handoff")
	app := filepath.Join(s.dir, "app.js")
	installBytes(t, src, app)
	s.startArgs(append(append([]string{"run"}, listen...), "--workers", "2", "--pidfile", s.pidfile, "--", node, app)...)
	s.waitReady()
	return s
}

// unixGet fetches path from the HTTP server on the unix socket sock, on a
// connection of its own.
func unixGet(sock, path string) (int, string, error) {
	c := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		},
	}}
	resp, err := c.Get("http://unix" + path)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 && err == nil {
		err = fmt.Errorf("status %d: %q", resp.StatusCode, b)
	}
	return resp.StatusCode, strings.TrimSpace(string(b)), err
}

// TestUnixSocketFileRules: in both worker modes, a stale socket file (no
// process accepts on it) is taken over with a warning; a second service
// on a live one and a path that is no socket are refused with one line
// naming the path, exit 1; a failed upgrade leaves the socket file as it
// is and serving; the final stop removes it.
func TestUnixSocketFileRules(t *testing.T) {
	forEachMode(t, func(t *testing.T, m workerMode) {
		dir := t.TempDir()
		sock := filepath.Join(dir, "app.sock")
		// A stale socket: bound, then its process "died" without unlinking.
		ln, err := net.Listen("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		ln.(*net.UnixListener).SetUnlinkOnClose(false)
		ln.Close()

		s := newService(t, helloV1, "hello")
		s.startArgs(append([]string{"--listen", "unix://" + sock, "--pidfile", s.pidfile}, m.args...)...)
		s.waitReady()
		s.log.waitFor(t, 0, "taking over stale unix socket", "path="+sock)
		if code, body, err := unixGet(sock, "/version"); err != nil || body != "v1" {
			t.Fatalf("GET /version on the socket taken over: %d %q %v", code, body, err)
		}
		ino, mode, _ := socketFileStat(t, sock)
		if mode != 0o666 {
			t.Errorf("socket mode %o, want the default 0666", mode)
		}

		// A second service on the live socket is refused.
		other := newService(t, helloV1, "hello")
		code, out := runOnce(t, other.dir, other.exe, "--listen", "unix://"+sock, "--pidfile", other.pidfile)
		wantContains(t, "second service on a live socket", errorLine(out, "hello: "), sock+" is in use: another process accepts connections on it")
		if code != 1 {
			t.Errorf("second service: exit %d, want 1", code)
		}
		// A path that is no socket is refused and left alone.
		plain := filepath.Join(dir, "plain")
		if err := os.WriteFile(plain, []byte("data"), 0o644); err != nil {
			t.Fatal(err)
		}
		code, out = runOnce(t, other.dir, other.exe, "--listen", "unix://"+plain, "--pidfile", other.pidfile)
		wantContains(t, "a regular file as the socket", errorLine(out, "hello: "), plain+" exists and is not a socket")
		if b, _ := os.ReadFile(plain); code != 1 || string(b) != "data" {
			t.Errorf("regular file: exit %d, content %q; want exit 1 and the file untouched", code, b)
		}

		// A failed upgrade leaves the socket as it is.
		installBytes(t, []byte("#!/bin/sh\necho 'bad build' >&2\nexit 1\n"), s.exe)
		s.reloadFails()
		if got, _, _ := socketFileStat(t, sock); got != ino {
			t.Errorf("after the failed upgrade: socket inode %d, was %d", got, ino)
		}
		if code, body, err := unixGet(sock, "/version"); err != nil || body != "v1" {
			t.Errorf("GET /version after the failed upgrade: %d %q %v", code, body, err)
		}
		// A good one too; the old generation's exit leaves it.
		install(t, helloV2, s.exe)
		s.reload()
		s.log.waitFor(t, 0, "previous generation exited", "generation=2")
		if got, _, _ := socketFileStat(t, sock); got != ino {
			t.Errorf("after the upgrade: socket inode %d, was %d", got, ino)
		}
		if code, body, err := unixGet(sock, "/version"); err != nil || body != "v2" {
			t.Errorf("GET /version after the upgrade: %d %q %v", code, body, err)
		}
		if code, out, errOut := s.handoff("stop"); code != 0 {
			t.Fatalf("handoff stop: exit %d\n%s%s", code, out, errOut)
		}
		if _, err := os.Lstat(sock); !os.IsNotExist(err) {
			t.Errorf("socket file after the final stop: %v, want it removed", err)
		}
	})
}
