package main

import (
	"bytes"
	"strings"
	"testing"
)

// TestVerifyBadFlags is not parallel: the app's flags are package
// variables that urfave/cli writes to while parsing.
func TestVerifyBadFlags(t *testing.T) {
	tests := []struct {
		name string
		args []string
		flag string
	}{
		{"no url", []string{}, "--url"},
		{"https url", []string{"--url", "https://127.0.0.1:1/"}, "--url"},
		{"no host", []string{"--url", "http:///x"}, "--url"},
		{"bad url", []string{"--url", "http://[::1"}, "--url"},
		{"negative upgrades", []string{"--url", "http://127.0.0.1:1/", "--upgrades", "-1"}, "--upgrades"},
		{"zero concurrency", []string{"--url", "http://127.0.0.1:1/", "--concurrency", "0"}, "--concurrency"},
		{"zero duration", []string{"--url", "http://127.0.0.1:1/", "--duration", "0s"}, "--duration"},
		{"unparsable duration", []string{"--url", "http://127.0.0.1:1/", "--duration", "soon"}, "duration"},
		{"empty pidfile", []string{"--url", "http://127.0.0.1:1/", "--pidfile", ""}, "--pidfile"},
		{"argument", []string{"--url", "http://127.0.0.1:1/", "extra"}, "extra"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run(t.Context(), append([]string{"handoff", "verify"}, tt.args...), &stdout, &stderr)
			if code != 2 {
				t.Errorf("exit code %d, want 2; stderr %q", code, stderr.String())
			}
			lines := strings.Split(strings.TrimSpace(stderr.String()), "\n")
			if len(lines) != 1 || !strings.Contains(lines[0], tt.flag) {
				t.Errorf("stderr %q, want one line naming %s", stderr.String(), tt.flag)
			}
		})
	}
}

func TestVerifyTarget(t *testing.T) {
	tests := []struct{ url, addr, path string }{
		{"http://127.0.0.1:8080/", "127.0.0.1:8080", "/"},
		{"http://127.0.0.1:8080", "127.0.0.1:8080", "/"},
		{"http://localhost/x?y=1", "localhost:80", "/x?y=1"},
		{"http://[::1]:9000/a", "[::1]:9000", "/a"},
	}
	for _, tt := range tests {
		addr, path, err := verifyTarget(tt.url)
		if err != nil || addr != tt.addr || path != tt.path {
			t.Errorf("verifyTarget(%q) = %q, %q, %v; want %q, %q", tt.url, addr, path, err, tt.addr, tt.path)
		}
	}
}
