//go:build integration

package integration

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// lookTool returns the path of a load tool, or skips the test saying how
// to install it (.ci/run does).
func lookTool(t *testing.T, name, pkg string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("%s not installed (apt-get install %s; .ci/run installs it)", name, pkg)
	}
	return path
}

// upgradeN upgrades s for the i-th time (from 0), alternating versions.
func (s *service) upgradeN(i int) {
	s.t.Helper()
	bin := helloV2
	if i%2 == 1 {
		bin = helloV1
	}
	install(s.t, bin, s.exe)
	s.reload()
}

// countIn returns the number after label in a tool's report, 0 when the
// line is missing (ab and wrk print some lines only when not zero).
func countIn(t *testing.T, report, pattern string) int {
	t.Helper()
	m := regexp.MustCompile(pattern).FindStringSubmatch(report)
	if m == nil {
		return 0
	}
	n, err := strconv.Atoi(m[1])
	if err != nil {
		t.Fatalf("%q in report: %v", m[0], err)
	}
	return n
}

// Row 16: ab -k, keep-alive clients, through 5 upgrades: every request
// completes, none fails.
func TestFaultApacheBenchKeepAlive(t *testing.T) {
	lookTool(t, "ab", "apache2-utils")
	forEachMode(t, func(t *testing.T, m workerMode) { testApacheBenchKeepAlive(t, m) })
}

func testApacheBenchKeepAlive(t *testing.T, m workerMode) {
	s := startHello(t, helloV1, m.args...)
	const total = 40000
	const upgrades = 5
	out := abThroughUpgrades(t, s.upgradeN, "-k", "-c", "50", "-n", strconv.Itoa(total), "-s", "30", "http://"+s.addr+"/")
	complete := countIn(t, out, `Complete requests:\s+(\d+)`)
	failed := countIn(t, out, `Failed requests:\s+(\d+)`)
	non2xx := countIn(t, out, `Non-2xx responses:\s+(\d+)`)
	writeErrs := countIn(t, out, `Write errors:\s+(\d+)`)
	keepAlive := countIn(t, out, `Keep-Alive requests:\s+(\d+)`)
	t.Logf("ab -k through %d upgrades: complete=%d failed=%d non-2xx=%d write errors=%d keep-alive=%d", upgrades, complete, failed, non2xx, writeErrs, keepAlive)
	if complete != total || failed != 0 || non2xx != 0 || writeErrs != 0 || keepAlive == 0 {
		t.Errorf("ab report:\n%s", out)
	}
}

// established counts the established client connections to addr.
func established(t *testing.T, addr string) int {
	t.Helper()
	_, port, _ := net.SplitHostPort(addr)
	p, _ := strconv.Atoi(port)
	want := fmt.Sprintf(":%04X", p)
	n := 0
	for _, f := range procNetTCP(t) {
		if len(f) > 3 && strings.HasSuffix(f[2], want) && f[3] == "01" {
			n++
		}
	}
	return n
}

// Row 16: wrk, keep-alive clients, through 5 upgrades: no socket error and
// no answer other than 200.
func TestFaultWrkKeepAlive(t *testing.T) {
	wrk := lookTool(t, "wrk", "wrk")
	forEachMode(t, func(t *testing.T, m workerMode) { testWrkKeepAlive(t, wrk, m) })
}

func testWrkKeepAlive(t *testing.T, wrk string, m workerMode) {
	s := startHello(t, helloV1, m.args...)
	const conns = 50
	cmd := exec.Command(wrk, "-t", "2", "-c", strconv.Itoa(conns), "-d", "120s", "--timeout", "10s", "http://"+s.addr+"/")
	var report bytes.Buffer
	cmd.Stdout, cmd.Stderr = &report, &report
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	// wrk has connected once the kernel shows its connections.
	tick := time.NewTicker(10 * time.Millisecond)
	for established(t, s.addr) < conns {
		if time.Now().After(deadline(t)) {
			t.Fatalf("wrk has not connected:\n%s", report.String())
		}
		<-tick.C
	}
	tick.Stop()
	for i := range 5 {
		s.upgradeN(i)
		// The previous generation exits once wrk's connections on it
		// have all been answered and closed: wrk ran through the drain.
		s.log.waitFor(t, 0, "previous generation exited", fmt.Sprintf("generation=%d", i+2))
	}
	cmd.Process.Signal(syscall.SIGINT)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("wrk: %v\n%s", err, report.String())
	}
	out := report.String()
	requests := countIn(t, out, `(\d+) requests in`)
	se := regexp.MustCompile(`Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)`).FindStringSubmatch(out)
	socketErrs := 0
	for _, v := range se[min(1, len(se)):] {
		n, _ := strconv.Atoi(v)
		socketErrs += n
	}
	non2xx := countIn(t, out, `Non-2xx or 3xx responses: (\d+)`)
	t.Logf("wrk through 5 upgrades: requests=%d socket errors=%d non-2xx=%d", requests, socketErrs, non2xx)
	if requests == 0 || socketErrs != 0 || non2xx != 0 {
		t.Errorf("wrk report:\n%s", out)
	}
}

// abThroughUpgrades runs ab with args (its URL last) and calls upgrade(i)
// after each of the first five tenths of the run (ab says "Completed N
// requests" every tenth); it fails the test unless all five ran while ab
// did, and returns ab's report.
func abThroughUpgrades(t *testing.T, upgrade func(i int), args ...string) string {
	t.Helper()
	ab := lookTool(t, "ab", "apache2-utils")
	cmd := exec.Command(ab, args...)
	var report bytes.Buffer
	cmd.Stdout = &report
	progress, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	sc := bufio.NewScanner(progress)
	upgrades := 0
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "Finished") {
			break
		}
		if strings.HasPrefix(line, "Completed") && upgrades < 5 {
			upgrade(upgrades)
			upgrades++
		}
	}
	var rest bytes.Buffer
	rest.ReadFrom(progress)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("ab: %v\n%s%s", err, report.String(), rest.String())
	}
	if upgrades < 5 {
		t.Fatalf("ab finished after %d upgrades, want 5 during its run", upgrades)
	}
	return report.String()
}
