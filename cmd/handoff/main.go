// Command handoff is the operator's CLI for services built on the
// upgrader library: it reloads them, shows their status and stops them
// through the control socket next to their PID file.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/gohandoff/handoff/upgrader"
)

func main() {
	os.Exit(run(context.Background(), os.Args, os.Stdout, os.Stderr))
}

// run runs the CLI and turns its error into an exit code: 2 for usage
// errors, ExitInProgress for a reload whose outcome is not known yet, 1
// for the rest.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	err := newApp(stdout, stderr).RunContext(ctx, args)
	if err == nil {
		return 0
	}
	fmt.Fprintln(stderr, "handoff:", err)
	var ee exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	var ue usageError
	if errors.As(err, &ue) || errors.Is(err, upgrader.ErrInvalidOptions) {
		return 2
	}
	return 1
}
