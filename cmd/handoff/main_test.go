package main

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"
)

// Not parallel: urfave/cli v2 keeps global flag state (help, version).
func TestUsageErrorsExit2NamingTheCulprit(t *testing.T) {
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"unknown command", []string{"frobnicate"}, `unknown command "frobnicate"`},
		{"unknown flag", []string{"reload", "--bogus"}, "-bogus"},
		{"negative timeout", []string{"reload", "--timeout", "-1s"}, "--timeout"},
		{"bad duration", []string{"stop", "--timeout", "soon"}, "timeout"},
		{"empty pidfile", []string{"status", "--pidfile", ""}, "--pidfile"},
		{"stray argument", []string{"status", "extra"}, `"extra"`},
		{"bad log format", []string{"--log-format", "xml", "status"}, `"xml"`},
		{"bad log level", []string{"--log-level", "loud", "reload"}, `"loud"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run(context.Background(), append([]string{"handoff"}, tc.args...), &stdout, &stderr)
			if code != 2 {
				t.Errorf("exit code %d, want 2; stderr %q", code, stderr.String())
			}
			lines := strings.Split(strings.TrimSpace(stderr.String()), "\n")
			if last := lines[len(lines)-1]; !strings.Contains(last, tc.want) {
				t.Errorf("stderr %q does not name %q", stderr.String(), tc.want)
			}
		})
	}
}

func TestNoServiceIsAnErrorNotAUsageError(t *testing.T) {
	pidfile := filepath.Join(t.TempDir(), "none.pid")
	for _, cmd := range []string{"reload", "status", "stop"} {
		var stdout, stderr bytes.Buffer
		code := run(context.Background(), []string{"handoff", cmd, "--pidfile", pidfile}, &stdout, &stderr)
		if code != 1 {
			t.Errorf("%s without a service: exit %d, want 1; stderr %q", cmd, code, stderr.String())
		}
		if !strings.Contains(stderr.String(), "none") {
			t.Errorf("%s: stderr %q does not name the pid file or socket", cmd, stderr.String())
		}
	}
}
