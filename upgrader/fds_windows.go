//go:build windows

package upgrader

import (
	"errors"
	"os"
)

// dupOnto is not needed on Windows, where a service cannot upgrade.
func dupOnto(*os.File, int) error { return errors.New("not supported on windows") }

func closeOnExec(int) {}
