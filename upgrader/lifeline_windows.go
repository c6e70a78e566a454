package upgrader

import "os"

// takeLifeline: worker processes do not run on Windows.
func takeLifeline() (*os.File, error) { return nil, nil }

func markCloseOnExec() {}
