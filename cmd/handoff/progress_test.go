package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/gohandoff/handoff/control"
)

// reloadMessages is what a service sends for an upgrade, drain included.
func reloadMessages() []control.Message {
	return []control.Message{
		{Step: "start", Msg: "starting new generation from ./hello"},
		{Step: "ready", Msg: "new generation pid 2 ready in 9 ms"},
		{Final: true, OK: true, Upgrade: &control.UpgradeResult{OldPID: 1, NewPID: 2, Generation: 2, Version: "v2"}},
		{Step: "drain", Msg: "draining old generation pid 1: 3 connections left", Drain: &control.Drain{PID: 1, Left: 3}},
		{Step: "drain", Msg: "draining old generation pid 1: 2 connections left", Drain: &control.Drain{PID: 1, Left: 2}},
		{Step: "drain", Msg: "draining old generation pid 1: 1 connection left", Drain: &control.Drain{PID: 1, Left: 1}},
		{Step: "drained", Msg: "old generation pid 1 drained in 1200 ms", Drain: &control.Drain{PID: 1, Done: true}},
	}
}

func TestReloadViewOnATerminalUpdatesTheDrainLineInPlace(t *testing.T) {
	t.Parallel()
	var out, steps bytes.Buffer
	v := newReloadView(&out, &steps, false)
	v.tty = true
	for _, m := range reloadMessages() {
		v.show(m)
	}
	if got := out.String(); got != "reloaded: pid 1 → 2, generation 2, version v2, ready in 0 ms\n" {
		t.Errorf("stdout %q", got)
	}
	s := steps.String()
	if n := strings.Count(s, "\r\033[K"); n != 3 {
		t.Errorf("%d in-place updates, want one per drain message:\n%q", n, s)
	}
	lines := strings.Split(strings.TrimSuffix(s, "\n"), "\n")
	if len(lines) != 5 {
		t.Fatalf("%d lines on the terminal, want start, ready, drain, drained, done:\n%q", len(lines), s)
	}
	for i, want := range []string{"starting new generation", "ready in 9 ms", "1 connection left", "drained in 1200 ms", "done"} {
		if !strings.HasSuffix(lines[i], want) && !strings.Contains(lines[i], want) {
			t.Errorf("line %d %q, want %q", i, lines[i], want)
		}
	}
}

func TestReloadViewElsewherePrintsPlainLines(t *testing.T) {
	t.Parallel()
	var out, steps bytes.Buffer
	v := newReloadView(&out, &steps, false)
	for _, m := range reloadMessages() {
		v.show(m)
	}
	s := steps.String()
	if strings.Contains(s, "\r") || strings.Contains(s, "\033") {
		t.Errorf("terminal control characters in plain output: %q", s)
	}
	// Drain lines are throttled to one a second: the first one shows.
	if !strings.Contains(s, "3 connections left\n") || strings.Contains(s, "2 connections left") {
		t.Errorf("plain drain lines not throttled:\n%s", s)
	}
	if !strings.HasSuffix(s, "done\n") {
		t.Errorf("plain output does not end with done:\n%s", s)
	}
}

func TestReloadViewJSONPrintsEveryMessage(t *testing.T) {
	t.Parallel()
	var out, steps bytes.Buffer
	v := newReloadView(&out, &steps, true)
	msgs := reloadMessages()
	for _, m := range msgs {
		v.show(m)
	}
	if steps.Len() != 0 {
		t.Errorf("--json wrote to stderr: %q", steps.String())
	}
	dec := json.NewDecoder(&out)
	n := 0
	for dec.More() {
		var m control.Message
		if err := dec.Decode(&m); err != nil {
			t.Fatal(err)
		}
		n++
	}
	if n != len(msgs) || !v.drained {
		t.Errorf("%d JSON messages (drained %v), want %d", n, v.drained, len(msgs))
	}
}
