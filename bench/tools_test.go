//go:build !windows

package main

import (
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gohandoff/handoff/internal/load"
)

const abOutput = `This is ApacheBench, Version 2.3 <$Revision: 1903618 $>

Concurrency Level:      1000
Time taken for tests:   12.500 seconds
Complete requests:      100000
Failed requests:        812
   (Connect: 0, Receive: 12, Length: 800, Exceptions: 0)
Non-2xx responses:      5
Total transferred:      13100000 bytes
Requests per second:    8000.00 [#/sec] (mean)

Percentage of the requests served within a certain time (ms)
  50%    118
  66%    125
  99%    241
 100%   1033 (longest request)
`

func TestParseAB(t *testing.T) {
	t.Parallel()
	r, err := parseAB(abOutput)
	if err != nil {
		t.Fatal(err)
	}
	// Each reset is counted by ab as Receive and as Length: only Length
	// counts, once.
	if r.Failed != 805 || r.ByKind["read"] != 800 || r.ByKind["status"] != 5 || r.ByKind["connect"] != 0 {
		t.Errorf("failed %d by kind %v, want 805: read 800, status 5", r.Failed, r.ByKind)
	}
	if r.OK != 100000-800-5 || r.Requests != r.OK+r.Failed {
		t.Errorf("ok %d of %d, want %d of %d", r.OK, r.Requests, 100000-805, 100000)
	}
	if r.Duration != 12500*time.Millisecond || r.P50 != 118*time.Millisecond || r.P99 != 241*time.Millisecond {
		t.Errorf("duration %s p50 %s p99 %s, want 12.5s 118ms 241ms", r.Duration, r.P50, r.P99)
	}
	if want := float64(r.OK) / 12.5; r.RPS != want {
		t.Errorf("rps %.1f, want %.1f", r.RPS, want)
	}
	if _, err := parseAB("apr_socket_connect(): Connection refused (111)\n"); err == nil {
		t.Error("parseAB accepted output without a summary")
	}
}

func TestABHeartbeat(t *testing.T) {
	t.Parallel()
	if n, ok := abHeartbeat("Completed 20000 requests"); !ok || n != 20000 {
		t.Errorf("abHeartbeat = %d, %v; want 20000, true", n, ok)
	}
	if _, ok := abHeartbeat("Finished 100000 requests"); ok {
		t.Error("abHeartbeat took the final line for progress")
	}
}

func TestABTimeline(t *testing.T) {
	t.Parallel()
	start := time.Unix(1000, 300_000_000)
	var b strings.Builder
	b.WriteString("starttime\tseconds\tctime\tdtime\tttime\twait\n")
	for i := range 100 {
		b.WriteString("Thu Jan  1 00:16:40 1970\t1000\t0\t1\t" + map[bool]string{true: "90", false: "5"}[i == 99] + "\t1\n")
	}
	b.WriteString("Thu Jan  1 00:16:42 1970\t1002\t0\t1\t7\t1\n")
	tl, base := abTimeline(strings.NewReader(b.String()), start)
	if !base.Equal(time.Unix(1000, 0)) {
		t.Errorf("base %v, want the start's whole second", base)
	}
	want := []point{{Second: 0, OK: 100, P99: 90 * time.Millisecond}, {Second: 2, OK: 1, P99: 7 * time.Millisecond}}
	if len(tl) != len(want) || tl[0] != want[0] || tl[1] != want[1] {
		t.Errorf("timeline %+v, want %+v", tl, want)
	}
}

const wrkOutput = `Running 4s test @ http://127.0.0.1:40001/
  2 threads and 1000 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    29.75ms   21.52ms 104.92ms   57.88%
  Latency Distribution
     50%   32.34ms
     75%   45.68ms
     90%   55.85ms
     99%    1.02s
  100387 requests in 4.01s, 12.54MB read
  Socket errors: connect 0, read 999, write 1, timeout 0
  Non-2xx or 3xx responses: 7
Requests/sec:  25034.09
`

func TestParseWrk(t *testing.T) {
	t.Parallel()
	r, err := parseWrk(wrkOutput)
	if err != nil {
		t.Fatal(err)
	}
	if r.Failed != 1007 || r.ByKind["read"] != 999 || r.ByKind["write"] != 1 || r.ByKind["status"] != 7 {
		t.Errorf("failed %d by kind %v, want 1007: read 999, write 1, status 7", r.Failed, r.ByKind)
	}
	if _, ok := r.ByKind["connect"]; ok {
		t.Errorf("zero counts kept: %v", r.ByKind)
	}
	if r.OK != 100380 || r.Requests != 100380+1007 {
		t.Errorf("ok %d of %d, want 100380 of 101387", r.OK, r.Requests)
	}
	if r.Duration != 4010*time.Millisecond || r.P50 != 32340*time.Microsecond || r.P99 != 1020*time.Millisecond {
		t.Errorf("duration %s p50 %s p99 %s", r.Duration, r.P50, r.P99)
	}
	if _, err := parseWrk("unable to connect to 127.0.0.1:1 Connection refused\n"); err == nil {
		t.Error("parseWrk accepted output without a summary")
	}
}

func TestLoaderArgs(t *testing.T) {
	t.Parallel()
	spec := loadSpec{Addr: "127.0.0.1:1", Concurrency: 1000, Requests: 100000}
	if got, want := strings.Join(abArgs(spec, "g.tsv"), " "), "-r -n 100000 -c 1000 -s 30 -g g.tsv http://127.0.0.1:1/"; got != want {
		t.Errorf("ab args %q, want %q", got, want)
	}
	spec = loadSpec{Addr: "127.0.0.1:1", Concurrency: 1000, Duration: 3500 * time.Millisecond, KeepAlive: true}
	if got, want := strings.Join(wrkArgs(spec), " "), "-t2 -c 1000 -d 4s --timeout 10s --latency http://127.0.0.1:1/"; got != want {
		t.Errorf("wrk args %q, want %q", got, want)
	}
}

// TestGoLoaderCountsConnectFailures: with no server, every request is a
// counted connect failure.
func TestGoLoaderCountsConnectFailures(t *testing.T) {
	t.Parallel()
	var progress atomic.Int64
	r, err := goLoader{}.run(t.Context(), loadSpec{Addr: "127.0.0.1:1", Concurrency: 2, Requests: 10}, &progress)
	if err != nil {
		t.Fatal(err)
	}
	if r.OK != 0 || r.Failed != r.Requests || r.Failed < 10 || r.ByKind[load.KindConnect] != r.Failed {
		t.Errorf("ok %d failed %d of %d by kind %v, want every request a connect failure", r.OK, r.Failed, r.Requests, r.ByKind)
	}
}

func TestParseActiveOpens(t *testing.T) {
	snmp := "Ip: Forwarding DefaultTTL\nIp: 1 64\n" +
		"Tcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens AttemptFails\n" +
		"Tcp: 1 200 120000 -1 890520 17 3\n" +
		"Udp: InDatagrams\nUdp: 5\n"
	if n, ok := parseActiveOpens(snmp); !ok || n != 890520 {
		t.Errorf("parseActiveOpens = %d, %v; want 890520, true", n, ok)
	}
	if _, ok := parseActiveOpens("Tcp: RtoAlgorithm\nTcp: 1\n"); ok {
		t.Error("parseActiveOpens found ActiveOpens where there is none")
	}
	if n, ok := tcpActiveOpens(); !ok || n < 0 {
		t.Errorf("tcpActiveOpens on this machine = %d, %v", n, ok)
	}
}
