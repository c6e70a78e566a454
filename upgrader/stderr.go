package upgrader

import (
	"bytes"
	"os"
	"sync"
	"time"
)

// A new generation's stderr, from its start until it is ready, is a pipe
// to the generation that started it, which relays every byte to its own
// stderr and keeps the last lines: a new generation that fails before it
// is ready is reported with what it said last. The service's real stderr
// travels alongside as an inherited file (stderrName); a new generation
// puts it back on fd 2 just before it reports ready, so nothing of it
// depends on the previous generation once that one has exited.
//
// tableflip gives the new process the os.Stderr of the moment, so the
// serving generation points os.Stderr at the pipe for the length of an
// upgrade. Its own writes to os.Stderr meanwhile still reach the real
// stderr through the relay. Writers that captured os.Stderr when they were
// made (slog handlers, the log package's default logger) are not affected
// at all; code that reads the os.Stderr variable from another goroutine
// during an upgrade races with the swap, which is one pointer, written
// only by the one upgrade in progress.

// stderrName is the name under which the service's real stderr passes
// from one generation to the next.
const stderrName = "handoff-stderr"

// StderrTailLines is how many of its last lines of stderr a new generation
// that failed before it was ready is reported with.
const StderrTailLines = 10

// maxTailLine bounds each reported line, in bytes.
const maxTailLine = 512

// inheritStderr passes the service's real stderr on to the next
// generations. In a new generation it keeps the inherited one for
// restoreStderr.
func (u *Upgrader) inheritStderr() {
	f, err := u.tf.File(stderrName)
	switch {
	case err != nil:
		u.log.Warn("cannot inherit stderr: a failed upgrade will not show its output", "err", err)
		return
	case f != nil:
		u.realStderr = f
		u.relayStderr = true
		return
	}
	u.firstStderr = os.Stderr
	if err := u.tf.AddFile(stderrName, os.Stderr); err != nil {
		u.log.Warn("cannot pass stderr on: a failed upgrade will not show its output", "err", err)
		return
	}
	u.relayStderr = true
}

// restoreStderr puts the real stderr back on fd 2 of a new generation,
// which then no longer writes to the previous generation's relay. The
// inherited file stays open for serviceStderr.
func (u *Upgrader) restoreStderr() {
	if u.realStderr == nil {
		return
	}
	if err := dupOnto(u.realStderr, 2); err != nil {
		u.log.Warn("cannot restore stderr: it still goes through the previous generation", "err", err)
	}
}

// serviceStderr is the service's real stderr, for the processes it
// starts: worker processes started before this generation is ready, or
// while it relays a new generation's stderr, must not get the relay pipe,
// whose reader goes away with the generation that made it.
func (u *Upgrader) serviceStderr() *os.File {
	switch {
	case u.realStderr != nil:
		return u.realStderr
	case u.firstStderr != nil:
		return u.firstStderr
	}
	return os.Stderr
}

// stderrRelay copies what a new generation writes on stderr to the
// serving generation's stderr and keeps its last lines.
type stderrRelay struct {
	w    *os.File // the new generation's fd 2, os.Stderr meanwhile
	prev *os.File // os.Stderr before the upgrade
	done chan struct{}

	mu      sync.Mutex
	lines   []string
	partial []byte
}

// captureStderr makes os.Stderr a relay pipe for the process that the
// upgrade is about to start; finish ends it. It returns nil, and the new
// generation shares this one's stderr, if the next generation would not
// get the real stderr back or if no pipe can be made.
func (u *Upgrader) captureStderr() *stderrRelay {
	if !u.relayStderr {
		return nil
	}
	r, w, err := os.Pipe()
	if err != nil {
		u.log.Warn("cannot capture the new generation's stderr", "err", err)
		return nil
	}
	rl := &stderrRelay{w: w, prev: os.Stderr, done: make(chan struct{})}
	go rl.copy(r)
	os.Stderr = w
	return rl
}

func (rl *stderrRelay) copy(r *os.File) {
	defer close(rl.done)
	defer r.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			rl.prev.Write(buf[:n])
			rl.keep(buf[:n])
		}
		if err != nil {
			return
		}
	}
}

// keep adds b to the last lines.
func (rl *stderrRelay) keep(b []byte) {
	rl.mu.Lock()
	defer rl.mu.Unlock()
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			if room := maxTailLine - len(rl.partial); room > 0 {
				rl.partial = append(rl.partial, b[:min(room, len(b))]...)
			}
			return
		}
		if room := maxTailLine - len(rl.partial); room > 0 {
			rl.partial = append(rl.partial, b[:min(room, i)]...)
		}
		rl.push()
		b = b[i+1:]
	}
}

func (rl *stderrRelay) push() {
	line := string(bytes.TrimRight(rl.partial, "\r"))
	rl.partial = rl.partial[:0]
	if len(rl.lines) == StderrTailLines {
		rl.lines = append(rl.lines[:0], rl.lines[1:]...)
	}
	rl.lines = append(rl.lines, line)
}

// finish puts os.Stderr back and returns the last lines. After a failed
// upgrade it first waits, briefly, for the dead process's last bytes.
func (rl *stderrRelay) finish(failed bool) []string {
	if rl == nil {
		return nil
	}
	os.Stderr = rl.prev
	rl.w.Close()
	if !failed {
		return nil // the relay ends when the new generation restores its stderr
	}
	select {
	case <-rl.done:
	case <-time.After(time.Second):
	}
	rl.mu.Lock()
	defer rl.mu.Unlock()
	if len(rl.partial) > 0 {
		rl.push()
	}
	return append([]string(nil), rl.lines...)
}
