package servicecli

import (
	"flag"
	"strings"
	"testing"
)

func TestParseAddr(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in      string
		want    Addr
		wantErr string
	}{
		{in: "127.0.0.1:8080", want: Addr{"tcp", "127.0.0.1:8080"}},
		{in: "tcp://127.0.0.1:8080", want: Addr{"tcp", "127.0.0.1:8080"}},
		{in: "tcp6://[::1]:8080", want: Addr{"tcp6", "[::1]:8080"}},
		{in: "unix:///run/app.sock", want: Addr{"unix", "/run/app.sock"}},
		{in: "udp://127.0.0.1:5353", want: Addr{"udp", "127.0.0.1:5353"}},
		{in: "systemd:http", want: Addr{"tcp", "systemd:http"}},
		{in: "unix://run/app.sock", wantErr: "absolute path"},
		{in: "sctp://127.0.0.1:1", wantErr: `scheme "sctp" is none of tcp, unix, udp`},
		{in: "tcp://nope", wantErr: "want tcp://HOST:PORT"},
		{in: "udp://systemd:x", wantErr: "want udp://HOST:PORT"},
		{in: "127.0.0.1:99999", wantErr: "port"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseAddr(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseAddr(%q) = %v, %v; want an error with %q", tt.in, got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParseAddr(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestParseListenFlags(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		args     []string
		allowUDP bool
		want     []Addr
		wantErr  string
	}{
		{name: "default", want: []Addr{{"tcp", "127.0.0.1:8080"}}},
		{name: "several", args: []string{"--listen", "unix:///a.sock", "--listen", "127.0.0.1:1"}, want: []Addr{{"unix", "/a.sock"}, {"tcp", "127.0.0.1:1"}}},
		{name: "udp refused", args: []string{"--listen", "udp://127.0.0.1:1"}, wantErr: "serves streams, not datagrams"},
		{name: "udp allowed", args: []string{"--listen", "udp://127.0.0.1:1"}, allowUDP: true, want: []Addr{{"udp", "127.0.0.1:1"}}},
		{name: "twice", args: []string{"--listen", "unix:///a.sock", "--listen", "unix:///a.sock"}, wantErr: "given twice"},
		{name: "bad mode", args: []string{"--socket-mode", "0999"}, wantErr: "flag -socket-mode"},
		{name: "zero mode", args: []string{"--socket-mode", "0"}, wantErr: "flag -socket-mode"},
		{name: "unknown group", args: []string{"--socket-group", "no-such-group-here"}, wantErr: "flag -socket-user/-socket-group"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := Register(flag.NewFlagSet("svc", flag.ContinueOnError), "127.0.0.1:8080", "run/svc.pid")
			f.AllowUDP = tt.allowUDP
			err := f.Parse(tt.args)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Parse(%q) = %v; want an error with %q", tt.args, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(f.Addrs) != len(tt.want) {
				t.Fatalf("Addrs = %v, want %v", f.Addrs, tt.want)
			}
			for i := range tt.want {
				if f.Addrs[i] != tt.want[i] {
					t.Fatalf("Addrs = %v, want %v", f.Addrs, tt.want)
				}
			}
		})
	}
}
