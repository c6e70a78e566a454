//go:build integration

package integration

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// scrape fetches the metrics at addr on a connection of its own and
// returns the samples by series name with labels, e.g.
// `handoff_upgrades_total{result="success"}`.
func scrape(addr string) (map[string]float64, error) {
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}
	resp, err := c.Get("http://" + addr + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		return nil, fmt.Errorf("status %d: %s", resp.StatusCode, b)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			return nil, fmt.Errorf("bad sample %q", line)
		}
		out[line[:i]] = v
	}
	return out, sc.Err()
}

// TestMetricsSurviveUpgrades scrapes without pause through three upgrades
// and a failed one: no scrape fails (the metrics listener is inherited
// like the service's), and the counters, carried from generation to
// generation, count every upgrade and drain.
func TestMetricsSurviveUpgrades(t *testing.T) {
	maddr := freeAddr(t)
	s := startHello(t, helloV1, "--metrics", maddr, "--workers", "3")
	var scrapes, failures atomic.Int64
	var firstErr atomic.Value
	stop := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := scrape(maddr); err != nil {
				failures.Add(1)
				firstErr.CompareAndSwap(nil, err.Error())
			}
			scrapes.Add(1)
		}
	}()
	for i := range 3 {
		install(t, []string{helloV2, helloV1}[i%2], s.exe)
		if code, out, errOut := s.handoff("reload"); code != 0 {
			t.Fatalf("handoff reload: exit %d\n%s%s", code, out, errOut)
		}
		waitCount(t, &scrapes, scrapes.Load()+20)
	}
	installBytes(t, []byte("#!/bin/sh\nexit 1\n"), s.exe)
	from := s.log.len()
	if err := syscall.Kill(s.pid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	s.log.waitFor(t, from, "upgrade failed")
	waitCount(t, &scrapes, scrapes.Load()+20)
	close(stop)
	<-stopped
	t.Logf("%d scrapes, %d failed", scrapes.Load(), failures.Load())
	if failures.Load() != 0 {
		t.Errorf("%d of %d scrapes failed during upgrades; first: %v", failures.Load(), scrapes.Load(), firstErr.Load())
	}

	// The third old generation has exited once its successor says so.
	s.log.waitFor(t, 0, "previous generation exited", "generation=4")
	m, err := scrape(maddr)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]float64{
		"handoff_generation":                       4,
		`handoff_version_info{version="v2"}`:       1,
		`handoff_upgrades_total{result="success"}`: 3,
		`handoff_upgrades_total{result="exited"}`:  1,
		`handoff_upgrades_total{result="timeout"}`: 0,
		"handoff_upgrade_duration_seconds_count":   3,
		"handoff_drain_duration_seconds_count":     3,
		"handoff_drain_connections_cut_total":      0,
		`handoff_workers{state="ready"}`:           3,
		`handoff_workers{state="backoff"}`:         0,
		`handoff_workers{state="crash-loop"}`:      0,
		"handoff_worker_restarts_total":            0,
	}
	for k, v := range want {
		if got, ok := m[k]; !ok || got != v {
			t.Errorf("%s = %v (present %v), want %v", k, got, ok, v)
		}
	}
	if sum := m["handoff_upgrade_duration_seconds_sum"]; sum <= 0 {
		t.Errorf("handoff_upgrade_duration_seconds_sum = %v, want > 0", sum)
	}
	if _, ok := m["go_goroutines"]; !ok {
		t.Errorf("no Go runtime metrics in the scrape")
	}
}
