package control

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestParseRequest(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name, line string
		want       string
		err        string
	}{
		{"upgrade", `{"cmd":"upgrade"}` + "\n", CmdUpgrade, ""},
		{"status", `{"cmd":"status"}`, CmdStatus, ""},
		{"stop with spaces", ` { "cmd" : "stop" } `, CmdStop, ""},
		{"unknown cmd", `{"cmd":"reboot"}`, "", `unknown cmd "reboot"`},
		{"no cmd", `{}`, "", "request has no cmd"},
		{"unknown field", `{"cmd":"status","x":1}`, "", "unknown field"},
		{"trailing data", `{"cmd":"status"}{"cmd":"stop"}`, "", "trailing data"},
		{"not json", `upgrade`, "", "decode request"},
		{"empty", ``, "", "decode request"},
		{"wrong type", `{"cmd":1}`, "", "decode request"},
		{"too long", `{"cmd":"` + strings.Repeat("x", MaxRequestSize) + `"}`, "", "exceeds"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			req, err := ParseRequest([]byte(c.line))
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("ParseRequest(%q) = %+v, %v; want error %q", c.line, req, err, c.err)
				}
				return
			}
			if err != nil || req.Cmd != c.want {
				t.Fatalf("ParseRequest(%q) = %+v, %v; want cmd %q", c.line, req, err, c.want)
			}
		})
	}
}

func TestSocketPath(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{"run/hello.pid": "run/hello.sock", "/x/svc": "/x/svc.sock"} {
		if got := SocketPath(in); got != want {
			t.Errorf("SocketPath(%q) = %q, want %q", in, got, want)
		}
	}
}

// FuzzParseRequest: ParseRequest never panics, and what it accepts is a
// known command that reads back the same once encoded.
func FuzzParseRequest(f *testing.F) {
	for _, s := range []string{
		`{"cmd":"upgrade"}` + "\n", `{"cmd":"status"}`, `{"cmd":"stop"}`, `{}`, `{"cmd":"x"}`,
		`{"cmd":"status","extra":true}`, `{"cmd":"status"} {"cmd":"stop"}`, `{"cmd":"\u0073top"}`,
		`{"cmd":null}`, `[]`, `"status"`, `{"CMD":"stop"}`, "\xff\xfe", `{"cmd":"upgrade"`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		req, err := ParseRequest(line)
		if err != nil {
			return
		}
		switch req.Cmd {
		case CmdUpgrade, CmdStatus, CmdStop:
		default:
			t.Fatalf("ParseRequest(%q) accepted cmd %q", line, req.Cmd)
		}
		if len(line) > MaxRequestSize {
			t.Fatalf("ParseRequest accepted %d bytes, over %d", len(line), MaxRequestSize)
		}
		b, _ := json.Marshal(req)
		again, err := ParseRequest(b)
		if err != nil || again != req {
			t.Fatalf("round trip of %+v: %+v, %v", req, again, err)
		}
	})
}
