package upgrader

import (
	"encoding/json"
	"net"
	"slices"
	"testing"
	"time"
)

func TestSameAddr(t *testing.T) {
	t.Parallel()
	tcp := func(s string) net.Addr { a, _ := net.ResolveTCPAddr("tcp", s); return a }
	udp := func(s string) net.Addr { a, _ := net.ResolveUDPAddr("udp", s); return a }
	cases := []struct {
		name, network, want string
		got                 net.Addr
		match               bool
	}{
		{"same", "tcp", "127.0.0.1:8080", tcp("127.0.0.1:8080"), true},
		{"other port", "tcp", "127.0.0.1:8081", tcp("127.0.0.1:8080"), false},
		{"other host", "tcp", "127.0.0.2:8080", tcp("127.0.0.1:8080"), false},
		{"empty host is any", "tcp", ":8080", tcp("0.0.0.0:8080"), true},
		{"empty host is not loopback", "tcp", ":8080", tcp("127.0.0.1:8080"), false},
		{"port 0 matches nothing", "tcp", "127.0.0.1:0", tcp("127.0.0.1:0"), false},
		{"tcp4", "tcp4", "127.0.0.1:8080", tcp("127.0.0.1:8080"), true},
		{"udp", "udp", "127.0.0.1:53", udp("127.0.0.1:53"), true},
		{"udp is not tcp", "udp", "127.0.0.1:8080", tcp("127.0.0.1:8080"), false},
		{"unix", "unix", "/run/app.sock", &net.UnixAddr{Name: "/run/app.sock", Net: "unix"}, true},
		{"other unix", "unix", "/run/b.sock", &net.UnixAddr{Name: "/run/app.sock", Net: "unix"}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := sameAddr(tc.network, tc.want, tc.got); got != tc.match {
				t.Errorf("sameAddr(%s, %s, %s) = %v, want %v", tc.network, tc.want, tc.got, got, tc.match)
			}
		})
	}
}

func TestActivationKeyNeverAPath(t *testing.T) {
	t.Parallel()
	for addr, want := range map[string]string{"/run/app.sock": "systemd:/run/app.sock", "systemd:http": "systemd:http", ":80": "systemd::80"} {
		if got := activationKey(addr); got != want {
			t.Errorf("activationKey(%q) = %q, want %q", addr, got, want)
		}
	}
}

// The stats a generation passes on through JSON come out of Stats as the
// histogram they counted (promhandoff cumulates it for Prometheus).
func TestStatsSurviveTheStateFile(t *testing.T) {
	t.Parallel()
	var st stats
	st.countUpgrade(resultSuccess)
	st.countUpgrade(resultExited)
	for _, d := range []time.Duration{30 * time.Millisecond, 200 * time.Millisecond, 3 * time.Second, 5 * time.Minute} {
		st.UpgradeSeconds.observe(upgradeBuckets, d)
	}
	b, err := json.Marshal(genState{Stats: &st})
	if err != nil {
		t.Fatal(err)
	}
	var back genState
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	u := &Upgrader{gen: 4, opts: Options{Version: "v4"}, stats: *back.Stats}
	u.phase.set(phaseReady)
	s := u.Stats()
	if s.Upgrades[resultSuccess] != 1 || s.Upgrades[resultExited] != 1 || len(s.Upgrades) != 4 {
		t.Errorf("upgrades after JSON: %v, want success 1, exited 1, and every result", s.Upgrades)
	}
	if s.Generation != 4 || s.Version != "v4" || s.Phase != "ready" {
		t.Errorf("generation %d version %q phase %q, want 4 v4 ready", s.Generation, s.Version, s.Phase)
	}
	h := s.UpgradeSeconds
	if h.Count != 4 || h.Sum < 303 || h.Sum > 304 {
		t.Errorf("count %d sum %v, want 4 and 303.23", h.Count, h.Sum)
	}
	if !slices.Equal(h.Bounds, upgradeBuckets) {
		t.Errorf("bounds %v, want %v", h.Bounds, upgradeBuckets)
	}
	want := []uint64{1, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0} // 5 minutes is above every bound
	if !slices.Equal(h.Counts, want) {
		t.Errorf("counts %v, want %v", h.Counts, want)
	}
	for _, state := range workerStates {
		if n, ok := s.Workers[state]; !ok || n != 0 {
			t.Errorf("workers %q: %d (present %v), want 0 without a pool", state, n, ok)
		}
	}
}
