package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/gohandoff/handoff/control"
	"golang.org/x/term"
)

// plainDrainEvery throttles drain lines when the output is not a terminal.
const plainDrainEvery = time.Second

// reloadView shows a reload as it happens: on a terminal the old
// generation's drain is one line updated in place, elsewhere plain lines,
// and with --json every message of the service as a JSON line on stdout.
// The result line goes to stdout; the steps go to stderr.
type reloadView struct {
	out, steps io.Writer
	json       bool
	tty        bool
	start      time.Time

	live      bool      // a drain line is on the terminal, without its newline
	lastDrain time.Time // when the last plain drain line was printed
	drainSeen bool
	drained   bool
}

func newReloadView(out, steps io.Writer, asJSON bool) *reloadView {
	return &reloadView{out: out, steps: steps, json: asJSON, tty: isTerminal(steps), start: time.Now()}
}

// isTerminal reports whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// show prints one message of the service.
func (v *reloadView) show(m control.Message) {
	if v.json {
		json.NewEncoder(v.out).Encode(m)
		if m.Step == "drained" {
			v.drained = true
		}
		return
	}
	switch {
	case m.Final:
		if m.OK && m.Upgrade != nil {
			r := m.Upgrade
			fmt.Fprintf(v.out, "reloaded: pid %d → %d, generation %d, version %s, ready in %d ms\n",
				r.OldPID, r.NewPID, r.Generation, r.Version, r.Duration.Milliseconds())
		}
	case m.Step == "drain":
		v.drainSeen = true
		if v.tty {
			fmt.Fprintf(v.steps, "\r\033[K%s", v.line(m.Msg))
			v.live = true
			return
		}
		if time.Since(v.lastDrain) >= plainDrainEvery {
			v.lastDrain = time.Now()
			fmt.Fprintln(v.steps, v.line(m.Msg))
		}
	case m.Step == "drained":
		v.drained = true
		v.endLive()
		fmt.Fprintln(v.steps, v.line(m.Msg))
		fmt.Fprintln(v.steps, v.line("done"))
	default:
		v.endLive()
		fmt.Fprintln(v.steps, v.line(m.Msg))
	}
}

// note prints a line of the CLI's own.
func (v *reloadView) note(msg string) {
	if v.json {
		return
	}
	v.endLive()
	fmt.Fprintln(v.steps, v.line(msg))
}

func (v *reloadView) line(msg string) string {
	return fmt.Sprintf("%6d ms  %s", time.Since(v.start).Milliseconds(), msg)
}

func (v *reloadView) endLive() {
	if v.live {
		fmt.Fprintln(v.steps)
		v.live = false
	}
}
