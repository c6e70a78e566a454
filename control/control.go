// Package control is the protocol between a running service and the handoff
// CLI: one JSON request per connection on a unix socket next to the PID
// file, answered by a stream of JSON messages, one a line, one of which is
// final (Final true, with OK or Error).
//
// An upgrade's final message comes as soon as the new generation is ready
// or the upgrade has failed: that is the upgrade's result. After a
// successful one, the old generation keeps the connection open and goes on
// with messages about its drain (Step "drain", with Drain set, whenever
// the work left changes), then one with Step "drained" once it is over,
// and closes the connection. A client that only wants the result reads up
// to the final message and closes; the service then stops sending. A
// service from before the drain messages closes right after the final one.
package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"
	"time"
)

// Commands a service answers.
const (
	CmdUpgrade = "upgrade"
	CmdStatus  = "status"
	CmdStop    = "stop"
	// CmdRestartWorkers is a rolling restart of the worker processes.
	CmdRestartWorkers = "restart-workers"
)

// MaxRequestSize bounds a request line; longer requests are refused.
const MaxRequestSize = 4096

// Request is what the CLI sends.
type Request struct {
	Cmd string `json:"cmd"`
}

// Message is one line of a reply. Progress messages have Final false; the
// last message of a reply has Final true and either OK or Error.
type Message struct {
	Final   bool           `json:"final,omitempty"`
	OK      bool           `json:"ok,omitempty"`
	Error   string         `json:"error,omitempty"`
	Step    string         `json:"step,omitempty"`
	Msg     string         `json:"msg,omitempty"`
	Status  *Status        `json:"status,omitempty"`
	Upgrade *UpgradeResult `json:"upgrade,omitempty"`
	Drain   *Drain         `json:"drain,omitempty"`
	// Stderr holds the last lines of stderr of a new generation that
	// failed before it was ready, on the final message of an upgrade.
	Stderr []string `json:"stderr,omitempty"`
	// HandedOver, on a failed final message, is the pid of the new
	// generation that the asked one has just handed over to: the request
	// is to be sent again, and only the new generation answers then.
	HandedOver int `json:"handed_over_to,omitempty"`
	// Stopping, on the final message of a stop, lists every process that
	// stops as asked: the serving generation, the new one when the stop
	// came during an upgrade that succeeded, and the old generations
	// still draining, each to its own deadline.
	Stopping []int `json:"stopping,omitempty"`
}

// Drain is the progress of an old generation's drain after an upgrade.
type Drain struct {
	PID int `json:"pid"`
	// Left is how much work is left: open connections, or workers that
	// have not returned when the service does not count connections.
	Left    int           `json:"left"`
	Unit    string        `json:"unit,omitempty"` // "connections" or "workers"
	Elapsed time.Duration `json:"elapsed_ns"`
	Cut     int           `json:"cut,omitempty"` // connections cut at the drain timeout
	Done    bool          `json:"done,omitempty"`
}

// UpgradeResult describes a finished upgrade.
type UpgradeResult struct {
	OldPID     int           `json:"old_pid"`
	NewPID     int           `json:"new_pid"`
	Generation int           `json:"generation"`
	Version    string        `json:"version,omitempty"`
	Duration   time.Duration `json:"duration_ns"`
}

// Status is a snapshot of a running generation.
type Status struct {
	PID        int            `json:"pid"`
	Generation int            `json:"generation"`
	Version    string         `json:"version,omitempty"`
	Started    time.Time      `json:"started"`
	Uptime     time.Duration  `json:"uptime_ns"`
	State      string         `json:"state"`
	Listeners  []string       `json:"listeners"`
	Workers    []WorkerStatus `json:"workers"`
	ParentPID  int            `json:"parent_pid,omitempty"`
	LastError  string         `json:"last_upgrade_error,omitempty"`
	// Rollback says why the worker processes run the previous build, if
	// they do: they crash-looped right after this generation's upgrade.
	Rollback string `json:"rollback,omitempty"`
	// UpgradeInProgress: an upgrade was asked and has no outcome yet (it
	// may wait for the previous generation's probation).
	UpgradeInProgress bool `json:"upgrade_in_progress,omitempty"`
	// Generations lists every live generation: the answering one first,
	// then the old ones still draining, newest first.
	Generations []GenerationStatus `json:"generations,omitempty"`
}

// GenerationStatus describes one live generation of the service.
type GenerationStatus struct {
	PID        int    `json:"pid"`
	Generation int    `json:"generation"`
	Version    string `json:"version,omitempty"`
	// State is the serving generation's phase, or for an old one
	// "draining", "standing by" (its probation) or "ending" (cut short
	// over --max-draining).
	State string `json:"state"`
	// Left is the work an old generation has left: open connections, or
	// workers that have not returned (Unit).
	Left int    `json:"left"`
	Unit string `json:"unit,omitempty"`
	// DrainDeadline is when an old generation cuts what is left.
	DrainDeadline time.Time `json:"drain_deadline,omitzero"`
}

// WorkerStatus describes one worker of the pool.
type WorkerStatus struct {
	ID       int           `json:"id"`
	PID      int           `json:"pid,omitempty"`
	State    string        `json:"state"`
	Restarts int           `json:"restarts"`
	Uptime   time.Duration `json:"uptime_ns"`
	LastErr  string        `json:"last_error,omitempty"`
}

// ParseRequest decodes one request line, refusing unknown commands and
// trailing data.
func ParseRequest(line []byte) (Request, error) {
	var req Request
	if len(line) > MaxRequestSize {
		return req, fmt.Errorf("request of %d bytes exceeds %d", len(line), MaxRequestSize)
	}
	dec := json.NewDecoder(strings.NewReader(string(line)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return req, fmt.Errorf("decode request: %w", err)
	}
	if dec.More() {
		return req, errors.New("decode request: trailing data")
	}
	switch req.Cmd {
	case CmdUpgrade, CmdStatus, CmdStop, CmdRestartWorkers:
		return req, nil
	case "":
		return req, errors.New("request has no cmd")
	default:
		return req, fmt.Errorf("unknown cmd %q", req.Cmd)
	}
}

// SocketPath derives the control socket's path from a PID file's path:
// run/hello.pid becomes run/hello.sock.
func SocketPath(pidFile string) string {
	return strings.TrimSuffix(pidFile, ".pid") + ".sock"
}

// Do sends req to the service listening on socket and returns its final
// message. Every progress message is passed to progress, which may be nil.
// A final message with an error is returned as an error too.
func Do(ctx context.Context, socket string, req Request, progress func(Message)) (Message, error) {
	return do(ctx, socket, req, progress, false)
}

// Follow is Do, except that it passes every message to fn, the final one
// included, and after a successful final message goes on reading what the
// service sends (an upgrade's drain) until it closes the connection or
// ctx ends. Errors after the final message are not returned: the result
// is the final message's.
func Follow(ctx context.Context, socket string, req Request, fn func(Message)) (Message, error) {
	return do(ctx, socket, req, fn, true)
}

// ErrNoService: nothing listens on the control socket, so no service runs
// there (a killed one may have left the socket file).
var ErrNoService = errors.New("no service runs")

// ErrNotSent: the request never reached the service (it could not be
// connected to, or the request not written), so it did nothing.
var ErrNotSent = errors.New("request not sent")

type notSent struct{ error }

func (e notSent) Is(target error) bool { return target == ErrNotSent }

func (e notSent) Unwrap() error { return e.error }

// maxHandOvers bounds how often a request is sent again because the
// generation it reached had just handed over.
const maxHandOvers = 5

func do(ctx context.Context, socket string, req Request, fn func(Message), follow bool) (Message, error) {
	for i := 0; ; i++ {
		m, err := doOnce(ctx, socket, req, fn, follow)
		if m.HandedOver == 0 || i == maxHandOvers {
			return m, err
		}
	}
}

func doOnce(ctx context.Context, socket string, req Request, fn func(Message), follow bool) (Message, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) {
			return Message{}, notSent{fmt.Errorf("%w on control socket %s: %w", ErrNoService, socket, err)}
		}
		return Message{}, notSent{fmt.Errorf("connect to control socket %s: %w", socket, err)}
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })
	defer stop()

	b, _ := json.Marshal(req)
	if _, err := conn.Write(append(b, '\n')); err != nil {
		return Message{}, notSent{fmt.Errorf("send %s request: %w", req.Cmd, err)}
	}
	// A decoder, not a line scanner: a status of many thousand workers is
	// one long line.
	dec := json.NewDecoder(conn)
	for {
		var m Message
		if err := dec.Decode(&m); err != nil {
			return Message{}, replyError(ctx, req.Cmd, err)
		}
		if m.Final && !m.OK && m.HandedOver != 0 {
			return m, errors.New(m.Error)
		}
		if fn != nil && (follow || !m.Final) {
			fn(m)
		}
		if !m.Final {
			continue
		}
		if !m.OK {
			return m, errors.New(m.Error)
		}
		if follow {
			for {
				var after Message
				if dec.Decode(&after) != nil {
					break
				}
				if fn != nil {
					fn(after)
				}
			}
		}
		return m, nil
	}
}

// replyError says why no final message came.
func replyError(ctx context.Context, cmd string, err error) error {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case ctx.Err() != nil:
		return fmt.Errorf("%s: %w", cmd, ctx.Err())
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
		return fmt.Errorf("%s: connection closed before a reply", cmd)
	case errors.As(err, &syn) || errors.As(err, &typ):
		return fmt.Errorf("decode reply to %s: %w", cmd, err)
	}
	return fmt.Errorf("read reply to %s: %w", cmd, err)
}

// WriteTimeout bounds each message a service writes: a client that stops
// reading (or never reads a long status) cannot hold the service's
// request handler, and with it the service's exit, for longer.
const WriteTimeout = 5 * time.Second

// Writer sends the messages of one reply, each bounded by WriteTimeout.
type Writer struct {
	conn net.Conn
	enc  *json.Encoder
}

// NewWriter returns a Writer on conn.
func NewWriter(conn net.Conn) *Writer {
	return &Writer{conn: conn, enc: json.NewEncoder(conn)}
}

func (w *Writer) send(m Message) error {
	w.conn.SetWriteDeadline(time.Now().Add(WriteTimeout))
	return w.enc.Encode(m)
}

// Progress sends a progress message.
func (w *Writer) Progress(step, msg string) error {
	return w.send(Message{Step: step, Msg: msg})
}

// Send sends m as it is: a progress message, or one that follows the
// final message.
func (w *Writer) Send(m Message) error {
	return w.send(m)
}

// Final sends the final message, failed if err is not nil.
func (w *Writer) Final(m Message, err error) error {
	m.Final = true
	m.OK = err == nil
	if err != nil {
		m.Error = err.Error()
	}
	return w.send(m)
}
