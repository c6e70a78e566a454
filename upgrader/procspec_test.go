package upgrader

import (
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gohandoff/handoff/internal/handover"
)

func TestParseReady(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in      string
		want    time.Duration
		wantErr bool
	}{
		{"notify", 0, false},
		{"delay:1s", time.Second, false},
		{"delay:250ms", 250 * time.Millisecond, false},
		{"delay:0s", 0, true},
		{"delay:-1s", 0, true},
		{"delay:", 0, true},
		{"delay", 0, true},
		{"", 0, true},
		{"Notify", 0, true},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseReady(tc.in)
			if (err != nil) != tc.wantErr || got != tc.want {
				t.Errorf("ParseReady(%q) = %s, %v; want %s, error %v", tc.in, got, err, tc.want, tc.wantErr)
			}
		})
	}
}

func TestFDNameHasNoColon(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ network, addr, want string }{
		{"tcp", "127.0.0.1:8080", "tcp-127.0.0.1-8080"},
		{"tcp", ":8080", "tcp--8080"},
		{"tcp6", "[::1]:80", "tcp6-[--1]-80"},
		{"unix", "/run/app.sock", "unix-/run/app.sock"},
	} {
		if got := fdName(tc.network, tc.addr); got != tc.want {
			t.Errorf("fdName(%q, %q) = %q, want %q", tc.network, tc.addr, got, tc.want)
		}
	}
}

func TestWorkersPIDFile(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"run/hello.pid": "run/hello.workers.pid",
		"/var/run/x":    "/var/run/x.workers.pid",
	} {
		if got := workersPIDFile(in); got != want {
			t.Errorf("workersPIDFile(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestWorkerEnv: a worker sees the socket-activation and notify variables
// the master sets for it, never the master's own.
func TestWorkerEnv(t *testing.T) {
	t.Setenv(handover.ParentEnv, "1")
	t.Setenv("NOTIFY_SOCKET", "/run/systemd/notify")
	t.Setenv("LISTEN_FDS", "1")
	t.Setenv("LISTEN_PID", "1")
	t.Setenv("WATCHDOG_USEC", "1000")
	t.Setenv("APP_SETTING", "kept")
	f, err := os.CreateTemp(t.TempDir(), "sock")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, self := range []bool{false, true} {
		spec := &procSpec{argv: []string{"/bin/true"}, image: "/proc/self/exe", self: self, gen: 7, files: []*os.File{f}, names: []string{"tcp-127.0.0.1-80"}}
		cmd := spec.command(2, "/tmp/n.sock", nil)
		env := map[string][]string{}
		for _, kv := range cmd.Env {
			k, v, _ := strings.Cut(kv, "=")
			env[k] = append(env[k], v)
		}
		want := map[string]string{
			"LISTEN_FDS": "1", "LISTEN_FDNAMES": "tcp-127.0.0.1-80", "NOTIFY_SOCKET": "/tmp/n.sock", "APP_SETTING": "kept",
		}
		if self {
			want[workerEnv] = "2:7"
		}
		for k, v := range want {
			if !slices.Equal(env[k], []string{v}) {
				t.Errorf("self=%v: %s=%q, want %q", self, k, env[k], v)
			}
		}
		for _, k := range []string{handover.ParentEnv, "LISTEN_PID", "WATCHDOG_USEC"} {
			if _, ok := env[k]; ok {
				t.Errorf("self=%v: master-only %s reaches the worker", self, k)
			}
		}
		if _, ok := env[workerEnv]; ok != self {
			t.Errorf("self=%v: worker marker set: %v", self, ok)
		}
		if self {
			if cmd.Path != spec.image || !slices.Equal(cmd.Args, spec.argv) {
				t.Errorf("own worker runs %s %q, want the master's image %s %q", cmd.Path, cmd.Args, spec.image, spec.argv)
			}
		} else if got := cmd.Args[:3]; !slices.Equal(got, []string{"/bin/sh", "-c", listenPIDWrapper}) {
			t.Errorf("command %q does not set LISTEN_PID through the shell", cmd.Args)
		}
	}
}
