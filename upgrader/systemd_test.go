package upgrader

import (
	"encoding/json"
	"net"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
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

// The stats a generation passes on through JSON come out as the histogram
// Prometheus would have built.
func TestStatsSurviveTheStateFile(t *testing.T) {
	t.Parallel()
	var st stats
	st.countUpgrade(ResultSuccess)
	st.countUpgrade(ResultExited)
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
	if back.Stats.Upgrades[ResultSuccess] != 1 || back.Stats.Upgrades[ResultExited] != 1 {
		t.Errorf("upgrades after JSON: %v", back.Stats.Upgrades)
	}
	var m dto.Metric
	if err := back.Stats.UpgradeSeconds.metric(descUpgradeDuration, upgradeBuckets).Write(&m); err != nil {
		t.Fatal(err)
	}
	h := m.GetHistogram()
	if h.GetSampleCount() != 4 || h.GetSampleSum() < 303 || h.GetSampleSum() > 304 {
		t.Errorf("count %d sum %v, want 4 and 303.23", h.GetSampleCount(), h.GetSampleSum())
	}
	want := map[float64]uint64{0.05: 1, 0.1: 1, 0.25: 2, 2.5: 2, 5: 3, 120: 3} // 5 minutes is above every bound
	for _, b := range h.GetBucket() {
		if w, ok := want[b.GetUpperBound()]; ok && b.GetCumulativeCount() != w {
			t.Errorf("bucket le=%v: %d, want %d", b.GetUpperBound(), b.GetCumulativeCount(), w)
		}
	}
	var _ prometheus.Collector = collector{}
}
