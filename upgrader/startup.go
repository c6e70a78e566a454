package upgrader

import (
	"os"
	"os/signal"
	"time"
)

// Work a start needs later, begun early beside the rest: a new
// generation is on the upgrade's critical path from exec to ready.

// loadTimeZone loads the local time zone, which the first log line would
// otherwise read from /etc/localtime and parse on the way to ready (0.3
// to 0.8 ms on a busy machine). New runs it in a goroutine of its own.
func loadTimeZone() { _ = time.Local.String() }

// signalSet is a process's signals, registered with signal.Notify off the
// critical path of its start: the runtime makes a round trip with its
// signal thread for each signal it enables, about 1.5 ms for the five of
// a master on a busy machine, so New starts it beside its other work and
// the generation reports ready once done is closed (a signal that came
// before would have its default action).
type signalSet struct {
	c    chan os.Signal
	done chan struct{} // closed once every signal is registered
}

func notifySignals(sets ...[]os.Signal) *signalSet {
	s := &signalSet{c: make(chan os.Signal, 16), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		for _, set := range sets {
			signal.Notify(s.c, set...)
		}
	}()
	return s
}

// stop unregisters the signals once registered; safe to call twice.
func (s *signalSet) stop() {
	<-s.done
	signal.Stop(s.c)
}
