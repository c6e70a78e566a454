// Package load is a closed-loop HTTP/1.1 load generator that counts every
// failure at the connection level: it never retries, so a request the
// server dropped shows up as a failure instead of being hidden the way
// net/http's Transport hides it by retrying idempotent requests.
package load

import (
	"bufio"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Failure kinds.
const (
	KindConnect = "connect"
	KindWrite   = "write"
	KindRead    = "read"
	KindTimeout = "timeout"
	KindStatus  = "status"
)

// Config describes a load.
type Config struct {
	// Addr is the server's host:port; Path the request path (default /).
	Addr string
	Path string
	// Concurrency is the number of clients, each with one request in
	// flight at a time.
	Concurrency int
	// Requests is the number of requests to send at least. The load stops
	// once it is reached and Until (if not nil) is closed, or at MaxDuration.
	Requests    int64
	Until       <-chan struct{}
	MaxDuration time.Duration
	// KeepAlive reuses connections until the server asks to close them;
	// otherwise every request has a connection of its own.
	KeepAlive bool
	// PostEvery makes every n-th request a POST with a body (0: none).
	PostEvery int
	// Timeout bounds each request (default 10s).
	Timeout time.Duration
	// Think makes each client wait a random time in [0, Think) before
	// each request, its connection idle meanwhile.
	Think time.Duration
	// Completed, if set, counts successful requests as they complete, so
	// a caller can pace what it does during the load.
	Completed *atomic.Int64
}

// Result is what a load measured.
type Result struct {
	Requests int64 `json:"requests"`
	OK       int64 `json:"ok"`
	Failed   int64 `json:"failed"`
	// Dials counts the connections the clients opened: with keep-alive,
	// one per client plus one per connection the server closed.
	Dials     int64            `json:"dials"`
	ByKind    map[string]int64 `json:"failures_by_kind,omitempty"`
	Errors    []string         `json:"first_errors,omitempty"`
	Duration  time.Duration    `json:"duration_ns"`
	P50       time.Duration    `json:"p50_ns"`
	P99       time.Duration    `json:"p99_ns"`
	Max       time.Duration    `json:"max_ns"`
	PerSecond []int64          `json:"ok_per_second,omitempty"`
	P99PerSec []time.Duration  `json:"p99_per_second_ns,omitempty"`
	// FailedPerSec counts the failures by the second their request started.
	FailedPerSec []int64 `json:"failed_per_second,omitempty"`
	// Start is when the load began; the offsets above count from it.
	Start time.Time `json:"start"`

	samples []sample // successful requests, sorted by start
}

// Window describes the successful requests that started in [from, to),
// offsets from Start: how many, and their median and 99th percentile
// latency. It tells what clients saw while an upgrade was running.
func (r Result) Window(from, to time.Duration) (n int, p50, p99 time.Duration) {
	lo, _ := slices.BinarySearchFunc(r.samples, from, func(s sample, t time.Duration) int { return cmp.Compare(s.at, t) })
	hi, _ := slices.BinarySearchFunc(r.samples, to, func(s sample, t time.Duration) int { return cmp.Compare(s.at, t) })
	if hi <= lo {
		return 0, 0, 0
	}
	lats := make([]time.Duration, 0, hi-lo)
	for _, s := range r.samples[lo:hi] {
		lats = append(lats, s.lat)
	}
	p50, p99, _ = quantiles(lats)
	return len(lats), p50, p99
}

// RPS is the rate of successful requests.
func (r Result) RPS() float64 {
	if r.Duration <= 0 {
		return 0
	}
	return float64(r.OK) / r.Duration.Seconds()
}

func (r Result) String() string {
	var kinds []string
	for k, n := range r.ByKind {
		kinds = append(kinds, fmt.Sprintf("%s=%d", k, n))
	}
	slices.Sort(kinds)
	return fmt.Sprintf("requests=%d ok=%d failed=%d [%s] dials=%d rps=%.0f p50=%s p99=%s max=%s",
		r.Requests, r.OK, r.Failed, strings.Join(kinds, " "), r.Dials, r.RPS(),
		r.P50.Round(time.Microsecond), r.P99.Round(time.Microsecond), r.Max.Round(time.Microsecond))
}

type sample struct {
	at  time.Duration // since start
	lat time.Duration
}

type client struct {
	cfg   *Config
	conn  net.Conn
	br    *bufio.Reader
	get   []byte
	post  []byte
	n     int
	dials *atomic.Int64
}

// Run applies the load and returns what it measured.
func Run(ctx context.Context, cfg Config) Result {
	if cfg.Path == "" {
		cfg.Path = "/"
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Second
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = 1
	}
	if cfg.MaxDuration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, cfg.MaxDuration)
		defer cancel()
	}
	var (
		sent     atomic.Int64
		dials    atomic.Int64
		mu       sync.Mutex
		byKind   = map[string]int64{}
		failedAt []time.Duration
		errs     []string
		samples  [][]sample
		wg       sync.WaitGroup
		start    = time.Now()
		finished = func() bool {
			if ctx.Err() != nil {
				return true
			}
			if sent.Load() < cfg.Requests {
				return false
			}
			if cfg.Until == nil {
				return true
			}
			select {
			case <-cfg.Until:
				return true
			default:
				return false
			}
		}
	)
	samples = make([][]sample, cfg.Concurrency)
	for i := 0; i < cfg.Concurrency; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := newClient(&cfg)
			c.dials = &dials
			defer c.close()
			for !finished() {
				if cfg.Think > 0 {
					select {
					case <-time.After(rand.N(cfg.Think)):
					case <-ctx.Done():
						return
					}
				}
				sent.Add(1)
				t0 := time.Now()
				kind, err := c.do(ctx)
				if err != nil {
					if ctx.Err() != nil && sent.Load() >= cfg.Requests {
						sent.Add(-1) // cut by the end of the load, not a server failure
						return
					}
					mu.Lock()
					byKind[kind]++
					failedAt = append(failedAt, t0.Sub(start))
					if len(errs) < 20 {
						errs = append(errs, fmt.Sprintf("%s: %v", kind, err))
					}
					mu.Unlock()
					continue
				}
				samples[i] = append(samples[i], sample{at: t0.Sub(start), lat: time.Since(t0)})
				if cfg.Completed != nil {
					cfg.Completed.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	r := Result{Requests: sent.Load(), Dials: dials.Load(), ByKind: byKind, Errors: errs, Duration: time.Since(start), Start: start}
	var lats []time.Duration
	secs := int(r.Duration/time.Second) + 1
	perSec := make([][]time.Duration, secs)
	for _, ss := range samples {
		for _, s := range ss {
			lats = append(lats, s.lat)
			sec := int(s.at / time.Second)
			perSec[sec] = append(perSec[sec], s.lat)
		}
		r.samples = append(r.samples, ss...)
	}
	slices.SortFunc(r.samples, func(a, b sample) int { return cmp.Compare(a.at, b.at) })
	r.FailedPerSec = make([]int64, secs)
	for _, at := range failedAt {
		r.FailedPerSec[min(int(at/time.Second), secs-1)]++
	}
	r.OK = int64(len(lats))
	for _, n := range byKind {
		r.Failed += n
	}
	r.P50, r.P99, r.Max = quantiles(lats)
	for _, l := range perSec {
		r.PerSecond = append(r.PerSecond, int64(len(l)))
		_, p99, _ := quantiles(l)
		r.P99PerSec = append(r.P99PerSec, p99)
	}
	return r
}

func quantiles(l []time.Duration) (p50, p99, max time.Duration) {
	if len(l) == 0 {
		return 0, 0, 0
	}
	slices.Sort(l)
	return l[len(l)/2], l[len(l)*99/100], l[len(l)-1]
}

func newClient(cfg *Config) *client {
	conn := "keep-alive"
	if !cfg.KeepAlive {
		conn = "close"
	}
	body := "payload=" + strings.Repeat("x", 64)
	return &client{
		cfg:  cfg,
		get:  fmt.Appendf(nil, "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: %s\r\n\r\n", cfg.Path, cfg.Addr, conn),
		post: fmt.Appendf(nil, "POST %s HTTP/1.1\r\nHost: %s\r\nConnection: %s\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: %d\r\n\r\n%s", cfg.Path, cfg.Addr, conn, len(body), body),
	}
}

func (c *client) close() {
	if c.conn != nil {
		c.conn.Close()
		c.conn = nil
	}
}

// do sends one request and reads its answer; on failure it says which kind.
func (c *client) do(ctx context.Context) (string, error) {
	if c.conn == nil {
		d := net.Dialer{Timeout: c.cfg.Timeout}
		conn, err := d.DialContext(ctx, "tcp", c.cfg.Addr)
		c.dials.Add(1)
		if err != nil {
			return classify(KindConnect, err), err
		}
		c.conn, c.br = conn, bufio.NewReader(conn)
	}
	c.conn.SetDeadline(time.Now().Add(c.cfg.Timeout))
	c.n++
	req := c.get
	if c.cfg.PostEvery > 0 && c.n%c.cfg.PostEvery == 0 {
		req = c.post
	}
	if _, err := c.conn.Write(req); err != nil {
		c.close()
		return classify(KindWrite, err), err
	}
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		c.close()
		return classify(KindRead, err), err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil {
		c.close()
		return classify(KindRead, err), err
	}
	if resp.Close || !c.cfg.KeepAlive {
		c.close()
	}
	if resp.StatusCode != http.StatusOK {
		return KindStatus, fmt.Errorf("status %d", resp.StatusCode)
	}
	return "", nil
}

func classify(kind string, err error) string {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return KindTimeout
	}
	return kind
}
