// Package linelog keeps the lines a process writes and lets a caller wait
// for one: the integration tests and the benchmark watch services' logs
// with it, instead of sleeping.
package linelog

import (
	"bufio"
	"io"
	"strings"
	"sync"
)

// Log is the lines read so far from one output.
type Log struct {
	mu     sync.Mutex
	lines  []string
	ended  string        // set by End: waits give up with this reason
	change chan struct{} // closed and replaced on every new line and on End
}

// New reads r line by line until EOF, then drains and, if it is an
// io.Closer, closes it.
func New(r io.Reader) *Log {
	l := &Log{change: make(chan struct{})}
	go func() {
		if c, ok := r.(io.Closer); ok {
			defer c.Close()
		}
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			l.mu.Lock()
			l.lines = append(l.lines, sc.Text())
			l.wakeLocked()
			l.mu.Unlock()
		}
		io.Copy(io.Discard, r)
	}()
	return l
}

func (l *Log) wakeLocked() {
	close(l.change)
	l.change = make(chan struct{})
}

// End tells waiters that no line they wait for will come, and why (the
// process that was to write it has exited, say).
func (l *Log) End(reason string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.ended = reason
	l.wakeLocked()
}

// Len is the number of lines read so far.
func (l *Log) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.lines)
}

// Line returns line i (from 0).
func (l *Log) Line(i int) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lines[i]
}

// Tail returns the last n lines, joined.
func (l *Log) Tail(n int) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines[max(0, len(l.lines)-n):], "\n")
}

func (l *Log) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n")
}

// Find returns the index of the first line from `from` on that match
// accepts, or -1 with a channel closed at the next line or End, and the
// reason End gave, if any.
func (l *Log) Find(from int, match func(string) bool) (int, <-chan struct{}, string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i := from; i < len(l.lines); i++ {
		if match(l.lines[i]) {
			return i, nil, ""
		}
	}
	return -1, l.change, l.ended
}

// All matches a line holding every one of parts.
func All(parts ...string) func(string) bool {
	return func(s string) bool {
		for _, p := range parts {
			if !strings.Contains(s, p) {
				return false
			}
		}
		return true
	}
}

// Any matches a line holding one of parts.
func Any(parts ...string) func(string) bool {
	return func(s string) bool {
		for _, p := range parts {
			if strings.Contains(s, p) {
				return true
			}
		}
		return false
	}
}
